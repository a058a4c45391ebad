"""`streamd send`: a WHIP client on aiortc that sends a synthetic test pattern or a video file."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaPlayer

from ..edges.webrtc import restrict_host_addresses
from ..media import synthetic_clip

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The WHIP server refused the session, the connection failed, or the daemon ended the session under us."""


class SessionEnded(SendError):
    """The daemon ended the session before the client did (media timeout, setup timeout, shutdown...): the peer
    connection closed or failed, or the session URL answered 404."""


class PatternTrack(VideoStreamTrack):
    """A live test pattern: a looping synthetic clip at `fps`, timestamped in real time."""

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15.0, seed: int = 0) -> None:
        super().__init__()
        self.frames = synthetic_clip(60, height, width, fps=fps, seed=seed).frames
        self.fps = fps
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = self.frames[self.sent % len(self.frames)]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = int(self.sent * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


@dataclass
class SendReport:
    """What a send session did."""

    status: int
    location: str | None
    stream_id: str | None
    connected: bool
    frames_sent: int
    seconds: float


async def send(
    url: str,
    token: str | None = None,
    source: str = "testsrc",
    seconds: float = 10.0,
    width: int = 320,
    height: int = 240,
    fps: float = 15.0,
    ice_addresses: tuple[str, ...] = (),
    connect_timeout_s: float = 15.0,
) -> SendReport:
    """Publish video to a WHIP endpoint for `seconds`, then DELETE the session."""
    restrict_host_addresses(ice_addresses)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player: MediaPlayer | None = None
    if source == "testsrc":
        track: VideoStreamTrack = PatternTrack(width, height, fps)
    else:
        if not Path(source).is_file():
            raise SendError(f"no video file at {source}")
        player = MediaPlayer(source)
        if player.video is None:
            raise SendError(f"{source} has no video")
        track = player.video  # type: ignore[assignment]
    pc.addTransceiver(track, direction="sendonly")
    connected = asyncio.Event()
    ended = asyncio.Event()  # the peer connection failed or closed while we were still sending

    @pc.on("connectionstatechange")
    async def _state() -> None:
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            ended.set()

    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    location: str | None = None
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise SendError(f"WHIP server answered {resp.status}: {body}")
                location = str(resp.url.join(aiohttp.client.URL(resp.headers["Location"])))
                stream_id = resp.headers.get("Streamd-Stream-Id")
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
            try:
                await asyncio.wait_for(connected.wait(), connect_timeout_s)
            except TimeoutError:
                raise SendError(f"no connection within {connect_timeout_s:g} s") from None
            log.info("sending to %s as stream %s", url, stream_id)
            try:
                await asyncio.wait_for(ended.wait(), seconds)
            except TimeoutError:
                pass  # sent for the whole time: the normal end
            else:
                raise SessionEnded(f"the daemon ended the session after {time.monotonic() - started:.1f} s: the "
                                   f"peer connection {pc.connectionState} (see the daemon's log for why, e.g. "
                                   "a media timeout)")
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.delete(location, headers=auth) as resp:
                text = await resp.text()
                if resp.status == 404:
                    raise SessionEnded("the daemon had already ended the session (404 on DELETE; e.g. a media "
                                       "timeout): the video sent last did not reach it")
                if resp.status != 200:
                    raise SendError(f"DELETE answered {resp.status}: {text[:200]}")
    finally:
        await pc.close()
        if player is not None and player.video is not None:
            player.video.stop()
    sent = track.sent if isinstance(track, PatternTrack) else -1
    return SendReport(201, location, stream_id, connected.is_set(), sent, time.monotonic() - started)
