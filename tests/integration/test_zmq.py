"""The ZeroMQ edge on real loopback sockets: FramePublisher against the reference subscriber and raw SUB sockets.

No model is loaded: chunks are hand-made `ChunkOutput`s and the runner is a small fake with the same
`outputs()` / `is_current()` surface as `EngineRunner`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import zmq
import zmq.auth
from PIL import Image

from streamd.clients.subscribe import CurveClientKeys, SubscribeReport, subscribe
from streamd.edges.zmq import CurveConfig, CurveKeyError, FramePublisher
from streamd.engine.core import ChunkOutput
from streamd.engine.params import StreamParams
from streamd.engine.window import Source
from streamd.media import read_video
from streamd.wire import Event, FrameHeader, decode_event, decode_frame, encode_event, encode_frame
from streamd.wire.schemas import load_schema

LOOPBACK = "127.0.0.1"
ANY_PORT = f"tcp://{LOOPBACK}:*"
REPO = Path(__file__).resolve().parents[2]
FPS = 15.0
H, W = 16, 24

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------- helpers
def make_chunk(stream: str, chunk: int, generation: int = 0, frames: int = 4, height: int = H, width: int = W,
               source: Source = Source.LIVE, first_frame: int | None = None,
               cond_arrival: float | None = None) -> ChunkOutput:
    """A ChunkOutput with distinct random pixels (seeded by stream, generation and chunk)."""
    seed = abs(hash((stream, generation, chunk))) % 2**32
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    first = chunk * frames if first_frame is None else first_frame
    now = time.monotonic()
    if cond_arrival is None and source is Source.LIVE:
        cond_arrival = now - 0.25
    return ChunkOutput(
        stream_id=stream, generation=generation, chunk=chunk, source=source, first_frame=first, frames=pixels,
        pts_ns=[round((first + i) * 1e9 / FPS) for i in range(frames)], params=StreamParams(),
        cond_arrival=cond_arrival if source is Source.LIVE else None,
        cond_frame=12 + 16 * chunk if source is Source.LIVE else None, started=now - 0.1, finished=now, steps=1,
    )


class FakeRunner:
    """EngineRunner's output surface: yields prepared chunks; `after[i]()` runs once chunk i was consumed."""

    def __init__(self, chunks: list[ChunkOutput], current: dict[str, int],
                 after: dict[int, Callable[[], None]] | None = None, forever: bool = False) -> None:
        self.chunks = chunks
        self.current = current
        self.after = after or {}
        self.forever = forever

    async def outputs(self) -> AsyncIterator[ChunkOutput]:
        for index, out in enumerate(self.chunks):
            yield out
            if index in self.after:
                self.after[index]()
        while self.forever:
            await asyncio.sleep(0.05)

    def is_current(self, out: ChunkOutput) -> bool:
        return self.current.get(out.stream_id) == out.generation


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` on the running loop (the publisher's subscription task needs the loop to run)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class SubscriberThread:
    """`subscribe(...)` in a thread of this process; `report()` joins it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.result: SubscribeReport | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.result = subscribe(*args, **kwargs)
        except BaseException as exc:  # surfaced by report()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    async def report(self, timeout: float = 30.0) -> SubscribeReport:
        await asyncio.to_thread(self.thread.join, timeout)
        assert not self.thread.is_alive(), "subscriber thread did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def drain(sock: zmq.Socket[Any], quiet_s: float = 0.3) -> list[list[bytes]]:
    """Every message the socket receives until it has been quiet for `quiet_s`."""
    messages = []
    while sock.poll(int(quiet_s * 1000)):
        messages.append(sock.recv_multipart())
    return messages


# A subscriber in a separate process: subscribe(...) with a callback collecting every header, JSON on stdout.
SUBSCRIBER_SCRIPT = r"""
import json, sys
from pathlib import Path
from streamd.clients.subscribe import subscribe
a = json.loads(sys.argv[1])
headers = []
report = subscribe(a["endpoint"], stream=a["stream"], frames=a["frames"], output=Path(a["output"]),
                   png_dir=Path(a["png_dir"]), timeout_s=a["timeout_s"],
                   on_frame=lambda header, pixels: headers.append(header.to_dict()))
print(json.dumps({"report": report.to_dict(), "headers": headers}))
"""


# ---------------------------------------------------------------------------------------------- tests
def test_frames_and_events_reach_a_subscriber_in_another_process(tmp_path: Path) -> None:
    frame_schema, event_schema = load_schema("frame-header"), load_schema("event")
    out_mp4, png_dir = tmp_path / "cam1.mp4", tmp_path / "png"
    sent: list[np.ndarray] = []

    async def main() -> dict[str, Any]:
        pub = FramePublisher(ANY_PORT, fps=FPS)
        pub.start()
        try:
            assert pub.endpoint.startswith(f"tcp://{LOOPBACK}:") and not pub.endpoint.endswith("*")
            args = {"endpoint": pub.endpoint, "stream": "cam1", "frames": 12, "output": str(out_mp4),
                    "png_dir": str(png_dir), "timeout_s": 20.0}
            proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER_SCRIPT, json.dumps(args)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                # frames/cam1 + events: once both arrived, libzmq routes to the subscriber (no slow joiner)
                await wait_until(lambda: pub.subscribers >= 2, 30, "the subscriber process to subscribe")
                assert pub.publish_event("session-started", "cam1", width=W, height=H, generation=0)
                assert pub.publish_event("session-started", "cam10", width=W, height=H)  # not cam1's
                assert pub.publish_event("drops", "cam1", dropped=3, reason="output-full")
                for k in range(3):
                    source = Source.SELF if k == 1 else Source.LIVE
                    chunk = make_chunk("cam1", k, source=source)
                    sent.extend(chunk.frames)
                    assert pub.publish_chunk(chunk) == 4
                    # cam10 prefix-matches the subscription "frames/cam1": the subscriber must drop it
                    assert pub.publish_chunk(make_chunk("cam10", k)) == 4
                stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=40)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, stderr
            assert pub.published == 24 and pub.dropped == 0 and pub.events_published == 3
            return json.loads(stdout)
        finally:
            pub.close()
            pub.close()  # idempotent

    result = asyncio.run(main())
    report, headers = result["report"], result["headers"]
    assert report["frames"] == 12 and report["streams"] == ["cam1"]
    assert report["gaps"] == 0 and report["invalid"] == 0 and report["restarts"] == 0
    assert len(headers) == 12
    for header in headers + [report["first_header"], report["last_header"]]:
        jsonschema.validate(header, frame_schema)
    assert [h["seq"] for h in headers] == list(range(12))
    assert all(h["stream"] == "cam1" and (h["width"], h["height"]) == (W, H) for h in headers)
    assert [h["chunk"] for h in headers] == [k for k in range(3) for _ in range(4)]
    assert [h["frame_in_chunk"] for h in headers] == [0, 1, 2, 3] * 3
    assert [h["pts_ns"] for h in headers] == [round(n * 1e9 / FPS) for n in range(12)]
    assert all(h["fps"] == FPS and h["generation"] == 0 for h in headers)
    # latency_s only for live chunks (spec 5.2); cond_arrival was 0.25 s before publishing
    assert [h["source"] for h in headers] == ["live"] * 4 + ["self"] * 4 + ["live"] * 4
    assert all(("latency_s" in h) == (h["source"] == "live") for h in headers)
    assert all(0.25 <= h["latency_s"] < 30 for h in headers if "latency_s" in h)
    # cond_frame likewise: the input frame number the chunk continues from
    assert all(h.get("cond_frame") == (12 + 16 * h["chunk"] if h["source"] == "live" else None) for h in headers)
    assert len(report["latency_s"]) == 8
    # events: the cam1 ones only, valid against the schema
    assert [e["event"] for e in report["events"]] == ["session-started", "drops"]
    for event in report["events"]:
        jsonschema.validate(event, event_schema)
        assert event["stream"] == "cam1"
    # payloads: PNGs are lossless, so they equal the published pixels exactly; the MP4 has every frame
    pngs = sorted(png_dir.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(12)]
    for path, pixels in zip(pngs, sent):
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), pixels)
    clip = read_video(out_mp4)
    assert clip.frames.shape == (12, H, W, 3)
    assert abs(clip.fps - FPS) < 0.01


def test_payload_bytes_on_the_wire_equal_the_published_frames() -> None:
    async def main() -> None:
        pub = FramePublisher(ANY_PORT)
        pub.start()
        ctx: zmq.Context[Any] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.connect(pub.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            await wait_until(lambda: pub.subscribers == 1, what="subscription")
            chunk = make_chunk("raw", 5, generation=2, first_frame=77)
            pub.publish_chunk(chunk)
            pub.publish_event("stream-reset", "raw", generation=3, reason="command")
            messages = await asyncio.to_thread(drain, sub)
        finally:
            sub.close(linger=0)
            ctx.term()
            pub.close()
        assert len(messages) == 5
        for i, parts in enumerate(messages[:4]):
            assert len(parts) == 3 and parts[0] == b"frames/raw"
            assert parts[2] == chunk.frames[i].tobytes()
            header, pixels = decode_frame(parts)
            assert (header.seq, header.chunk, header.generation, header.frame_in_chunk) == (i, 5, 2, i)
            assert header.pts_ns == chunk.pts_ns[i] == round((77 + i) * 1e9 / 15)
            np.testing.assert_array_equal(pixels, chunk.frames[i])
        event = decode_event(messages[4])
        assert len(messages[4]) == 2 and messages[4][0] == b"events"
        assert (event.event, event.stream, event.generation, event.reason) == ("stream-reset", "raw", 3, "command")
        jsonschema.validate(json.loads(messages[4][1]), load_schema("event"))

    asyncio.run(main())


def test_a_subscriber_that_never_reads_does_not_stall_publishing() -> None:
    chunks = [make_chunk("flood", k, frames=16, height=64, width=64) for k in range(125)]  # 2000 frames

    async def main() -> tuple[SubscribeReport, list[float], int, FramePublisher]:
        pub = FramePublisher(ANY_PORT, sndhwm=64)
        pub.start()
        ctx: zmq.Context[Any] = zmq.Context()
        stuck = ctx.socket(zmq.SUB)
        try:
            stuck.setsockopt(zmq.RCVHWM, 10)
            stuck.connect(pub.endpoint)
            stuck.setsockopt(zmq.SUBSCRIBE, b"")  # subscribes to everything and never reads (until the end)
            reader = SubscriberThread(pub.endpoint, stream="flood", timeout_s=2.0)
            await wait_until(lambda: pub.subscribers >= 3, 15, "both subscribers")
            durations = []
            for chunk in chunks:
                began = time.perf_counter()
                pub.publish_chunk(chunk)
                durations.append(time.perf_counter() - began)
                await asyncio.sleep(0)
            report = await reader.report()
            stuck_got = len(await asyncio.to_thread(drain, stuck, 0.5))
        finally:
            stuck.close(linger=0)
            ctx.term()
            pub.close()
        return report, durations, stuck_got, pub

    began = time.perf_counter()
    report, durations, stuck_got, pub = asyncio.run(main())
    assert time.perf_counter() - began < 30
    # NOBLOCK sends into an XPUB without NODROP: every call returns at once, nothing is refused outright
    assert sum(durations) < 10 and max(durations) < 0.5, (sum(durations), max(durations))
    assert pub.published == 2000 and pub.dropped == 0
    # the reading subscriber got frames; whatever it lost shows as seq gaps, exactly
    assert report.frames > 0 and report.invalid == 0 and report.restarts == 0
    assert report.first_header is not None and report.last_header is not None
    assert report.frames + report.gaps == report.last_header.seq - report.first_header.seq + 1
    # the stuck one lost frames at its own queue (bounded by SNDHWM + RCVHWM + kernel buffers)
    assert stuck_got < 2000
    print(f'reader {report.frames} frames, {report.gaps} lost; stuck {stuck_got}; max send {max(durations):.4f}s')


def test_subscriber_count_follows_subscriptions() -> None:
    async def main() -> None:
        pub = FramePublisher(ANY_PORT)
        pub.start()
        ctx: zmq.Context[Any] = zmq.Context()
        first, second = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
        try:
            assert pub.subscribers == 0
            first.connect(pub.endpoint)
            first.setsockopt(zmq.SUBSCRIBE, b"frames/")
            await wait_until(lambda: pub.subscribers == 1, what="1 subscription")
            second.connect(pub.endpoint)
            second.setsockopt(zmq.SUBSCRIBE, b"frames/")  # the same topic as `first`
            second.setsockopt(zmq.SUBSCRIBE, b"events")
            await wait_until(lambda: pub.subscribers == 3, what="3 subscriptions")
            # closing `second` removes its 2 subscriptions, although `first` still holds "frames/" (VERBOSER)
            second.close(linger=0)
            await wait_until(lambda: pub.subscribers == 1, what="back to 1 subscription")
            first.setsockopt(zmq.UNSUBSCRIBE, b"frames/")
            await wait_until(lambda: pub.subscribers == 0, what="no subscription")
            await asyncio.sleep(0.3)  # and it stays there (nothing left queued on the XPUB side)
            assert pub.subscribers == 0
        finally:
            first.close(linger=0)
            second.close(linger=0)
            ctx.term()
            pub.close()

    asyncio.run(main())


def test_run_publishes_current_chunks_only_and_close_cancels_it() -> None:
    current = {"s": 0}

    def reset() -> None:  # after chunk 0 went out, the stream is reset: generation 0's chunk 1 is stale
        current["s"] = 1

    chunks = [make_chunk("s", 0, generation=0), make_chunk("s", 1, generation=0),
              make_chunk("gone", 0), make_chunk("s", 0, generation=1, first_frame=8)]
    runner = FakeRunner(chunks, current, after={0: reset})

    async def main() -> None:
        pub = FramePublisher(ANY_PORT)
        pub.start()
        ctx: zmq.Context[Any] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.connect(pub.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"frames/")
            await wait_until(lambda: pub.subscribers == 1, what="subscription")
            await asyncio.wait_for(pub.run(runner), 10)  # returns when outputs() ends
            messages = await asyncio.to_thread(drain, sub)
            assert pub.published == 8 and pub.stale == 8
            headers = [decode_frame(m)[0] for m in messages]
            assert [h.stream for h in headers] == ["s"] * 8
            assert [(h.generation, h.chunk) for h in headers] == [(0, 0)] * 4 + [(1, 0)] * 4
            assert [h.seq for h in headers] == list(range(8))
            # forget_stream: a stream published again under the same id starts at seq 0 (a restart)
            pub.forget_stream("s")
            pub.publish_chunk(make_chunk("s", 0, generation=0))
            again = await asyncio.to_thread(drain, sub)
            assert [decode_frame(m)[0].seq for m in again] == [0, 1, 2, 3]
            # a run on a runner that never ends is cancelled by close()
            task = asyncio.create_task(pub.run(FakeRunner([], {}, forever=True)))
            await asyncio.sleep(0.1)
            pub.close()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
            assert task.cancelled()
            assert pub.publish_chunk(make_chunk("s", 1)) == 0 and not pub.publish_event("session-ended", "s")
        finally:
            sub.close(linger=0)
            ctx.term()
            pub.close()

    asyncio.run(main())


def test_curve_admits_allowed_clients_only(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    intruder_public, intruder_secret = zmq.auth.create_certificates(keys, "intruder")
    shutil.copy(client_public, allowed)
    curve = CurveConfig(Path(server_secret), Path(server_public), allowed)

    async def main() -> tuple[SubscribeReport, SubscribeReport, int, FramePublisher]:
        pub = FramePublisher(ANY_PORT, curve=curve)
        pub.start()
        ctx: zmq.Context[Any] = zmq.Context()
        plain = ctx.socket(zmq.SUB)  # no CURVE at all: the handshake fails
        try:
            plain.connect(pub.endpoint)
            plain.setsockopt(zmq.SUBSCRIBE, b"")
            friend = SubscriberThread(pub.endpoint, stream="sec", frames=8, timeout_s=10,
                                      curve_client=CurveClientKeys(Path(client_secret), Path(client_public),
                                                                   Path(server_public)))
            intruder = SubscriberThread(pub.endpoint, stream="sec", timeout_s=1.5,
                                        curve_client=CurveClientKeys(Path(intruder_secret), Path(intruder_public),
                                                                     Path(server_public)))
            await wait_until(lambda: pub.subscribers >= 2, 15, "the allowed client's subscriptions")
            k = 0
            deadline = time.monotonic() + 20
            while not (friend.done and intruder.done) and time.monotonic() < deadline:
                pub.publish_event("session-started", "sec", width=W, height=H)
                pub.publish_chunk(make_chunk("sec", k))
                k += 1
                await asyncio.sleep(0.05)
            plain_got = len(await asyncio.to_thread(drain, plain, 0.2))
            return await friend.report(), await intruder.report(), plain_got, pub
        finally:
            plain.close(linger=0)
            ctx.term()
            pub.close()

    friend, intruder, plain_got, pub = asyncio.run(main())
    assert friend.frames == 8 and friend.gaps == 0 and friend.invalid == 0 and friend.events
    assert intruder.frames == 0 and not intruder.events and intruder.timed_out
    assert plain_got == 0
    assert pub.auth_rejected >= 1


def test_curve_key_problems_are_clear_errors(tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    public, secret = (Path(p) for p in zmq.auth.create_certificates(keys, "server"))
    other_public, _ = (Path(p) for p in zmq.auth.create_certificates(keys, "other"))
    garbled = tmp_path / "garbled.key_secret"
    garbled.write_text('public-key = "short"\nsecret-key = "short"\n')

    cases = [
        (CurveConfig(tmp_path / "missing.key_secret", public, allowed), "missing.key_secret"),
        (CurveConfig(public, public, allowed), "no secret-key"),
        (CurveConfig(secret, other_public, allowed), "does not match"),
        (CurveConfig(garbled, public, allowed), "malformed"),
        (CurveConfig(secret, public, tmp_path / "nowhere"), "nowhere"),
    ]

    async def main() -> None:
        for config, message in cases:
            pub = FramePublisher(ANY_PORT, curve=config)
            with pytest.raises(CurveKeyError, match=message):
                pub.start()
            pub.close()
        with pytest.raises(ValueError, match="no secret-key"):
            subscribe(f"tcp://{LOOPBACK}:1", curve_client=(public, public, public), timeout_s=0.1)

    asyncio.run(main())


def test_subscriber_locks_onto_the_first_stream_for_mp4_and_pngs(tmp_path: Path) -> None:
    out_mp4, png_dir = tmp_path / "first.mp4", tmp_path / "png"
    chunks = {s: [make_chunk(s, k) for k in range(2)] for s in ("first", "second")}

    async def main() -> SubscribeReport:
        pub = FramePublisher(ANY_PORT, fps=FPS)
        pub.start()
        try:
            sub = SubscriberThread(pub.endpoint, frames=8, output=out_mp4, png_dir=png_dir, timeout_s=10)
            await wait_until(lambda: pub.subscribers >= 2, what="subscriptions")
            for k in range(2):
                pub.publish_chunk(chunks["first"][k])
                pub.publish_chunk(chunks["second"][k])
            return await sub.report()
        finally:
            pub.close()

    report = asyncio.run(main())
    assert report.frames == 8 and report.streams == {"first"} and report.gaps == 0
    expected = np.concatenate([c.frames for c in chunks["first"]])
    clip = read_video(out_mp4)
    assert clip.frames.shape == (8, H, W, 3)
    # H.264 is lossy (random pixels do not survive it), so the exact pixels are checked in the PNGs
    pngs = sorted(png_dir.glob("frame_*.png"))
    assert len(pngs) == 8
    for path, pixels in zip(pngs, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)


def test_subscriber_counts_invalid_unsupported_gaps_and_restarts() -> None:
    """A raw XPUB plays a faulty publisher: the subscriber skips what fails a check and counts it."""

    def frame(seq: int, stream: str = "x") -> list[bytes]:
        header = FrameHeader(stream=stream, seq=seq, width=2, height=2, pts_ns=seq, chunk=0, source="live")
        return encode_frame(header, bytes(12))

    good_header = json.loads(frame(0)[1])
    messages = [
        frame(0),
        [b"frames/x", b"{not json", bytes(12)],  # invalid: header JSON
        [b"frames/x", json.dumps({**good_header, "v": 2}).encode(), bytes(12)],  # unsupported version
        [b"frames/x", frame(1)[1]],  # invalid: 2 parts
        [b"frames/x", frame(1)[1], bytes(11)],  # invalid: payload size
        [b"frames/x", frame(1, "y")[1], bytes(12)],  # invalid: topic/header stream mismatch
        frame(1),
        frame(4),  # gap of 2
        frame(7, "xy"),  # another stream matching the prefix: ignored, not invalid
        frame(2),  # restart
        [b"events", b"[]"],  # invalid event
        encode_event(Event("session-ended", "x", reason="peer-closed")),
        encode_event(Event("session-ended", "other")),  # another stream's event: not kept
        [b"future/topic", b"whatever"],  # unknown topic: ignored
    ]

    async def main() -> SubscribeReport:
        ctx: zmq.Context[Any] = zmq.Context()
        xpub = ctx.socket(zmq.XPUB)
        try:
            xpub.bind(ANY_PORT)
            endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
            sub = SubscriberThread(endpoint, stream="x", timeout_s=1.0)
            assert xpub.poll(10_000) and xpub.recv()[:1] == b"\x01"  # both subscriptions arrived
            assert xpub.poll(10_000) and xpub.recv()[:1] == b"\x01"
            for parts in messages:
                xpub.send_multipart(parts)
            return await sub.report()
        finally:
            xpub.close(linger=0)
            ctx.term()

    report = asyncio.run(main())
    assert report.frames == 4 and report.streams == {"x"}
    assert report.gaps == 2 and report.restarts == 1
    assert report.invalid == 5 and report.unsupported == 1
    assert [(e.event, e.stream, e.reason) for e in report.events] == [("session-ended", "x", "peer-closed")]
    assert report.timed_out and report.latency_s == []


def test_subscriber_waits_for_a_slow_first_frame_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """No idle limit by default: a real model's first chunk takes longer than any fixed limit; meanwhile the
    caller hears how long it has waited."""
    import streamd.clients.subscribe as subscribe_module
    from streamd.cli import build_parser

    assert build_parser().parse_args(["subscribe"]).timeout is None
    monkeypatch.setattr(subscribe_module, "WAIT_NOTICE_S", 0.2)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port(f"tcp://{LOOPBACK}")
    waited: list[float] = []
    try:
        reader = SubscriberThread(f"tcp://{LOOPBACK}:{port}", frames=1, on_wait=waited.append)
        pub.recv()  # the subscription
        time.sleep(1.5)  # far longer than one notice period: the subscriber must not give up
        header = FrameHeader(stream="slow", seq=0, width=2, height=2, pts_ns=0, chunk=0, source="live")
        pub.send_multipart(encode_frame(header, bytes(12)))
        reader.thread.join(10)
    finally:
        pub.close(linger=0)
    assert reader.error is None and (report := reader.result) is not None
    assert report.frames == 1 and not report.timed_out
    assert len(waited) >= 4 and waited == sorted(waited) and waited[0] >= 0.2
