"""`streamd serve` end to end: a real aiortc WHIP peer, a ZeroMQ subscriber in another process, every error."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import jsonschema
import zmq
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from multidict import CIMultiDict

from streamd.clients.send import PatternTrack, send
from streamd.e2e import LOOPBACK, http_get
from streamd.edges.webrtc import restrict_host_addresses
from streamd.model.presets import get_preset
from streamd.wire.schemas import load_schema

from .conftest import Daemon, start_daemon
from .subscriber import Subscriber

restrict_host_addresses((LOOPBACK,))


async def make_offer(kind: str = "video") -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PatternTrack() if kind == "video" else AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def request(method: str, url: str, body: str | bytes | None = None, headers: dict[str, str] | None = None):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=body, headers=headers or {}) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.text()


def error_code(text: str) -> str:
    body = json.loads(text)
    jsonschema.validate(body, load_schema("error"))
    return body["error"]


def test_whip_video_reaches_a_zmq_subscriber_in_another_process(daemon: Daemon) -> None:
    sub = Subscriber(daemon.zmq_endpoint, frames=40)
    report = asyncio.run(send(daemon.whip, seconds=6, ice_addresses=(LOOPBACK,)))
    assert report.connected and report.stream_id and report.stream_id.startswith("s-")
    messages = sub.results()
    headers = [m["header"] for m in messages if "header" in m]
    events = [m["event"] for m in messages if "event" in m]
    assert len(headers) == 40
    schema, event_schema = load_schema("frame-header"), load_schema("event")
    model = get_preset("tiny")  # the daemon's model: frames come at its working size
    for h in headers:
        jsonschema.validate(h, schema)
        assert h["stream"] == report.stream_id and h["format"] == "rgb24"
        assert (h["width"], h["height"]) == (model.width, model.height)
    assert [h["seq"] for h in headers] == list(range(40))
    assert all(m["payload_len"] == model.width * model.height * 3 for m in messages if "header" in m)
    assert headers[0]["source"] == "live" and headers[0]["chunk"] == 0
    pts = [h["pts_ns"] for h in headers]
    assert pts == sorted(pts) and pts[1] - pts[0] == round(1e9 / 15)
    assert any(h.get("latency_s") is not None for h in headers)
    started = [e for e in events if e["event"] == "session-started"]
    assert started and started[0]["stream"] == report.stream_id
    for e in events:
        jsonschema.validate(e, event_schema)
    assert daemon.metric("streamd_frames_received_total") > 10
    assert daemon.metric("streamd_frames_published_total") >= 40


def test_every_whip_error_status(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--max-streams", "1", token="s3cret-token")
    auth = {"Authorization": "Bearer s3cret-token", "Content-Type": "application/sdp"}

    async def scenario() -> None:
        pc, offer = await make_offer()
        audio_pc, audio_offer = await make_offer("audio")
        try:
            status, headers, text = await request("POST", d.whip, offer, {"Content-Type": "application/sdp"})
            assert status == 401 and error_code(text) == "unauthorized" and "Bearer" in headers["WWW-Authenticate"]
            status, _, text = await request("POST", d.whip, offer,
                                            {**auth, "Authorization": "Bearer wrong-token"})
            assert status == 401
            status, headers, text = await request("POST", d.whip, offer, {**auth, "Content-Type": "text/plain"})
            assert status == 415 and error_code(text) == "unsupported-media-type"
            assert headers["Accept-Post"] == "application/sdp"
            status, _, text = await request("POST", d.whip, "v=0\r\nthis is not sdp\r\n", auth)
            assert status == 400 and error_code(text) == "bad-sdp"
            status, _, text = await request("POST", d.whip, "hello", auth)
            assert status == 400 and error_code(text) == "bad-sdp"
            status, _, text = await request("POST", d.whip, audio_offer, auth)
            assert status == 422 and error_code(text) == "no-video"
            status, _, text = await request("POST", d.whip, "v=0\r\n" + "a=x\r\n" * 20000, auth)
            assert status == 413 and error_code(text) == "body-too-large"
            status, _, text = await request("POST", d.whip + "?stream=bad/id", offer, auth)
            assert status == 400 and error_code(text) == "bad-stream-id"
            status, headers, answer = await request("POST", d.whip + "?stream=cam1", offer, auth)
            assert status == 201 and headers["Streamd-Stream-Id"] == "cam1"
            location, etag = d.base + headers["Location"], headers["ETag"]
            assert "a=setup:passive" in answer
            pc2, offer2 = await make_offer()
            status, _, text = await request("POST", d.whip + "?stream=cam1", offer2, auth)
            assert status == 409 and error_code(text) == "stream-in-use"
            status, headers, text = await request("POST", d.whip, offer2, auth)
            assert status == 503 and error_code(text) == "at-capacity" and headers["Retry-After"] == "5"
            await pc2.close()
            frag = {**auth, "Content-Type": "application/trickle-ice-sdpfrag"}
            body = "a=ice-ufrag:x\r\na=ice-pwd:y\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n"
            status, _, text = await request("PATCH", location, body, frag)
            assert status == 428 and error_code(text) == "if-match-required"
            status, _, text = await request("PATCH", location, body, {**frag, "If-Match": '"nope"'})
            assert status == 412 and error_code(text) == "etag-mismatch"
            status, _, text = await request("PATCH", location, body, {**frag, "If-Match": "*"})
            assert status == 422 and error_code(text) == "ice-restart-unsupported"
            status, _, text = await request("PATCH", location, body, {**auth, "If-Match": etag})
            assert status == 415
            status, _, text = await request("PATCH", location, "garbage line", {**frag, "If-Match": etag})
            assert status == 400 and error_code(text) == "bad-sdpfrag"
            status, _, text = await request("PATCH", d.whip + "/unknown", body, {**frag, "If-Match": etag})
            assert status == 404 and error_code(text) == "session-not-found"
            status, headers, _ = await request("OPTIONS", d.whip)
            assert status == 204 and headers["Accept-Post"] == "application/sdp"
            assert "POST" in headers["Access-Control-Allow-Methods"]
            status, _, _ = await request("DELETE", location)
            assert status == 401
            status, _, _ = await request("DELETE", location, headers=auth)
            assert status == 200
            status, _, text = await request("DELETE", location, headers=auth)
            assert status == 404 and error_code(text) == "session-not-found"
            # the daemon kept serving: a new session is accepted
            pc3, offer3 = await make_offer()
            status, _, _ = await request("POST", d.whip, offer3, auth)
            assert status == 201
            await pc3.close()
        finally:
            await pc.close()
            await audio_pc.close()

    try:
        asyncio.run(scenario())
        assert http_get(f"{d.base}/livez")[0] == 200 and http_get(f"{d.base}/readyz")[0] == 200
        assert d.proc.poll() is None
    finally:
        d.proc.kill()


def test_client_that_vanishes_is_cleaned_up(daemon: Daemon, tmp_path: Path) -> None:
    sub = Subscriber(daemon.zmq_endpoint, frames=10_000, timeout=40)
    client = subprocess.Popen([sys.executable, "-m", "streamd.cli", "send", daemon.whip, "--seconds", "60",
                               "--ice-address", LOOPBACK], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while daemon.metric("streamd_streams_live") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.metric("streamd_streams_live") == 1
    time.sleep(1.5)
    client.kill()  # no DELETE, no DTLS close: only the media timeout can notice
    client.wait()
    deadline = time.monotonic() + 20
    while daemon.metric("streamd_streams_live") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.metric("streamd_streams_live") == 0
    # a client that POSTs and never connects is dropped by the setup timeout
    async def ghost() -> int:
        pc, offer = await make_offer()
        status, _, _ = await request("POST", daemon.whip, offer, {"Content-Type": "application/sdp"})
        await pc.close()  # closed before ICE: the daemon never hears from it
        return status

    assert asyncio.run(ghost()) == 201
    time.sleep(8)
    sub.proc.terminate()
    out, _ = sub.proc.communicate(timeout=10)
    ended = [json.loads(line)["event"] for line in out.splitlines() if '"event"' in line]
    assert any(e["event"] == "session-ended" and e["reason"] == "media-timeout" for e in ended), ended
    assert "setup-timeout" in daemon.log()
    assert daemon.proc.poll() is None


def test_two_concurrent_sessions_both_stream(daemon: Daemon) -> None:
    sub = Subscriber(daemon.zmq_endpoint, frames=120, timeout=60)

    async def both():
        return await asyncio.gather(send(daemon.whip, seconds=8, ice_addresses=(LOOPBACK,)),
                                    send(daemon.whip, seconds=8, ice_addresses=(LOOPBACK,), width=200, height=150))

    a, b = asyncio.run(both())
    headers = [m["header"] for m in sub.results() if "header" in m]
    streams = {h["stream"] for h in headers}
    assert {a.stream_id, b.stream_id} <= streams
    for sid in (a.stream_id, b.stream_id):
        seqs = [h["seq"] for h in headers if h["stream"] == sid]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) >= 16


def test_subscriber_that_never_reads_does_not_stall_generation(daemon: Daemon) -> None:
    ctx = zmq.Context()
    lazy = ctx.socket(zmq.SUB)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.SUBSCRIBE, b"")
    lazy.connect(daemon.zmq_endpoint)
    time.sleep(0.3)
    try:
        sub = Subscriber(daemon.zmq_endpoint, frames=200, timeout=60)
        deadline = time.monotonic() + 5
        while daemon.metric("streamd_zmq_subscribers") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        # the lazy socket (1 subscription) and the reading one (frames/ and events) are both registered
        assert daemon.metric("streamd_zmq_subscribers") == 3
        report = asyncio.run(send(daemon.whip, seconds=10, ice_addresses=(LOOPBACK,)))
        headers = [m["header"] for m in sub.results() if "header" in m]
        assert report.connected and len(headers) >= 100
        generated = daemon.metric("streamd_frames_generated_total")
        assert generated >= len(headers)
    finally:
        lazy.close(linger=0)
        ctx.term()


def test_sigterm_stops_cleanly(daemon: Daemon) -> None:
    sub = Subscriber(daemon.zmq_endpoint, frames=10_000, timeout=30)

    async def stream_until_stopped() -> None:
        task = asyncio.ensure_future(send(daemon.whip, seconds=30, ice_addresses=(LOOPBACK,)))
        deadline = time.monotonic() + 30
        while daemon.metric("streamd_frames_published_total") < 16 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(daemon.proc.wait, 20)
        assert code == 0 and time.monotonic() - started < 20
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(stream_until_stopped())
    sub.proc.terminate()
    out, _ = sub.proc.communicate(timeout=10)
    ended = [json.loads(line)["event"] for line in out.splitlines() if '"event"' in line]
    assert any(e["event"] == "session-ended" and e["reason"] == "shutdown" for e in ended), ended
    log = daemon.log()
    assert "stopped" in log and "Traceback" not in log
