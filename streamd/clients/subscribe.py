"""The reference subscriber of the frames protocol (protocols/zmq-frames.md): receive, check, save, report.

`subscribe()` connects a plain pyzmq SUB socket to the daemon's publisher, follows the spec's receiver
checklist through `streamd.wire` (messages that fail a check are counted as `invalid` and skipped; messages of
another protocol version as `unsupported`), tracks `seq` per stream to count lost frames, and optionally writes
the frames of one stream to an MP4 and/or one PNG per frame. It is synchronous and needs only pyzmq and numpy;
PyAV and Pillow are imported only when an MP4 or PNGs are asked for.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zmq
import zmq.auth
from zmq.utils import z85

from ..wire import (
    EVENTS_TOPIC,
    FRAMES_TOPIC_PREFIX,
    Event,
    FrameHeader,
    UnsupportedVersion,
    WireError,
    decode_event,
    decode_frame,
    frames_topic,
)

if TYPE_CHECKING:
    from ..media import VideoWriter

__all__ = [
    "CurveClientKeys",
    "DEFAULT_FPS",
    "MAX_EVENTS",
    "MAX_LATENCY_SAMPLES",
    "MAX_MESSAGE_BYTES",
    "MAX_TRACKED_STREAMS",
    "RCVHWM",
    "SubscribeReport",
    "endpoint_via",
    "subscribe",
]

log = logging.getLogger(__name__)

# Receive queue bound, in messages. The spec recommends 4 to 64 (section 3.2); 64 is its upper end because this
# subscriber wants every frame (for a file), and bounds its queue to about 77 MB at 832x480.
RCVHWM = 64
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ZMQ_MAXMSGSIZE: a bigger part from a faulty peer drops the connection
HEARTBEAT_IVL_MS = 5_000  # notices a dead publisher (spec section 3.2)
HEARTBEAT_TIMEOUT_MS = 15_000
WAIT_NOTICE_S = 10.0  # while no frame has arrived, `on_wait` hears how long the wait has lasted this often
DEFAULT_FPS = 15.0  # MP4 frame rate when the first header carries no `fps`
MAX_EVENTS = 10_000  # the report keeps the newest this many events
MAX_LATENCY_SAMPLES = 100_000  # ... and the newest this many latency values
MAX_TRACKED_STREAMS = 4_096  # streams whose seq is tracked; frames of further streams are counted, not tracked
_FRAMES_PREFIX = FRAMES_TOPIC_PREFIX.encode("ascii")

FrameCallback = Callable[[FrameHeader, np.ndarray], None]
VIA_MAX_BYTES = 16 * 1024 * 1024  # a router's fleet status read at most (256 instances x 64 streams fit easily)


def endpoint_via(router_url: str, stream: str, token: str | None = None, timeout_s: float = 10.0) -> str:
    """The ZeroMQ endpoint of `stream`, as the router at `router_url` (`streamd route`) reports it in its fleet
    status (`GET /api/status`, `streams.<id>.zmq_endpoint`); ValueError when no instance announces it."""
    import json
    import urllib.request

    request = urllib.request.Request(router_url.rstrip("/") + "/api/status",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        fleet = json.loads(resp.read(VIA_MAX_BYTES))
    entry = fleet.get("streams", {}).get(stream)
    if not entry or not entry.get("zmq_endpoint"):
        raise ValueError(f"router {router_url} knows no instance publishing stream {stream!r}")
    return str(entry["zmq_endpoint"])


class CurveClientKeys(NamedTuple):
    """The `curve_client` argument of `subscribe`: three key files as written by zmq.auth.create_certificates."""

    secret_key_file: Path  # the client's `.key_secret` file (holds its public and secret key)
    public_key_file: Path  # the client's `.key` file (must match the secret key file)
    server_public_key_file: Path  # the daemon's public `.key` file


@dataclass
class SubscribeReport:
    """What a `subscribe()` run received.

    `frames` counts accepted frames (of the wanted stream when one is wanted or locked onto); `gaps` is the sum
    of `seq` gaps, i.e. frames lost between the publisher's socket and this subscriber; `restarts` counts `seq`
    going down or repeating (a daemon restart or a new session under the same id: a new stream, not a gap).
    `invalid` counts messages that failed a protocol check, `unsupported` well-formed messages of another
    protocol version, `unwritten` frames left out of the MP4 because their size differed from its first frame.
    `events` (newest MAX_EVENTS) and `latency_s` (newest MAX_LATENCY_SAMPLES) are bounded.
    """

    frames: int = 0
    streams: set[str] = field(default_factory=set)
    gaps: int = 0
    restarts: int = 0
    invalid: int = 0
    unsupported: int = 0
    unwritten: int = 0
    first_header: FrameHeader | None = None
    last_header: FrameHeader | None = None
    events: list[Event] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False  # stopped because nothing arrived for timeout_s
    interrupted: bool = False  # stopped by KeyboardInterrupt (the files are still finished)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-encodable form (headers and events as their wire objects, streams sorted)."""
        return {
            "frames": self.frames,
            "streams": sorted(self.streams),
            "gaps": self.gaps,
            "restarts": self.restarts,
            "invalid": self.invalid,
            "unsupported": self.unsupported,
            "unwritten": self.unwritten,
            "first_header": None if self.first_header is None else self.first_header.to_dict(),
            "last_header": None if self.last_header is None else self.last_header.to_dict(),
            "events": [e.to_dict() for e in self.events],
            "latency_s": list(self.latency_s),
            "seconds": self.seconds,
            "timed_out": self.timed_out,
            "interrupted": self.interrupted,
        }


def _read_key(path: Path, what: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys from one zmq.auth key file, with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None
    for key in (public, secret):
        try:
            if key is not None and (len(key) != 40 or len(z85.decode(key)) != 32):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise ValueError(f"{what} {path} holds a malformed key (want 40 Z85 characters)") from None
    if need_secret and secret is None:
        raise ValueError(f"{what} {path} holds no secret-key (is it the public .key file?)")
    return public, secret


def _load_client_keys(files: tuple[Path, Path, Path]) -> tuple[bytes, bytes, bytes]:
    """(client public, client secret, server public) from CurveClientKeys-ordered files."""
    keys = CurveClientKeys(*files)
    public, secret = _read_key(keys.secret_key_file, "CURVE client secret key file", need_secret=True)
    assert secret is not None
    listed, _ = _read_key(keys.public_key_file, "CURVE client public key file", need_secret=False)
    if listed != public:
        raise ValueError(f"CURVE client public key file {keys.public_key_file} does not match the secret key "
                         f"file {keys.secret_key_file}")
    server, _ = _read_key(keys.server_public_key_file, "CURVE server public key file", need_secret=False)
    return public, secret, server


class _Receiver:
    """Per-run state: stream filter, seq tracking, output files. Owns the MP4 writer until `close()`."""

    def __init__(self, report: SubscribeReport, stream: str | None, lock: bool, output: Path | None,
                 png_dir: Path | None, on_frame: FrameCallback | None) -> None:
        self.report = report
        self.wanted = None if stream is None else frames_topic(stream)  # exact topic (prefix matching, spec 4)
        self.lock = lock
        self.stream = stream
        self.output = output
        self.png_dir = png_dir
        self.on_frame = on_frame
        self.last_seq: dict[str, int] = {}  # at most MAX_TRACKED_STREAMS entries
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.latency: deque[float] = deque(maxlen=MAX_LATENCY_SAMPLES)
        self.writer: VideoWriter | None = None
        self.mp4_shape: tuple[int, int] | None = None
        self._unsupported_logged = 0.0

    def _skip_unsupported(self, exc: UnsupportedVersion) -> None:
        self.report.unsupported += 1
        now = time.monotonic()
        if now - self._unsupported_logged >= 10.0:  # the spec asks for a low-rate log, not a failure
            self._unsupported_logged = now
            log.info("skipping messages of another protocol version (%d so far): %s", self.report.unsupported, exc)

    def handle(self, parts: list[zmq.Frame]) -> None:
        """Process one received message (any topic)."""
        topic = parts[0].bytes
        if topic == EVENTS_TOPIC:
            self._event(parts)
        elif topic.startswith(_FRAMES_PREFIX):
            self._frame(topic, parts)
        # other topics: ignored, as the spec requires (future versions may add some)

    def _event(self, parts: list[zmq.Frame]) -> None:
        try:
            event = decode_event(parts)
        except UnsupportedVersion as exc:
            self._skip_unsupported(exc)
            return
        except WireError as exc:
            self.report.invalid += 1
            log.debug("invalid event message: %s", exc)
            return
        if self.stream is None or event.stream == self.stream:
            self.events.append(event)

    def _frame(self, topic: bytes, parts: list[zmq.Frame]) -> None:
        if self.wanted is not None and topic != self.wanted:
            return  # another stream: a prefix match (frames/cam1 also matches frames/cam10) or not locked on
        try:
            header, pixels = decode_frame(parts)
        except UnsupportedVersion as exc:
            self._skip_unsupported(exc)
            return
        except WireError as exc:
            self.report.invalid += 1
            log.debug("invalid frame message: %s", exc)
            return
        report = self.report
        if self.lock and self.wanted is None:
            self.wanted, self.stream = topic, header.stream
            log.info("receiving stream %r", header.stream)
        self._track_seq(header)
        index = report.frames
        report.frames += 1
        if report.first_header is None:
            report.first_header = header
        report.last_header = header
        if header.latency_s is not None:
            self.latency.append(header.latency_s)
        if self.png_dir is not None:
            from PIL import Image  # only when PNGs are asked for

            Image.fromarray(pixels).save(self.png_dir / f"frame_{index:06d}.png")
        if self.output is not None:
            self._write_mp4(header, pixels)
        if self.on_frame is not None:
            self.on_frame(header, pixels)

    def _track_seq(self, header: FrameHeader) -> None:
        last = self.last_seq.get(header.stream)
        if last is None:
            if len(self.last_seq) >= MAX_TRACKED_STREAMS:
                return
            self.report.streams.add(header.stream)
        elif header.seq > last + 1:
            self.report.gaps += header.seq - last - 1
        elif header.seq <= last:
            self.report.restarts += 1  # spec 6.1: a new stream under the same id, not a huge gap
            log.info("stream %r restarted (seq %d after %d)", header.stream, header.seq, last)
        self.last_seq[header.stream] = header.seq

    def _write_mp4(self, header: FrameHeader, pixels: np.ndarray) -> None:
        if self.writer is None:
            from ..media import VideoWriter  # PyAV only when an MP4 is asked for

            assert self.output is not None
            self.writer = VideoWriter(self.output, header.fps or DEFAULT_FPS)
            self.mp4_shape = (header.height, header.width)
        if (header.height, header.width) != self.mp4_shape:
            self.report.unwritten += 1  # an MP4 has one frame size; keep the file valid rather than fail
            return
        self.writer.write(pixels)

    def close(self) -> None:
        """Finish the MP4 and copy the bounded buffers into the report."""
        self.report.events = list(self.events)
        self.report.latency_s = list(self.latency)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def subscribe(endpoint: str, stream: str | None = None, frames: int | None = None, output: Path | None = None,
              png_dir: Path | None = None, timeout_s: float | None = None,
              curve_client: tuple[Path, Path, Path] | None = None, *,
              on_frame: FrameCallback | None = None, rcvhwm: int = RCVHWM,
              on_wait: Callable[[float], None] | None = None) -> SubscribeReport:
    """Receive frames (and events) from a streamd publisher until `frames` arrived or `timeout_s` passed idle.

    - `stream`: receive that stream only (subscribes to `frames/<stream>` and drops the other streams that
      prefix-match it). Without it, subscribes to `frames/` and receives every stream, except that with
      `output` or `png_dir` it locks onto the first stream seen, since the files hold one stream.
    - `frames`: stop after this many accepted frames; None: until idle.
    - `output`: write the frames to this MP4 (H.264, frame rate from the first header's `fps`, else 15).
    - `png_dir`: write `frame_000000.png`, `frame_000001.png`, ... (lossless: the exact received pixels).
    - `timeout_s`: stop once no message at all arrived for this long; None (the default) waits as long as it
      takes: a real model's first chunk, or the gap between two chunks, can take minutes.
    - `on_wait(seconds)`: called every WAIT_NOTICE_S while no frame has arrived yet, with the time waited.
    - `curve_client`: `CurveClientKeys(secret_key_file, public_key_file, server_public_key_file)`, to connect
      to a CURVE publisher.
    - `on_frame(header, pixels)`: called for each accepted frame; `pixels` is a read-only view valid only
      during the call.
    - `rcvhwm`: receive queue bound in messages (ZMQ_RCVHWM; default RCVHWM = 64).

    Events (topic `events`, all streams, or only `stream`'s once a stream is wanted or locked onto) are
    collected in the report. Raises ValueError for bad arguments or unusable key files.
    """
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number or None, got {timeout_s}")
    if rcvhwm < 1:
        raise ValueError(f"rcvhwm must be at least 1, got {rcvhwm}")
    keys = _load_client_keys(curve_client) if curve_client is not None else None
    report = SubscribeReport()
    receiver = _Receiver(report, stream, lock=output is not None or png_dir is not None, output=output,
                         png_dir=png_dir, on_frame=on_frame)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # A private context so that the caller's (or another thread's) sockets are not affected by term().
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        if keys is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
            sock.setsockopt(zmq.CURVE_SERVERKEY, keys[2])
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, receiver.wanted if receiver.wanted is not None else _FRAMES_PREFIX)
        sock.setsockopt(zmq.SUBSCRIBE, EVENTS_TOPIC)
        idle_limit = math.inf if timeout_s is None else timeout_s
        idle_until = time.monotonic() + idle_limit
        next_notice = started + WAIT_NOTICE_S
        while frames is None or report.frames < frames:
            now = time.monotonic()
            if now >= idle_until:
                report.timed_out = True
                break
            if on_wait is not None and report.frames == 0 and now >= next_notice:
                on_wait(now - started)
                next_notice += WAIT_NOTICE_S
            wait_s = min(idle_until, next_notice) - now
            if not sock.poll(max(1, math.ceil(min(wait_s, WAIT_NOTICE_S) * 1000)), zmq.POLLIN):
                continue
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            idle_until = time.monotonic() + idle_limit
            receiver.handle(parts)
    except KeyboardInterrupt:
        report.interrupted = True  # a command-line user stopping the recording: still finish the files
    finally:
        try:
            receiver.close()
        finally:
            sock.close(linger=0)
            ctx.term()
            report.seconds = time.monotonic() - started
    return report
