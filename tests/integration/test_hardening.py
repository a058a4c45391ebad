"""Issue 18, "Hardening from an adversarial probe": one regression test per item, on the real aiohttp surface
over loopback (tests/integration/http_app.py) with real aiortc peers where the item needs one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from streamd.config import HttpSettings
from streamd.e2e import LOOPBACK
from streamd.edges.webrtc import restrict_host_addresses

from .http_app import serve
from .test_http_edge import call, offer_sdp, problem, raw_exchange

restrict_host_addresses((LOOPBACK,))
SDP = {"Content-Type": "application/sdp"}
SDPFRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """No log record carries a traceback, and asyncio reported no unretrieved task exception."""
    assert not [r for r in caplog.records if r.exc_info is not None], caplog.text
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text, caplog.text


def test_issue18_3_whip_offer_without_fingerprint_is_400_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serve() as s:
            pc, offer = await offer_sdp()
            try:
                stripped = "".join(line for line in offer.splitlines(keepends=True)
                                   if not line.startswith("a=fingerprint"))
                status, headers, text = await call("POST", s.base + "/whip", stripped, SDP)
                assert status == 400 and problem(status, headers, text) == "bad-sdp", text
                assert "fingerprint" in text and not s.whip.sessions and not s.engine.streams
            finally:
                await pc.close()
            await asyncio.sleep(0.2)  # let any stray task finish and be collected
    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
        import gc
        gc.collect()  # "Task exception was never retrieved" is logged when the task is collected
    no_traceback(caplog)


async def whip_session(base: str) -> tuple[RTCPeerConnection, str, str]:
    """A real aiortc publisher's session: (peer connection, session URL, ETag)."""
    pc, offer = await offer_sdp()
    status, headers, text = await call("POST", base + "/whip", offer, SDP)
    assert status == 201, text
    return pc, base + headers["Location"], headers["ETag"]


def test_issue18_6_patch_with_unknown_mid_or_malformed_candidate_is_400_bad_sdpfrag() -> None:
    async def scenario() -> None:
        async with serve() as s:
            pc, url, etag = await whip_session(s.base)
            try:
                head = "a=ice-ufrag:{u}\r\na=ice-pwd:{p}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\n"
                ice = pc.localDescription.sdp
                ufrag = next(x.split(":", 1)[1] for x in ice.splitlines() if x.startswith("a=ice-ufrag:"))
                pwd = next(x.split(":", 1)[1] for x in ice.splitlines() if x.startswith("a=ice-pwd:"))
                head = head.format(u=ufrag, p=pwd)
                good = "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
                for body in (head + "a=mid:nope\r\n" + good,
                             head + "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 notaport typ host\r\n",
                             head + "a=mid:0\r\na=candidate:1 1 udp 1 example.com 5000 typ host\r\n",
                             head + "a=mid:0\r\na=candidate:garbage\r\n"):
                    status, headers, text = await call("PATCH", url, body, {**SDPFRAG, "If-Match": etag})
                    assert status == 400 and problem(status, headers, text) == "bad-sdpfrag", (body, text)
                status, _, text = await call("PATCH", url, head + "a=mid:0\r\n" + good, {**SDPFRAG, "If-Match": etag})
                assert status == 204, text
            finally:
                await pc.close()
    asyncio.run(scenario())


def test_issue18_7_whep_sendonly_offer_is_400_bad_sdp() -> None:
    async def scenario() -> None:
        async with serve() as s:
            pc, offer = await offer_sdp()  # a publisher's offer: its only video section is sendonly
            try:
                status, headers, text = await call("POST", s.base + "/whep", offer, SDP)
                assert status == 400 and problem(status, headers, text) == "bad-sdp", text
                assert "recvonly" in text
            finally:
                await pc.close()
    asyncio.run(scenario())


def test_issue18_8_error_details_and_log_never_quote_the_token(caplog: pytest.LogCaptureFixture) -> None:
    token = "s3cret-token-value"

    async def scenario() -> None:
        async with serve(HttpSettings(token=token)) as s:
            loop = asyncio.get_running_loop()
            for request in (
                # a control character in the Authorization header itself, and in a header after it
                f"POST /whip HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode(),
                f"GET /livez HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-A: a\x01b\r\n\r\n".encode(),
                f"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: {'y' * 4000}\x01 Bearer {token}\r\n\r\n".encode(),
            ):
                reply = await loop.run_in_executor(None, raw_exchange, s.port, request)
                assert b" 400 " in reply.split(b"\r\n", 1)[0], reply
                head, _, body = reply.partition(b"\r\n\r\n")
                assert token.encode() not in reply and b"bad-request" in body
                assert len(body) < 600  # the quoted part is bounded
    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert token not in caplog.text


def test_issue18_10_unknown_method_is_405_with_allow() -> None:
    async def scenario() -> None:
        async with serve() as s:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(None, raw_exchange, s.port,
                                               b"FOO /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, _, body = reply.partition(b"\r\n\r\n")
            assert b" 405 " in head.split(b"\r\n", 1)[0] and b"method-not-allowed" in body, reply
            allow = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"allow:"))
            assert b"GET" in allow and b"HEAD" in allow
            reply = await loop.run_in_executor(None, raw_exchange, s.port,
                                               b"FOO /whip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b" 405 " in reply.split(b"\r\n", 1)[0] and b"POST" in reply
            reply = await loop.run_in_executor(None, raw_exchange, s.port,
                                               b"FOO /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b" 404 " in reply.split(b"\r\n", 1)[0] and b"not-found" in reply
    asyncio.run(scenario())


async def live_publisher(s: object) -> RTCPeerConnection:
    """A real aiortc publisher, connected: its stream is live and can be watched."""
    from aiortc import RTCSessionDescription

    pc, offer = await offer_sdp()
    status, _, answer = await call("POST", s.base + "/whip", offer, SDP)  # type: ignore[attr-defined]
    assert status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    for _ in range(150):
        if s.whip.live_streams():  # type: ignore[attr-defined]
            return pc
        await asyncio.sleep(0.1)
    raise AssertionError("the publisher never connected")


def test_issue18_1_a_whep_viewer_that_never_connects_loses_its_slot_after_the_setup_timeout() -> None:
    async def scenario() -> None:
        async with serve(whep_setup_timeout_s=1.0) as s:
            publisher = await live_publisher(s)
            viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                # the viewer POSTs and vanishes: it never applies the answer, so it never connects
                status, _, text = await call("POST", s.base + "/whep", viewer.localDescription.sdp, SDP)
                assert status == 201, text
                assert len(s.whep.viewers) == 1
                await asyncio.sleep(2.0)
                assert not s.whep.viewers  # the slot is free again after the 1 s setup timeout
            finally:
                await viewer.close()
                await publisher.close()
    asyncio.run(scenario())


def test_issue18_1_the_whep_setup_timeout_is_a_setting_defaulting_to_15_s() -> None:
    from streamd.config import ServeConfig

    assert ServeConfig.load().webrtc.whep_setup_timeout_s == 15.0
    assert ServeConfig.load(env={"STREAMD_WEBRTC_WHEP_SETUP_TIMEOUT_S": "3"}).webrtc.whep_setup_timeout_s == 3.0


def test_issue18_4_11_real_daemon_representative_configs(tmp_path: Path) -> None:
    """Two representative examples of the config property test on a real daemon: a valid config file (with a
    world-readable token file: started, warned with the fix) and a non-finite number (refused at start, named)."""
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import start_daemon

    token = Path(tmp_path) / "http-token"
    token.write_text("a-long-enough-token\n")
    token.chmod(0o644)
    good = Path(tmp_path) / "good.toml"
    good.write_text(f'[http]\ntoken_file = "{token}"\nbody_timeout_s = 5.5\ncors_origin = "https://a.example"\n'
                    '[webrtc]\nwhep_setup_timeout_s = 3\n')
    d = start_daemon(Path(tmp_path), "--config", str(good))
    try:
        assert "chmod 600" in d.log() and str(token) in d.log()
    finally:
        d.kill()
    bad = Path(tmp_path) / "bad.toml"
    bad.write_text("[engine]\nmax_lead_s = nan\n")
    done = subprocess.run([sys.executable, "-m", "streamd.cli", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "engine.max_lead_s must be a finite number" in done.stderr + done.stdout
    assert str(bad) in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_issue18_9_mqtt_queue_overflow_logs_the_1st_2nd_4th_occurrence(caplog: pytest.LogCaptureFixture) -> None:
    """aiomqtt warns once per discarded command when its bounded queue is full; a client flooding commands must
    not flood the log: 300 discards give at most 9 lines (1st, 2nd, 4th, ..., 256th)."""
    import paho.mqtt.client as mqtt

    from streamd.edges.mqtt import MqttControl

    async def scenario() -> None:
        ctl = MqttControl(object(), LOOPBACK, 1883, "streamd/test")  # type: ignore[arg-type]
        client = ctl._client()  # private: the library's own client, as the daemon configures it
        while not client._queue.full():
            client._queue.put_nowait(object())  # type: ignore[arg-type]
        for _ in range(300):
            message = mqtt.MQTTMessage(mid=1, topic=b"streamd/test/cmd/reset")
            message.payload = b"{}"
            client._on_message(client._client, None, message)  # the library's receive callback

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert 1 <= len(full) <= 9, len(full)
    assert "256 times so far" in full[-1].getMessage()


def test_issue18_12_send_exits_non_zero_when_the_daemon_ends_its_session(
        capsys: pytest.CaptureFixture[str]) -> None:
    from streamd import cli

    async def scenario() -> int:
        async with serve() as s:
            sender = asyncio.ensure_future(asyncio.to_thread(
                cli.main, ["send", s.base + "/whip", "--seconds", "8", "--ice-address", LOOPBACK]))
            for _ in range(150):
                if s.whip.live_streams():
                    break
                await asyncio.sleep(0.1)
            (session,) = s.whip.sessions.values()
            await session.close("media-timeout")  # the daemon ends the session, as its media timeout does
            return await asyncio.wait_for(sender, 30)

    assert asyncio.run(scenario()) != 0
    err = capsys.readouterr().err
    assert "ended the session" in err
