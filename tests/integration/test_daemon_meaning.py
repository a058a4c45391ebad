"""The daemon end to end continues the motion it is shown: a panning scene goes in over WHIP, and the frames a
ZeroMQ subscriber in another process receives keep panning the same way at about the same speed, where
copy-last would stand still. This is what a viewer sees; a daemon that conditioned on stale frames, reversed the
window or scrambled positions would fail it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from streamd.bench.quality import phase_shift
from streamd.clients.send import send
from streamd.e2e import LOOPBACK
from streamd.media import VideoWriter
from streamd.train.data import clip_seed, make_scene, render_scene

from .conftest import start_daemon

H, W = 64, 112  # the trained tiny model's size
PAN_PX = 1.2  # camera speed, pixels per frame (content moves the other way)
CLIP_FRAMES = 360  # 24 s: longer than the test sends, so the sender never loops back to the start

COLLECT = r"""
import json, sys, time, numpy as np, zmq
from streamd.wire.frames import decode_frame
endpoint, want, timeout, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 1000)
sub.setsockopt(zmq.SUBSCRIBE, b"frames/")
sub.connect(endpoint)
print("ready", flush=True)
headers, pixels = [], []
deadline = time.monotonic() + timeout
while len(headers) < want and time.monotonic() < deadline:
    if sub.poll(200):
        parts = sub.recv_multipart()
        header, image = decode_frame(parts)
        headers.append(json.loads(parts[1]))
        pixels.append(image)
np.savez(out, pixels=np.stack(pixels) if pixels else np.zeros((0, 1, 1, 3), np.uint8))
open(out + ".json", "w").write(json.dumps(headers))
"""


def _pan_scene():
    """A held-out scene turned into a steady horizontal pan over a non-periodic texture."""
    i = 0
    while True:
        scene = make_scene(clip_seed("heldout", i), H, W)
        if scene.kind == "pan" and scene.texture in ("noise", "blobs", "checkers"):
            return replace(scene, pan=(PAN_PX, 0.0))
        i += 1


def _group_shift(frames: np.ndarray) -> float:
    """Horizontal content displacement from the chunk's first 4-frame group to its last (12 frames later)."""
    first, last = frames[:4].mean(axis=0), frames[-4:].mean(axis=0)
    return phase_shift(first.astype(np.uint8), last.astype(np.uint8))[0]


def test_generated_frames_keep_panning_with_the_live_scene(tmp_path: Path) -> None:
    scene = _pan_scene()
    clip = render_scene(scene, CLIP_FRAMES, H, W)
    # the client sends twice the model's size, so ingest scales it down as it would a camera's frames
    source = tmp_path / "pan.mp4"
    with VideoWriter(source, fps=15.0) as writer:
        writer.write(np.repeat(np.repeat(clip, 2, axis=1), 2, axis=2))
    d = start_daemon(tmp_path, env={"STREAMD_ENGINE_STEPS": "8", "STREAMD_ENGINE_GUIDANCE": "1"})
    out = tmp_path / "received"
    collector = subprocess.Popen([sys.executable, "-c", COLLECT, d.zmq_endpoint, "160", "60", str(out)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert collector.stdout is not None and collector.stdout.readline().strip() == "ready"
        report = asyncio.run(send(d.whip, source=str(source), seconds=16, ice_addresses=(LOOPBACK,)))
        assert report.connected
        assert collector.wait(60) == 0
    finally:
        collector.kill()
        d.kill()
    pixels = np.load(f"{out}.npz")["pixels"]
    headers = json.loads(Path(f"{out}.json").read_text())
    assert len(headers) >= 96, f"only {len(headers)} frames arrived"
    chunks: dict[int, list[int]] = {}
    for i, h in enumerate(headers):
        if h["source"] == "live":
            chunks.setdefault(h["chunk"], []).append(i)
    full = [idx for idx in chunks.values() if len(idx) == 16]
    assert len(full) >= 3, f"live-conditioned chunks received whole: {len(full)}"
    truth = -PAN_PX * 12  # the camera pans right, so the content moves left by 12 frames' worth
    shifts = [_group_shift(pixels[idx]) for idx in full]
    mean_shift = float(np.mean(shifts))
    # copy-last is off by the whole displacement; the daemon's continuation must be at least twice as close
    assert abs(mean_shift - truth) < 0.5 * abs(truth), (shifts, truth)
    assert sum(np.sign(s) == np.sign(truth) for s in shifts) >= 0.75 * len(shifts), shifts
