"""`streamd serve` secure by default: refusals at start, the opt-out warning, token sources, backoff and the
slowloris figures, each against a real daemon process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from streamd.e2e import LOOPBACK, free_port, http_get
from streamd.edges.auth import FAILURES_BEFORE_BACKOFF
from streamd.edges.mqtt import MqttControl
from streamd.wire.schemas import load_schema

from .conftest import TEST_ENV, start_daemon

TOKEN = "daemon-test-token"


def serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `streamd serve` expecting it to refuse to start; its output."""
    proc = subprocess.run([sys.executable, "-m", "streamd.cli", "serve", "--model", "tiny", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **TEST_ENV, **(env or {})})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stderr


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--http", "0.0.0.0:8787"), {}, "http.host '0.0.0.0' is not a loopback address and no token is set"),
    (("--zmq", "tcp://0.0.0.0:0"), {}, "zmq.endpoint 'tcp://0.0.0.0:0' is not on a loopback address and CURVE is off"),
    (("--mqtt", "192.0.2.1:1883"), {}, "mqtt.broker '192.0.2.1:1883' is not on a loopback address and the "
                                       "connection has no TLS"),
    (("--token-file", "/nonexistent/token"), {}, "http.token_file: cannot read /nonexistent/token"),
    ((), {"STREAMD_HTTP_TOKEN": "short"}, "http.token must be at least 8 characters"),
])
def test_refusals_at_start(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    err = serve_fails(*args, env=env)
    assert message in err, err
    if "loopback" in message:  # a refusal names the fix, and the opt-out
        assert "allow_unauthenticated = true" in err, err
    assert "Traceback" not in err


def test_opt_out_warning_off_loopback(tmp_path: Path) -> None:
    """The opt-out, with the daemon really bound to all addresses: warned at start, listed in /api/status."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamd.cli", "serve", "--model", "tiny", "--http",
                                 f"0.0.0.0:{port}", "--zmq", f"tcp://{LOOPBACK}:{free_port()}", "--ice-address",
                                 LOOPBACK], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **TEST_ENV, "STREAMD_HTTP_ALLOW_UNAUTHENTICATED": "true"})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if http_get(f"http://{LOOPBACK}:{port}/readyz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        text = log.read_text()
        assert f"http 0.0.0.0:{port} is reachable off loopback without authentication " \
               "(http.allow_unauthenticated = true)" in text
        status, body = get(f"http://{LOOPBACK}:{port}/api/status")
        assert status == 200 and json.loads(body)["unauthenticated"] == ["http"]
    finally:
        proc.kill()
        proc.wait()


def test_mqtt_status_lists_the_opt_outs() -> None:
    class Controller:
        def status(self) -> dict:
            return {"streams": [], "model": "tiny", "version": "x", "unauthenticated": ["zmq"]}

    control = MqttControl(Controller(), "127.0.0.1", 1883, "streamd/t")  # type: ignore[arg-type]
    status = control._status("online")  # noqa: SLF001
    assert status["unauthenticated"] == ["zmq"]
    jsonschema.validate(status, load_schema("mqtt-status"))


def test_token_sources_reach_the_daemon(tmp_path: Path) -> None:
    """A token from a file and from a systemd credential folder; the command line holds neither."""
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-token").write_text("credential-token")
    (creds / "http-view-token").write_text("credential-view")
    d = start_daemon(tmp_path, "--token-file", str(file))
    try:
        assert get(f"{d.base}/api/status")[0] == 401
        assert get(f"{d.base}/api/status", TOKEN)[0] == 200
        assert TOKEN not in " ".join(d.args)
    finally:
        d.kill()
    d = start_daemon(tmp_path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    try:
        assert get(f"{d.base}/api/status", "credential-token")[0] == 200
        assert get(f"{d.base}/api/status", "credential-view")[0] == 200
        req = urllib.request.Request(f"{d.base}/api/cmd/reset", data=b"{}", method="POST", headers={
            "Authorization": "Bearer credential-view", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 403 and json.loads(info.value.read())["error"] == "forbidden"
    finally:
        d.kill()


def test_backoff_against_the_daemon(tmp_path: Path) -> None:
    import asyncio

    import aiohttp

    d = start_daemon(tmp_path, token=TOKEN)

    async def scenario() -> None:
        async def status(token: str, local: str) -> tuple[int, dict]:
            connector = aiohttp.TCPConnector(local_addr=(local, 0))
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.get(f"{d.base}/api/status", headers={"Authorization": f"Bearer {token}"}) as r:
                    return r.status, dict(r.headers)

        started = time.monotonic()
        for _ in range(FAILURES_BEFORE_BACKOFF):
            assert (await status("wrong-token", "127.0.0.7"))[0] == 401
        code, headers = await status(TOKEN, "127.0.0.7")
        assert code == 429 and int(headers["Retry-After"]) >= 1
        code, _ = await status(TOKEN, "127.0.0.8")
        assert code == 200 and time.monotonic() - started < 5

    try:
        asyncio.run(scenario())
        assert d.metric("streamd_http_auth_failures_total") == FAILURES_BEFORE_BACKOFF
        assert d.metric("streamd_http_auth_throttled_total") == 1
    finally:
        d.kill()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slowloris_is_cut_off_and_descriptors_return(tmp_path: Path) -> None:
    """300 half-open POSTs, one header line every half second: cut off within the header timeout (4 s here), at
    most `max_connections` held at once, and the daemon's descriptors back at their baseline."""
    d = start_daemon(tmp_path, env={"STREAMD_HTTP_HEADER_TIMEOUT_S": "4", "STREAMD_HTTP_MAX_CONNECTIONS": "256",
                                    "STREAMD_HTTP_MAX_CONNECTIONS_PER_CLIENT": "32"})
    try:
        time.sleep(1)
        before = open_fds(d.proc.pid)
        socks = []
        started = time.monotonic()
        for i in range(300):  # from 10 loopback addresses, so the total bound is exercised too
            s = socket.create_connection((LOOPBACK, d.http_port), timeout=5,
                                         source_address=(f"127.0.1.{i % 10 + 1}", 0))
            s.setblocking(False)
            socks.append(s)
            try:
                s.send(b"POST /whip HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
        time.sleep(1)  # every connection accepted (or refused), none timed out yet
        during = open_fds(d.proc.pid)
        # keep dribbling headers; every connection must be closed by the daemon
        closed_at: dict[int, float] = {}
        while len(closed_at) < len(socks) and time.monotonic() - started < 20:
            for n, s in enumerate(socks):
                if n in closed_at:
                    continue
                try:
                    s.send(b"X-Slow: 1\r\n")
                    data = s.recv(4096)
                    if data == b"" or data.startswith(b"HTTP/1.1 "):
                        closed_at[n] = time.monotonic() - started
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[n] = time.monotonic() - started
            time.sleep(0.5)
        for s in socks:
            s.close()
        time.sleep(1)
        after = open_fds(d.proc.pid)
        print(f"slowloris: fds before {before}, during {during}, after {after}; all 300 cut within "
              f"{max(closed_at.values()):.1f} s")
        assert len(closed_at) == 300
        assert max(closed_at.values()) < 4 + 4  # the header timeout, connecting 300, and polling slack
        assert 200 <= during - before <= 256 + 5  # held, but never more than max_connections
        assert after <= before + 2
        assert d.metric("streamd_http_header_timeouts_total") >= 1
        assert get(f"{d.base}/livez")[0] == 200
    finally:
        d.kill()
