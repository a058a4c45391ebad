"""A ZeroMQ subscriber in a separate process, for tests that must see what a real, independent client receives."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

SUBSCRIBER = r"""
import json, sys, time, zmq
from streamd.wire.frames import decode_frame
endpoint, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 1000)
sub.setsockopt(zmq.SUBSCRIBE, b"frames/")
sub.setsockopt(zmq.SUBSCRIBE, b"events")
sub.connect(endpoint)
print(json.dumps({"ready": True}), flush=True)
frames = 0
deadline = time.monotonic() + timeout
while frames < want and time.monotonic() < deadline:
    if not sub.poll(200):
        continue
    parts = sub.recv_multipart()
    if parts[0] == b"events":
        print(json.dumps({"event": json.loads(parts[1])}), flush=True)
        continue
    header, pixels = decode_frame(parts)
    raw = json.loads(parts[1])
    print(json.dumps({"header": raw, "payload_len": len(parts[2]), "mean": float(pixels.mean())}), flush=True)
    frames += 1
"""


class Subscriber:
    """Subscribes to every frame and event; prints one JSON line per message until `frames` frames or `timeout` s."""

    def __init__(self, endpoint: str, frames: int, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(frames), str(timeout)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        assert json.loads(line) == {"ready": True}, self.proc.stderr.read()
        time.sleep(0.3)  # let the subscription reach the publisher

    def results(self, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait for the subscriber to finish; every message it printed."""
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines() if line.strip()]
