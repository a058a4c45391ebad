"""WHEP egress: play a stream's generated video to a WebRTC viewer (browser, OBS, GStreamer).

Generated chunks arrive in bursts (16 frames at once); each viewer's track releases them at the model's frame rate
from their presentation timestamps, so playback is smooth and correctly timed. Bounds: at most
`VIEWER_QUEUE_FRAMES` frames wait per viewer (oldest dropped), at most `max_viewers` viewers.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

from .webrtc import WhipError, new_session_id

log = logging.getLogger(__name__)

VIEWER_QUEUE_FRAMES = 64  # about 4 s at 15 fps: a viewer further behind loses its oldest frames
VIDEO_CLOCK = 90_000  # RTP video clock rate


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
            self.track.stop()
            await self.pc.close()
