"""WHEP egress: play a stream's generated video to a WebRTC viewer (browser, OBS, GStreamer).

`WhepEndpoint` owns the HTTP resources (POST /whep[/<stream>], DELETE /whep/session/<id>), `WhepViewer` one
viewer's peer connection, `GeneratedTrack` its paced video track. Generated chunks arrive in bursts (16 frames at
once); each viewer's track releases them at the model's frame rate from their presentation timestamps, so
playback is smooth and correctly timed. Bounds: at most `VIEWER_QUEUE_FRAMES` frames wait per viewer (oldest
dropped), at most `max_viewers` viewers, and a viewer slot is held only by a connected viewer or by one within
`setup_timeout_s` of its 201 (aioice never gives up on a peer that vanished after its POST).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from typing import Protocol

import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

from .http import RETRY_AFTER_S, SDP, RequestChecks
from .webrtc import WhipError, new_session_id, parse_viewer_offer

log = logging.getLogger(__name__)

VIEWER_QUEUE_FRAMES = 64  # about 4 s at 15 fps: a viewer further behind loses its oldest frames
VIDEO_CLOCK = 90_000  # RTP video clock rate
DEFAULT_MAX_VIEWERS = 16  # viewers in all, across streams: each one costs an encoder on the event loop
# a viewer not connected this long after its 201 is dropped (webrtc.whep_setup_timeout_s)
DEFAULT_SETUP_TIMEOUT_S = 15.0


class GeneratedTrack(VideoStreamTrack):
    """A video track fed with generated frames and paced by their timestamps."""

    def __init__(self, fps: float) -> None:
        super().__init__()
        self.fps = fps
        self._queue: deque[tuple[np.ndarray, int]] = deque(maxlen=VIEWER_QUEUE_FRAMES)
        self._ready = asyncio.Event()
        self._last: np.ndarray | None = None
        self._origin: tuple[float, int] | None = None  # (monotonic time, pts_ns) of the first frame sent
        self._next_pts = 0
        self.sent = 0
        self.dropped = 0

    def offer(self, frames: np.ndarray, pts_ns: list[int]) -> None:
        """Queue a chunk's frames (called on the event loop)."""
        for frame, pts in zip(frames, pts_ns):
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((frame, pts))
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._queue and self._last is None:
            self._ready.clear()
            await self._ready.wait()
        if self._queue:
            image, pts_ns = self._queue.popleft()
            if self._origin is None:
                self._origin = (time.monotonic(), pts_ns)
            due = self._origin[0] + (pts_ns - self._origin[1]) / 1e9
            if due - time.monotonic() > 2.0:  # timeline jumped (reset, gap): restart the clock here
                self._origin, due = (time.monotonic(), pts_ns), time.monotonic()
            self._last = image
        else:
            # the engine is behind: hold the last picture for one frame time rather than stall the stream
            image = self._last  # type: ignore[assignment]
            due = time.monotonic() + 1.0 / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self._next_pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._next_pts += round(VIDEO_CLOCK / self.fps)
        self.sent += 1
        return frame


class WhepViewer:
    """One WHEP session: a peer connection sending one stream's generated video."""

    def __init__(self, stream_id: str, fps: float) -> None:
        self.session_id = new_session_id()
        self.stream_id = stream_id
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = GeneratedTrack(fps)
        self.closed = False
        self.connected = asyncio.Event()
        self.watchdog: asyncio.Task[None] | None = None

    async def answer(self, offer_sdp: str) -> str:
        """Apply a recvonly (or sendrecv) video offer and answer with the generated track."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise WhipError(422, "no-video", "the offer has no video section to play into")
        self.pc.addTrack(self.track)  # fills the offered video transceiver
        for transceiver in self.pc.getTransceivers():
            transceiver.receiver.transport._set_role("server")  # noqa: SLF001 - passive DTLS, as for WHIP
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        """Stop the track and the peer connection (idempotent)."""
        if not self.closed:
            self.closed = True
            if self.watchdog is not None and self.watchdog is not asyncio.current_task():
                self.watchdog.cancel()
            self.track.stop()
            await self.pc.close()


class PlaybackSource(Protocol):
    """What WHEP needs from the ingest side (`whip.WhipEndpoint` provides it)."""

    checks: RequestChecks  # the request checks (token, bodies, CORS) of the HTTP surface both share

    def live_streams(self) -> list[str]:
        """Stream ids that can be watched now, newest first."""
        ...


class WhepEndpoint:
    """WHEP playback sessions. Bounds: at most `max_viewers` viewers in all; one not connected within
    `setup_timeout_s` of its 201 is dropped."""

    def __init__(self, source: PlaybackSource, fps: float, max_viewers: int = DEFAULT_MAX_VIEWERS,
                 setup_timeout_s: float = DEFAULT_SETUP_TIMEOUT_S) -> None:
        self.source = source
        self.setup_timeout_s = setup_timeout_s
        self.checks = source.checks
        self.fps = fps
        self.max_viewers = max_viewers
        self.viewers: dict[str, WhepViewer] = {}

    async def options(self, request: web.Request) -> web.Response:
        """CORS preflight of every WHEP resource (protocols/http.md section 5.3); never needs a token."""
        if "session" in request.match_info:  # 204 even for unknown sessions: reveals nothing
            return self.checks.preflight("OPTIONS, DELETE", {})
        return self.checks.preflight("OPTIONS, POST", {"Accept-Post": SDP})

    async def post(self, request: web.Request) -> web.Response:
        """Start a viewer of `/whep/<stream>` (or of the newest live stream); 201 with the answer."""
        self.checks.authorize(request, "view")
        offer = await self.checks.read_body(request, SDP)
        parse_viewer_offer(offer)
        live = self.source.live_streams()
        stream_id = request.match_info.get("stream") or (live[0] if live else None)
        if stream_id is None or stream_id not in live:
            raise WhipError(404, "not-found", f"no live stream {stream_id!r}" if stream_id else "no live stream")
        if len(self.viewers) >= self.max_viewers:
            raise WhipError(503, "at-capacity", f"{self.max_viewers} viewers at most",
                            {"Retry-After": str(RETRY_AFTER_S)})
        viewer = WhepViewer(stream_id, self.fps)
        try:
            answer = await viewer.answer(offer)
        except WhipError:
            await viewer.close()
            raise
        except Exception as exc:
            await viewer.close()
            raise WhipError(400, "bad-sdp", f"cannot negotiate the offer: {exc}") from None
        self.viewers[viewer.session_id] = viewer

        @viewer.pc.on("connectionstatechange")
        async def _state() -> None:
            if viewer.pc.connectionState == "connected":
                viewer.connected.set()
            elif viewer.pc.connectionState in ("failed", "closed"):
                await self._drop(viewer.session_id)

        viewer.watchdog = asyncio.ensure_future(self._setup_watchdog(viewer))

        log.info("viewer %s watching stream %s", viewer.session_id[:6], stream_id)
        headers = {**self.checks.cors(), "Location": f"/whep/session/{viewer.session_id}",
                   "ETag": f'"{viewer.session_id[:8]}"', "Streamd-Stream-Id": stream_id}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def _setup_watchdog(self, viewer: WhepViewer) -> None:
        """Drop a viewer whose peer has not connected within the setup timeout (as WHIP's setup timeout does)."""
        try:
            await asyncio.wait_for(viewer.connected.wait(), self.setup_timeout_s)
        except TimeoutError:
            log.info("viewer %s: peer did not connect within %g s", viewer.session_id[:6], self.setup_timeout_s)
            await self._drop(viewer.session_id)

    async def delete(self, request: web.Request) -> web.Response:
        """End a viewer at its client's request."""
        self.checks.authorize(request, "view")
        if request.match_info["session"] not in self.viewers:
            raise WhipError(404, "session-not-found", "no such WHEP session")
        await self._drop(request.match_info["session"])
        return web.Response(status=200, headers=self.checks.cors())

    async def _drop(self, session_id: str) -> None:
        viewer = self.viewers.pop(session_id, None)
        if viewer is not None:
            await viewer.close()

    def offer_chunk(self, stream_id: str, frames: np.ndarray, pts_ns: list[int]) -> None:
        """Hand a generated chunk [F, H, W, 3] to the stream's viewers."""
        for viewer in self.viewers.values():
            if viewer.stream_id == stream_id:
                viewer.track.offer(frames, pts_ns)

    async def close_stream(self, stream_id: str) -> None:
        """End the viewers of a stream that ended."""
        for sid in [k for k, v in self.viewers.items() if v.stream_id == stream_id]:
            await self._drop(sid)

    async def close_all(self) -> None:
        """End every viewer, concurrently (shutdown)."""
        await asyncio.gather(*(self._drop(sid) for sid in list(self.viewers)))
