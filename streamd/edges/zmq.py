"""The ZeroMQ edge: publish generated frames and lifecycle events (protocols/zmq-frames.md, version 1).

`FramePublisher` owns one XPUB socket and lives on the daemon's asyncio event loop. Every send is non-blocking
(`zmq.NOBLOCK`) and the socket keeps libzmq's default `XPUB_NODROP=0`, so a slow or stuck subscriber can never
stall the loop or the other subscribers: libzmq drops whole messages for the one subscriber whose queue
(`SNDHWM` messages) is full, and that subscriber alone sees the loss as a `seq` gap (section 9 of the spec). The
publisher cannot see those per-subscriber drops; its `dropped` counter only counts sends the socket refused
outright (`zmq.Again`).

XPUB also delivers subscription messages (b"\\x01topic" / b"\\x00topic") that libzmq queues without bound until
they are read, so a task reads them continuously; they feed the `subscribers` gauge.

Optionally the socket uses CURVE (section 10): `CurveConfig` names the server's key files and a directory of
allowed client public keys, checked by a ZAP handler thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ..wire import FORMAT_RGB24, SOURCE_LIVE, Event, FrameHeader, WireError, encode_event, encode_frame

if TYPE_CHECKING:  # the engine imports torch; the publisher needs ChunkOutput only as a type
    from ..engine.core import ChunkOutput

__all__ = [
    "CURVE_ZAP_DOMAIN",
    "ChunkSource",
    "CurveConfig",
    "CurveKeyError",
    "FramePublisher",
    "MAX_SEQ_STREAMS",
    "MAX_SUBSCRIPTION_MESSAGES_PER_DRAIN",
    "SUBSCRIPTION_POLL_S",
]

log = logging.getLogger(__name__)

CURVE_ZAP_DOMAIN = "streamd"  # ZMQ_ZAP_DOMAIN of the publisher socket (spec section 10)
HEARTBEAT_IVL_MS = 5_000  # a vanished subscriber's queue is freed within HEARTBEAT_TIMEOUT (spec section 3.1)
HEARTBEAT_TIMEOUT_MS = 15_000
# Inbound messages on XPUB are only subscriptions (topics are at most 71 bytes); a peer sending anything
# bigger is disconnected by libzmq instead of making it buffer the message.
MAX_INBOUND_MESSAGE_BYTES = 1_024
MAX_SUBSCRIPTION_MESSAGES_PER_DRAIN = 1_024  # then the drain yields, so a subscription flood cannot hog the loop
SUBSCRIPTION_POLL_S = 0.25  # the subscription reader wakes at least this often (safety net for a missed FD edge)
MAX_SEQ_STREAMS = 4_096  # seq counters kept; beyond it the oldest is evicted (normally forget_stream() prunes)
REJECT_LOG_INTERVAL_S = 1.0  # at most one WARNING per this many seconds for refused CURVE handshakes


class CurveKeyError(ValueError):
    """A CURVE key file or allow-list directory that is missing, unreadable or malformed."""


@dataclass(frozen=True)
class CurveConfig:
    """Key material for CURVE on the publisher socket (files as written by `zmq.auth.create_certificates`).

    `server_secret_key_file` holds the server's secret (and public) key, `server_public_key_file` its public key
    (the one subscribers set as `CURVE_SERVERKEY`; it must match the secret key), and `allowed_clients_dir` the
    public key files (`*.key`) of the only clients admitted. An empty directory admits no one: there is
    deliberately no "any key" mode. The allow-list is read once, at `FramePublisher.start()`.
    """

    server_secret_key_file: Path
    server_public_key_file: Path
    allowed_clients_dir: Path


class ChunkSource(Protocol):
    """What `FramePublisher.run` consumes: the engine runner's output side (`EngineRunner` satisfies it)."""

    def outputs(self) -> AsyncIterator[ChunkOutput]:
        """Generated chunks, as they come."""
        ...

    def is_current(self, out: ChunkOutput) -> bool:
        """Whether the chunk's stream still exists and was not reset since the chunk was made."""
        ...


def _read_key_file(path: Path, what: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys of one zmq.auth key file, with an error naming the file and the problem."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CurveKeyError(f"{what} {path} does not exist or is not a file")
        public, secret = zmq.auth.load_certificate(path)
    except CurveKeyError:
        raise
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read {what} {path}: {exc}") from None
    for name, key in (("public", public), ("secret", secret)):
        if key is None:
            continue
        try:
            if len(key) != 40 or len(z85.decode(key)) != 32:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise CurveKeyError(f"{what} {path} has a malformed {name} key (want 40 Z85 characters)") from None
    if need_secret and secret is None:
        raise CurveKeyError(f"{what} {path} holds no secret-key (is it the public .key file?)")
    return public, secret


def _load_allow_list(directory: Path) -> frozenset[bytes]:
    """The Z85 public keys of every `*.key` file in `directory` (like zmq.auth.load_certificates, but strict)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CurveKeyError(f"CURVE allowed-clients directory {directory} does not exist or is not a directory")
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".key" and p.is_file())
    except OSError as exc:
        raise CurveKeyError(f"cannot list CURVE allowed-clients directory {directory}: {exc}") from None
    return frozenset(_read_key_file(p, "CURVE client public key file", need_secret=False)[0] for p in files)


class _AllowList:
    """ZAP credentials provider: admits exactly the allowed client keys and logs refusals (rate-limited)."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self.rejected = 0  # refused handshakes; written by the ZAP thread, read by the loop (an int: atomic)
        self.peer_address = ""  # address of the request being checked (set by _ZapAuthenticator)
        self._last_warning = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by pyzmq's Authenticator with the client's Z85 public key."""
        if key in self.keys:
            return True
        self.rejected += 1
        now = time.monotonic()
        # A misconfigured or hostile client may retry in a tight loop: one WARNING per interval, the rest DEBUG.
        level = logging.WARNING if now - self._last_warning >= REJECT_LOG_INTERVAL_S else logging.DEBUG
        if level == logging.WARNING:
            self._last_warning = now
        log.log(level, "refused CURVE handshake from %s: public key %s is not allowed (%d refused so far)",
                self.peer_address or "?", key.decode("ascii", "replace"), self.rejected)
        return False


class _ZapAuthenticator(ThreadAuthenticator):
    """ThreadAuthenticator that tells the allow-list which peer address a request comes from (for the log)."""

    def __init__(self, context: zmq.Context[Any], allow_list: _AllowList) -> None:
        super().__init__(context=context)
        self._allow_list = allow_list

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Record the request's address (ZAP frame 3), then authenticate as usual."""
        # ZAP requests are handled one at a time on the ZAP thread, so a plain attribute is enough.
        self._allow_list.peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


def _is_loopback_endpoint(endpoint: str) -> bool:
    """Whether a tcp:// endpoint binds only loopback (ipc:// and inproc:// are local by nature)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: possibly reachable from elsewhere


class FramePublisher:
    """Publishes generated frames and events on one XPUB socket, never blocking the event loop.

    Use from one asyncio event loop (the socket is not thread-safe): `start()`, then `run(runner)` as a task
    and `publish_event(...)` from hooks; `close()` at the end. Bounds:

    - per subscriber, at most `sndhwm` messages queued (ZMQ_SNDHWM); beyond that libzmq drops that
      subscriber's messages, which it then sees as `seq` gaps; the other subscribers are unaffected;
    - at most MAX_SEQ_STREAMS per-stream `seq` counters (call `forget_stream` when a stream ends);
    - inbound messages (subscriptions) of at most MAX_INBOUND_MESSAGE_BYTES, read as they arrive.

    Counters: `published` (frames handed to the socket), `dropped` (frames the socket refused with EAGAIN;
    their `seq` is consumed, so receivers see the gap), `stale` (frames of chunks skipped by `run` because their
    stream was reset or removed), `events_published`, `events_dropped`, and `subscribers`.

    `subscribers` counts active subscriptions, not peers: a subscriber that subscribes to `frames/` and
    `events` counts 2. It is exact for the usual pattern (each topic subscribed once per socket, unsubscribed
    or disconnected later); a socket that subscribes to the same topic twice counts 2 until it disconnects,
    which only removes 1, because libzmq reports the duplicate subscribe but keeps one entry per peer and topic.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5557", sndhwm: int = 64, curve: CurveConfig | None = None,
                 fps: float = 15.0) -> None:
        """`endpoint` may use port `*` (tcp) to bind a free port; read the actual one from `.endpoint`."""
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be at least 1, got {sndhwm}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.configured_endpoint = endpoint
        self.sndhwm = sndhwm
        self.curve = curve
        self.fps = float(fps)
        self.published = 0
        self.dropped = 0
        self.stale = 0
        self.events_published = 0
        self.events_dropped = 0
        self.subscribers = 0
        self._seq: dict[str, int] = {}  # stream id -> next seq; insertion order = eviction order
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._auth: _ZapAuthenticator | None = None
        self._allow_list: _AllowList | None = None
        self._bound_endpoint: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd: int | None = None
        self._readable: asyncio.Event | None = None
        self._sub_task: asyncio.Task[None] | None = None
        self._run_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        """The bound endpoint after `start()` (a `*` port resolved), else the configured one."""
        return self._bound_endpoint or self.configured_endpoint

    @property
    def auth_rejected(self) -> int:
        """CURVE handshakes refused because the client key is not on the allow-list (0 without CURVE)."""
        return self._allow_list.rejected if self._allow_list is not None else 0

    def start(self) -> None:
        """Bind the socket and start reading subscriptions. Call from the running event loop.

        Raises CurveKeyError for unusable key material and zmq.ZMQError when the endpoint cannot be bound;
        in both cases nothing is left open.
        """
        if self._closed:
            raise RuntimeError("this FramePublisher was closed; create a new one")
        if self._sock is not None:
            raise RuntimeError("FramePublisher.start() called twice")
        keys: tuple[bytes, bytes] | None = None
        allow: frozenset[bytes] = frozenset()
        if self.curve is not None:  # read every key before opening anything, so errors leave nothing behind
            keys, allow = self._load_curve(self.curve)
        loop = asyncio.get_running_loop()
        # A private context: its ZAP handler (inproc://zeromq.zap.01 is per context) and its teardown are ours.
        ctx: zmq.Context[Any] = zmq.Context()
        sock: zmq.Socket[Any] | None = None
        try:
            if keys is not None:
                self._allow_list = _AllowList(allow)
                self._auth = _ZapAuthenticator(ctx, self._allow_list)
                self._auth.start()
                self._auth.configure_curve_callback(CURVE_ZAP_DOMAIN, credentials_provider=self._allow_list)
            sock = ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.LINGER, 0)  # close never waits for slow subscribers
            sock.setsockopt(zmq.SNDHWM, self.sndhwm)  # per-subscriber queue bound
            sock.setsockopt(zmq.XPUB_NODROP, 0)  # drop for a full subscriber instead of failing/stalling sends
            # VERBOSER (implies VERBOSE): every subscribe *and* unsubscribe is passed up, also for topics other
            # peers still hold; with VERBOSE alone shared-topic unsubscribes are swallowed and the count drifts.
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_MESSAGE_BYTES)
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            if keys is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
                sock.setsockopt_string(zmq.ZAP_DOMAIN, CURVE_ZAP_DOMAIN)
            sock.bind(self.configured_endpoint)
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            if sock is not None:
                sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.term()
            raise
        self._ctx, self._sock, self._bound_endpoint, self._loop = ctx, sock, bound, loop
        if self.curve is None and not _is_loopback_endpoint(bound):
            log.warning("publishing frames on %s without CURVE: anyone who can reach it receives every frame",
                        bound)
        self._readable = asyncio.Event()
        try:
            # The ZMQ FD signals "events may have changed" (edge-triggered); the reader re-checks after waking.
            fd = sock.getsockopt(zmq.FD)
            loop.add_reader(fd, self._readable.set)
            self._reader_fd = fd
        except (NotImplementedError, RuntimeError):
            self._reader_fd = None  # a loop without add_reader: the periodic poll alone keeps the queue drained
        self._sub_task = loop.create_task(self._read_subscriptions(), name="zmq-subscriptions")
        log.info("publishing frames on %s%s", bound, " (CURVE)" if keys is not None else "")

    @staticmethod
    def _load_curve(curve: CurveConfig) -> tuple[tuple[bytes, bytes], frozenset[bytes]]:
        """((public, secret), allowed client keys), with clear errors for anything unusable."""
        public, secret = _read_key_file(curve.server_secret_key_file, "CURVE server secret key file",
                                        need_secret=True)
        assert secret is not None
        public_file, _ = _read_key_file(curve.server_public_key_file, "CURVE server public key file",
                                        need_secret=False)
        if public_file != public:
            raise CurveKeyError(f"CURVE server public key file {curve.server_public_key_file} does not match "
                                f"the secret key file {curve.server_secret_key_file}")
        try:
            mode = os.stat(curve.server_secret_key_file).st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            log.warning("CURVE server secret key file %s is readable by other users (mode %o); chmod 600 it",
                        curve.server_secret_key_file, mode & 0o777)
        allow = _load_allow_list(curve.allowed_clients_dir)
        if not allow:
            log.warning("CURVE allowed-clients directory %s holds no *.key file: no subscriber can connect",
                        curve.allowed_clients_dir)
        return (public, secret), allow

    def close(self) -> None:
        """Cancel the tasks, close the socket (linger 0), stop the authenticator. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._run_tasks):
            task.cancel()
        if self._sub_task is not None:
            self._sub_task.cancel()
            self._sub_task = None
        if self._reader_fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._reader_fd)  # before the socket (and its FD) goes away
            self._reader_fd = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()  # returns at once: every socket of this private context is closed
            self._ctx = None
        self.subscribers = 0  # the socket and with it every subscription is gone

    # ------------------------------------------------------------------------------------------ subscriptions
    async def _read_subscriptions(self) -> None:
        """Keep the XPUB receive side empty and `subscribers` current, until cancelled."""
        readable = self._readable
        assert readable is not None
        while True:
            readable.clear()
            if self._drain_subscriptions():
                await asyncio.sleep(0)  # hit the per-drain bound: more may be waiting, let others run first
                continue
            try:
                await asyncio.wait_for(readable.wait(), SUBSCRIPTION_POLL_S)
            except TimeoutError:
                pass  # sends can consume the FD's edge; the timeout re-checks anyway

    def _drain_subscriptions(self) -> bool:
        """Read up to MAX_SUBSCRIPTION_MESSAGES_PER_DRAIN queued messages; True when that bound was hit."""
        sock = self._sock
        if sock is None:
            return False
        for _ in range(MAX_SUBSCRIPTION_MESSAGES_PER_DRAIN):
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return False
            # Multipart subscriptions do not exist; skip any further parts so the next recv starts a message.
            while sock.getsockopt(zmq.RCVMORE):
                sock.recv(zmq.NOBLOCK)
            if msg[:1] == b"\x01":
                self.subscribers += 1
                log.debug("subscription to %r (%d active)", msg[1:], self.subscribers)
            elif msg[:1] == b"\x00":
                # clamp: an unsubscribe of a duplicate subscription (see the class docstring) must not go below 0
                self.subscribers = max(0, self.subscribers - 1)
                log.debug("unsubscription from %r (%d active)", msg[1:], self.subscribers)
            # anything else is a user message from an XSUB peer: not part of the protocol, ignored
        return True

    # ------------------------------------------------------------------------------------------ publishing
    def _require_socket(self) -> zmq.Socket[Any] | None:
        if self._sock is None and not self._closed:
            raise RuntimeError("FramePublisher.start() first")
        return self._sock

    def _next_seq(self, stream_id: str) -> int:
        seq = self._seq.get(stream_id)
        if seq is None:
            if len(self._seq) >= MAX_SEQ_STREAMS:
                oldest = next(iter(self._seq))
                del self._seq[oldest]
                log.warning("more than %d streams tracked: forgetting seq of %r (call forget_stream when a "
                            "stream ends)", MAX_SEQ_STREAMS, oldest)
            seq = 0
        self._seq[stream_id] = seq + 1
        return seq

    def forget_stream(self, stream_id: str) -> None:
        """Drop the stream's `seq` counter: a stream with this id published later starts again at 0."""
        self._seq.pop(stream_id, None)

    def publish_chunk(self, out: ChunkOutput) -> int:
        """Send every frame of a chunk, in order, without blocking; returns how many the socket accepted.

        Each frame gets the stream's next `seq`, also when the socket refuses it (counted in `dropped`), so
        receivers see the refusal as a gap. After `close()` this sends nothing and returns 0. Raises ValueError
        (WireError) for a malformed chunk, before any seq is consumed.
        """
        sock = self._require_socket()
        if sock is None:
            return 0
        frames = np.asarray(out.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise WireError(f"chunk frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
        if len(out.pts_ns) != len(frames):
            raise WireError(f"chunk has {len(frames)} frames but {len(out.pts_ns)} pts_ns values")
        count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
        source = getattr(out.source, "value", out.source)
        # latency_s is defined only for live-conditioned chunks (spec section 5.2)
        arrival = out.cond_arrival if source == SOURCE_LIVE else None
        FrameHeader(stream=out.stream_id, seq=0, width=width, height=height, pts_ns=0, chunk=out.chunk,
                    source=source, generation=out.generation)  # validate ids once, before consuming any seq
        sent = 0
        for i in range(count):
            header = FrameHeader(
                stream=out.stream_id, seq=self._next_seq(out.stream_id), width=width, height=height,
                pts_ns=int(out.pts_ns[i]), chunk=out.chunk, source=source, format=FORMAT_RGB24,
                generation=out.generation, fps=self.fps, frame_in_chunk=i,
                latency_s=None if arrival is None else max(0.0, time.monotonic() - arrival),
                cond_frame=out.cond_frame,
            )
            parts = encode_frame(header, np.ascontiguousarray(frames[i]))
            try:
                # copy=False: the payload (a fresh bytes object) is handed to libzmq without a second copy
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.dropped += 1
                continue
            self.published += 1
            sent += 1
        self._drain_subscriptions()  # the sends may have swallowed the FD's readable edge
        return sent

    def publish_event(self, event: str, stream: str, **fields: Any) -> bool:
        """Send one event on topic `events` without blocking; True when the socket accepted it.

        `fields` are Event members (reason, width, height, dropped, generation, details, time_ns). Raises
        WireError for an invalid event. After `close()` this sends nothing and returns False (a session may end
        during shutdown).
        """
        sock = self._require_socket()
        message = encode_event(Event(event, stream, **fields))
        if sock is None:
            return False
        try:
            sock.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.events_dropped += 1
            return False
        self.events_published += 1
        return True

    async def run(self, runner: ChunkSource) -> None:
        """Publish every chunk `runner.outputs()` yields, skipping stale ones, until cancelled or it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._run_tasks.add(task)
        try:
            async for out in runner.outputs():
                if self._closed:
                    break
                # outputs() already skips stale chunks when it dequeues them; a reset can land between that
                # and now, and frames of an older generation must not follow a stream-reset event.
                if not runner.is_current(out):
                    self.stale += len(out.frames)
                    continue
                try:
                    self.publish_chunk(out)
                except WireError as exc:
                    log.error("not publishing chunk %d of stream %r: %s", out.chunk, out.stream_id, exc)
                await asyncio.sleep(0)  # let other loop work run between chunks
        finally:
            if task is not None:
                self._run_tasks.discard(task)
