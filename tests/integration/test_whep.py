"""WHEP playback end to end: a real aiortc viewer watches the generated video of a live WHIP stream; every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import jsonschema
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from multidict import CIMultiDictProxy

from streamd.clients.send import send
from streamd.e2e import LOOPBACK
from streamd.edges.webrtc import restrict_host_addresses
from streamd.model.presets import get_preset
from streamd.wire.schemas import load_schema

from .conftest import Daemon, start_daemon

restrict_host_addresses((LOOPBACK,))
TOKEN = "whep-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDP = {"Content-Type": "application/sdp"}


async def request(method: str, url: str, body: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, CIMultiDictProxy[str], str]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=body, headers=headers or {}) as resp:
            return resp.status, resp.headers, await resp.text()


def error_code(text: str) -> str:
    body = json.loads(text)
    jsonschema.validate(body, load_schema("error"))
    return str(body["error"])


async def viewer_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def wait_live(daemon: Daemon, timeout: float = 30.0) -> str:
    """The id of the one stream, once its publisher has connected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await asyncio.to_thread(daemon.metric, "streamd_streams_live") < 1:
        assert loop.time() < deadline, "no stream went live"
        await asyncio.sleep(0.2)
    status, _, text = await request("GET", f"{daemon.base}/api/status", headers=AUTH)
    assert status == 200
    (stream,) = json.loads(text)["streams"]
    return str(stream)


def test_viewer_plays_the_generated_stream_and_every_refusal(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--max-streams", "1", token=TOKEN)
    model = get_preset("tiny")

    async def scenario() -> None:
        pc, offer = await viewer_offer()
        try:
            status, headers, _ = await request("OPTIONS", f"{d.base}/whep")
            assert status == 204 and headers["Accept-Post"] == "application/sdp"
            assert headers["Access-Control-Allow-Methods"] == "OPTIONS, POST"
            status, headers, text = await request("POST", f"{d.base}/whep", offer, SDP)
            assert status == 401 and error_code(text) == "unauthorized" and "Bearer" in headers["WWW-Authenticate"]
            status, headers, text = await request("POST", f"{d.base}/whep", offer,
                                                  {**AUTH, "Content-Type": "text/plain"})
            assert status == 415 and error_code(text) == "unsupported-media-type"
            assert headers["Accept-Post"] == "application/sdp"
            status, _, text = await request("POST", f"{d.base}/whep", "hello", {**AUTH, **SDP})
            assert status == 400 and error_code(text) == "bad-sdp"
            status, _, text = await request("POST", f"{d.base}/whep", offer, {**AUTH, **SDP})
            assert status == 404 and error_code(text) == "not-found"  # nothing is live yet

            sender = asyncio.ensure_future(send(d.whip, token=TOKEN, seconds=12, ice_addresses=(LOOPBACK,)))
            stream = await wait_live(d)
            status, _, text = await request("POST", f"{d.base}/whep/not-a-stream", offer, {**AUTH, **SDP})
            assert status == 404 and error_code(text) == "not-found"

            frames: asyncio.Queue[tuple[int, int]] = asyncio.Queue(maxsize=64)

            @pc.on("track")
            def on_track(track: object) -> None:
                async def read() -> None:
                    with contextlib.suppress(MediaStreamError):  # the connection closed: the track ends
                        while True:
                            frame = await track.recv()  # type: ignore[attr-defined]
                            if not frames.full():
                                frames.put_nowait((frame.height, frame.width))

                asyncio.ensure_future(read())

            status, headers, answer = await request("POST", f"{d.base}/whep/{stream}", offer, {**AUTH, **SDP})
            assert status == 201, answer
            assert headers["Streamd-Stream-Id"] == stream and headers["Location"].startswith("/whep/session/")
            assert headers["Access-Control-Allow-Origin"] == "*" and "a=setup:passive" in answer
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            for _ in range(5):  # generated frames arrive, at the model's working size
                assert await asyncio.wait_for(frames.get(), 30) == (model.height, model.width)

            location = d.base + headers["Location"]
            status, _, _ = await request("DELETE", location)
            assert status == 401
            status, headers, _ = await request("DELETE", location, headers=AUTH)
            assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
            status, _, text = await request("DELETE", location, headers=AUTH)
            assert status == 404 and error_code(text) == "session-not-found"
            report = await sender
            assert report.connected and report.stream_id == stream
        finally:
            await pc.close()

    try:
        asyncio.run(scenario())
        assert d.proc.poll() is None and "Traceback" not in d.log()
    finally:
        d.kill()
