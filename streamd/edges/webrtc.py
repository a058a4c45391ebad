"""WHIP ingest (RFC 9725) on aiortc: one peer connection per session, each session a stream in the engine.

A session lives until its client DELETEs it, its peer connection fails or closes, its peer never connects within
the setup timeout, or it sends no video for the media timeout; then everything it held is released (peer
connection, engine stream, frame slot, publisher state).

Each received frame is converted to RGB at the stream's working size here, once, by libswscale (one pass for
colour conversion and scaling), so that the engine thread never resizes frames it may not even use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription, candidate_from_sdp

from ..config import WebRtcSettings
from ..lograte import is_logged
from .redact import quote_client

log = logging.getLogger(__name__)

MIN_FRAME_SIDE = 2  # received frames with a side outside MIN..MAX_FRAME_SIDE px are dropped (and counted)
MAX_FRAME_SIDE = 4096  # a 16K frame is a mistake or abuse; refusing it bounds the conversion's memory and time
# libswscale's bicubic widens its filter when shrinking, so downscaling is antialiased. One thread: frames are
# small after scaling, and the event loop must not fan out over the cores the engine uses.
SCALER = "BICUBIC"
SCALER_THREADS = 1
# Bound of the scaled intermediate, in target areas: a frame whose cover would exceed it is cut before scaling
MAX_SCALED_OVER_TARGET = 4


class WhipError(Exception):
    """A request the HTTP surface refuses (WHIP, WHEP, control API): status, error code (protocols/http.md), detail.

    Raised by the parsers here and by the endpoints; build_app turns it into the JSON error response.
    """

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


class FrameSizeError(ValueError):
    """A received frame (or a requested working size) with a side outside MIN..MAX_FRAME_SIDE pixels."""


def _check_size(height: int, width: int, what: str) -> None:
    if not (MIN_FRAME_SIDE <= height <= MAX_FRAME_SIDE and MIN_FRAME_SIDE <= width <= MAX_FRAME_SIDE):
        raise FrameSizeError(f"{what} {width}x{height} is outside {MIN_FRAME_SIDE}..{MAX_FRAME_SIDE} px per side")


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """A received frame as an RGB uint8 array [height, width, 3] at `size` = (height, width).

    The frame is scaled, keeping its aspect ratio, until it covers the target, and whatever sticks out is cut
    evenly from both sides (no distortion, no borders); the crop is a view into the scaled array. A frame
    already at `size`, or any frame when `size` is None, is only converted to RGB. Raises FrameSizeError when a
    side of the frame or of `size` is outside MIN..MAX_FRAME_SIDE pixels.
    """
    h, w = frame.height, frame.width
    _check_size(h, w, "frame size")
    if size is None or (h, w) == tuple(size):
        return frame.to_ndarray(format="rgb24")
    th, tw = size
    _check_size(th, tw, "target size")
    scale = max(th / h, tw / w)
    # rounding may land one pixel short of the target; max() keeps the cover guarantee
    sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
    if sh * sw > MAX_SCALED_OVER_TARGET * th * tw:
        return _crop_then_scale(frame, th, tw, scale)
    scaled = frame.reformat(width=sw, height=sh, format="rgb24", interpolation=SCALER,
                            threads=SCALER_THREADS).to_ndarray()  # [sh, sw, 3]
    top, left = (sh - th) // 2, (sw - tw) // 2
    return scaled[top:top + th, left:left + tw]


def _crop_then_scale(frame: av.VideoFrame, th: int, tw: int, scale: float) -> np.ndarray:
    """An elongated frame: cut the part that is kept at source resolution first, then scale only that.

    Scaling first would make an intermediate that grows with the aspect ratio (2x4096 px to cover 128x224 is
    128x262144 px, 100 MB and 0.15 s on the event loop); the cut region is at most the frame, and since an
    elongated frame within 4096 px per side is thin, it is small. Two passes, for rare frames only.
    """
    h, w = frame.height, frame.width
    ch, cw = min(h, max(1, round(th / scale))), min(w, max(1, round(tw / scale)))
    top, left = (h - ch) // 2, (w - cw) // 2
    kept = frame.to_ndarray(format="rgb24")[top:top + ch, left:left + cw]  # [ch, cw, 3]
    cut = av.VideoFrame.from_ndarray(np.ascontiguousarray(kept), format="rgb24")
    return cut.reformat(width=tw, height=th, interpolation=SCALER, threads=SCALER_THREADS).to_ndarray()


def restrict_host_addresses(addresses: tuple[str, ...]) -> None:
    """Offer ICE host candidates only on `addresses` (process-wide; aioice reads this function at gather time)."""
    if addresses:
        chosen = list(addresses)
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(chosen)


def _parse_sdp(sdp: str) -> SessionDescription:
    """Parse an SDP offer and check what every WebRTC offer must carry, raising WhipError 400 `bad-sdp`.

    Every audio and video section needs ICE credentials and at least one DTLS fingerprint (RFC 8842 section 5):
    without a fingerprint the DTLS handshake cannot be verified, and aiortc would only fail later, inside a task.
    """
    if not sdp.lstrip().startswith("v=0"):
        raise WhipError(400, "bad-sdp", "the body is not an SDP offer (it must start with v=0)")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises assorted errors on malformed input
        raise WhipError(400, "bad-sdp", f"malformed SDP offer: {quote_client(str(exc))}") from None
    if not parsed.media:
        raise WhipError(400, "bad-sdp", "the SDP offer has no media section")
    for m in parsed.media:
        if m.kind in ("audio", "video") and (m.ice is None or not m.ice.usernameFragment or not m.ice.password):
            raise WhipError(400, "bad-sdp", f"the {m.kind} section lacks ICE credentials (a=ice-ufrag, a=ice-pwd)")
        if m.kind in ("audio", "video") and (m.dtls is None or not m.dtls.fingerprints):
            raise WhipError(400, "bad-sdp", f"the {m.kind} section lacks a DTLS fingerprint (a=fingerprint)")
    return parsed


def parse_offer(sdp: str) -> SessionDescription:
    """Parse a WHIP offer, raising WhipError 400 (malformed, no ICE credentials or DTLS fingerprint) or 422 (no
    video section the daemon can receive)."""
    parsed = _parse_sdp(sdp)

    def receivable(m: Any) -> bool:
        codecs = {c.mimeType.lower() for c in m.rtp.codecs}
        return (m.kind == "video" and m.port != 0 and (m.direction or "sendrecv") in ("sendonly", "sendrecv")
                and bool(codecs & {"video/vp8", "video/h264"}))

    if not any(receivable(m) for m in parsed.media):
        raise WhipError(422, "no-video", "the offer has no video section the daemon can receive "
                                         "(VP8 or H.264, sendonly or sendrecv)")
    return parsed


def parse_viewer_offer(sdp: str) -> SessionDescription:
    """Parse a WHEP offer (protocols/http.md section 5.1), raising WhipError 400 `bad-sdp` (malformed, or no video
    section the daemon can send into: none `recvonly` or `sendrecv`) or 422 `no-video` (no video section)."""
    parsed = _parse_sdp(sdp)
    video = [m for m in parsed.media if m.kind == "video" and m.port != 0]
    if not video:
        raise WhipError(422, "no-video", "the offer has no video section to play into")
    if not any((m.direction or "sendrecv") in ("recvonly", "sendrecv") for m in video):
        raise WhipError(400, "bad-sdp", "the offer's video sections cannot receive (the direction must be "
                                        "recvonly or sendrecv)")
    return parsed


@dataclass
class TrickleFragment:
    """The parts of an application/trickle-ice-sdpfrag body streamd uses."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)  # (mid, candidate line)
    end_of_candidates: bool = False


def parse_sdpfrag(body: str) -> TrickleFragment:
    """Parse a trickle ICE fragment (RFC 8840), raising WhipError 400 when it is not one."""
    frag = TrickleFragment()
    mid: str | None = None
    seen_any = False
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        seen_any = True
        if line.startswith("a=ice-ufrag:"):
            frag.ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            frag.pwd = line.split(":", 1)[1]
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            frag.candidates.append((mid, line[len("a="):]))
        elif line == "a=end-of-candidates":
            frag.end_of_candidates = True
        elif line[:2] not in ("a=", "m=", "c="):
            raise WhipError(400, "bad-sdpfrag", f"unexpected line in trickle fragment: {quote_client(line)!r}")
    if not seen_any:
        raise WhipError(400, "bad-sdpfrag", "empty trickle fragment")
    return frag


ICE_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


def parse_candidate(line: str) -> Any:
    """An `candidate:...` attribute (RFC 8839 section 5.1) as aiortc's candidate, raising WhipError 400
    `bad-sdpfrag` unless every field is well formed. aiortc's own parser takes fields on trust (a port of
    "x", a host name as address), and aioice then drops such a candidate silently."""
    def bad(why: str) -> WhipError:
        return WhipError(400, "bad-sdpfrag", f"malformed candidate {quote_client(line)!r}: {why}")

    fields = line.split(":", 1)[1].split() if ":" in line else []
    if len(fields) < 8 or fields[6] != "typ":
        raise bad("expected <foundation> <component> <transport> <priority> <address> <port> typ <type>")
    foundation, component, transport, priority, address, port, _, kind = fields[:8]
    if not (1 <= len(foundation) <= 32 and all(c.isascii() and (c.isalnum() or c in "+/") for c in foundation)):
        raise bad("foundation")
    if not (component.isdigit() and 1 <= int(component) <= 256):
        raise bad("component")
    if transport.lower() not in ("udp", "tcp"):
        raise bad("transport")
    if not (priority.isdigit() and int(priority) < 2**32):
        raise bad("priority")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not address.endswith(".local"):  # mDNS names (RFC 8828) are what browsers send for host candidates
            raise bad("address") from None
    if not (port.isdigit() and int(port) <= 65535):
        raise bad("port")
    if kind not in ICE_CANDIDATE_TYPES:
        raise bad("type")
    try:
        return candidate_from_sdp(line.split(":", 1)[1])
    except Exception as exc:  # aiortc's parser raises assorted errors on the optional fields
        raise bad(quote_client(str(exc))) from None


class WhipSession:
    """One WHIP publisher: its peer connection, its engine stream and the task that reads its video.

    Every received video frame reaches `on_frame` as RGB uint8 [height, width, 3] at `frame_size` (see
    `frame_to_rgb`; None keeps each frame's own size). Frames that cannot be converted are dropped and counted
    in `frames_refused`.
    """

    def __init__(
        self,
        session_id: str,
        stream_id: str,
        settings: WebRtcSettings,
        on_frame: Callable[[str, np.ndarray], None],
        on_close: Callable[[WhipSession, str], Awaitable[None]],
        on_live: Callable[[str], None],
        frame_size: tuple[int, int] | None = None,
    ) -> None:
        if frame_size is not None:
            _check_size(frame_size[0], frame_size[1], "working size")  # a wiring bug: fail the POST, loudly
        self.session_id = session_id
        self.stream_id = stream_id
        self.etag = f'"{secrets.token_hex(8)}"'
        self.settings = settings
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._on_frame = on_frame
        self._on_close = on_close
        self._on_live = on_live
        self.went_live = False
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.connected = asyncio.Event()
        self.frame_size = frame_size
        self.frames = 0  # frames handed to on_frame
        self.frames_refused = 0  # frames dropped at ingest (size out of bounds, or conversion failed)
        self.remote_ufrag: str | None = None
        self.created = time.monotonic()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer_sdp: str, parsed: SessionDescription) -> str:
        """Apply the offer and return the answer SDP (all host candidates included: no trickle needed)."""
        self.remote_ufrag = next((m.ice.usernameFragment for m in parsed.media if m.ice), None)
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.direction = "recvonly"
            # Answer a=setup:passive: as DTLS server aiortc offers RSA-friendly ciphers, so every WebRTC stack
            # (GStreamer webrtcbin with RSA certificates among them) completes the handshake.
            transceiver.receiver.transport._set_role("server")  # noqa: SLF001 - aiortc has no public knob
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._tasks.append(asyncio.ensure_future(self._setup_watchdog()))
        return self.pc.localDescription.sdp

    async def add_candidates(self, frag: TrickleFragment) -> None:
        """Apply a trickle fragment (ICE restarts are refused)."""
        if frag.ufrag is not None and self.remote_ufrag is not None and frag.ufrag != self.remote_ufrag:
            raise WhipError(422, "ice-restart-unsupported", "ICE restarts are not supported: start a new session")
        mids = [t.mid for t in self.pc.getTransceivers() if t.mid is not None]
        default_mid = mids[0] if mids else "0"
        # Check every line before adding any: a fragment is applied whole or refused (400) whole.
        candidates = []
        for mid, line in frag.candidates:
            if mid is not None and mid not in mids:
                raise WhipError(400, "bad-sdpfrag", f"a=mid:{quote_client(mid)} names no media section of this "
                                                    "session")
            candidate = parse_candidate(line)
            candidate.sdpMid = mid or default_mid
            candidates.append(candidate)
        for candidate in candidates:
            await self.pc.addIceCandidate(candidate)
        if frag.end_of_candidates:
            await self.pc.addIceCandidate(None)  # type: ignore[arg-type]

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._read_video(track)))
        else:
            # aiortc queues received media without bound: an unread audio track would grow forever
            self._tasks.append(asyncio.ensure_future(self._discard(track)))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("session %s: connection %s", self.session_id, state)
        if state == "connected" and not self.went_live:
            self.went_live = True
            self.connected.set()
            self._on_live(self.stream_id)
        elif state in ("failed", "closed"):
            await self.close("ice-failed" if state == "failed" else "peer-closed")

    async def _setup_watchdog(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), self.settings.setup_timeout_s)
        except TimeoutError:
            log.info("session %s: peer did not connect within %g s", self.session_id[:6],
                     self.settings.setup_timeout_s)
            await self.close("setup-timeout")

    async def _discard(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def _read_video(self, track: MediaStreamTrack) -> None:
        """Drain the track (newest frames win downstream) until it ends or goes silent."""
        timeout = self.settings.media_timeout_s
        reason = "peer-closed"
        try:
            await self.connected.wait()  # the setup watchdog closes a session that never connects
            while True:
                frame = await asyncio.wait_for(track.recv(), timeout)
                if not isinstance(frame, av.VideoFrame):  # a video track yields video frames; be sure
                    continue
                try:
                    image = frame_to_rgb(frame, self.frame_size)
                except (FrameSizeError, av.FFmpegError, ValueError) as exc:
                    self._refuse(exc)
                    continue
                self.frames += 1
                self._on_frame(self.stream_id, image)
        except TimeoutError:
            reason = "media-timeout"
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            return
        await self.close(reason)

    def _refuse(self, exc: Exception) -> None:
        self.frames_refused += 1
        n = self.frames_refused
        # log the 1st, 2nd, 4th, 8th... refusal: a sender stuck on a bad size cannot flood the log
        if is_logged(n):
            log.warning("session %s: dropped received frame (%d so far): %s", self.session_id[:6], n, exc)

    async def close(self, reason: str) -> None:
        """Release everything the session holds (idempotent)."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await self.pc.close()
        await self._on_close(self, reason)


def new_session_id() -> str:
    """128 random bits, base64url without padding (22 characters). Secret: it authorises DELETE."""
    return secrets.token_urlsafe(16)


def new_stream_id() -> str:
    """A public stream id: `s-` and 12 random hex digits (never derived from the session id)."""
    return "s-" + secrets.token_hex(6)
