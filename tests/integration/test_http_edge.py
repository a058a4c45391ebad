"""The HTTP edge's error path, roles, backoff and connection bounds, on the real aiohttp surface over loopback.

Each of the defects reported in issue 11 has a regression test here (numbered as in the issue), as do the
examples the fuzz suite (test_http_fuzz.py) minimised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from multidict import CIMultiDict

from streamd.clients.send import PatternTrack
from streamd.config import HttpSettings
from streamd.e2e import LOOPBACK
from streamd.edges.auth import FAILURES_BEFORE_BACKOFF
from streamd.edges.webrtc import restrict_host_addresses
from streamd.wire.schemas import load_schema

from .http_app import serve

restrict_host_addresses((LOOPBACK,))
HTTP_MD = Path(__file__).resolve().parents[2] / "protocols" / "http.md"
ERROR_SCHEMA = load_schema("error")
TOKENS = {"ingest_token": "ingest-token-1", "view_token": "view-token-22", "control_token": "control-token-333"}


async def offer_sdp() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def call(method: str, url: str, body: str | bytes | None = None, headers: dict[str, str] | None = None,
               local: str | None = None) -> tuple[int, CIMultiDict, str]:
    connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.request(method, url, data=body, headers=headers or {}) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.text()


def problem(status: int, headers: CIMultiDict, text: str) -> str:
    """The error code of a JSON error response, after checking it against the spec's schema and status."""
    assert headers["Content-Type"].startswith("application/problem+json"), (status, headers, text)
    body = json.loads(text)
    jsonschema.validate(body, ERROR_SCHEMA)
    assert body["status"] == status
    return body["error"]


def raw_exchange(port: int, data: bytes, wait_s: float = 2.0) -> bytes:
    """Send raw bytes and read until the daemon closes the connection (or `wait_s`)."""
    with socket.create_connection((LOOPBACK, port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


# ------------------------------------------------------------------------------------------ issue 11 defects
def test_1_wrong_method_on_whip_is_405_with_allow_and_json() -> None:
    async def scenario() -> None:
        async with serve() as s:
            for method in ("GET", "PUT", "HEAD"):
                status, headers, text = await call(method, s.base + "/whip")
                assert status == 405 and "POST" in headers["Allow"]
                if method != "HEAD":
                    assert problem(status, headers, text) == "method-not-allowed"
    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["/static/", "/static", "/static/..%2f..%2fapp.py", "/static/../edges/http.py",
                                  "/static/%2e%2e/%2e%2e/config.py", "/whep/..%2f..%2fwhip", "/whip/..%2f..",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/static/nope.js", "/a" * 2000])
def test_2_aiohttp_refusals_are_json_never_500(path: str) -> None:
    async def scenario() -> None:
        async with serve() as s:
            status, headers, text = await call("GET", s.base + path)
            assert status in (404, 405), (status, text)
            assert problem(status, headers, text) in ("not-found", "method-not-allowed")
    asyncio.run(scenario())


def test_3_non_ascii_authorization_is_401_and_one_quiet_line(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(token="s3cret-token")) as s:
            for _ in range(3):
                # raw bytes: aiohttp's client would refuse to send them, a hostile client does not care
                reply = await asyncio.get_running_loop().run_in_executor(None, raw_exchange, s.port, (
                    b"POST /whip HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\xe9cret\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"))
                assert reply.startswith(b"HTTP/1.1 401"), reply
                assert b'error="invalid_token"' in reply
    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_4_concurrent_posts_for_one_stream_id_give_one_201_and_409s() -> None:
    async def scenario() -> None:
        async with serve(open_delay_s=0.3) as s:
            peers = [await offer_sdp() for _ in range(4)]
            try:
                results = await asyncio.gather(*(call("POST", s.base + "/whip?stream=dup", sdp,
                                                      {"Content-Type": "application/sdp"}) for _, sdp in peers))
            finally:
                await asyncio.gather(*(pc.close() for pc, _ in peers))
            statuses = sorted(r[0] for r in results)
            assert statuses == [201, 409, 409, 409], statuses
            for status, headers, text in results:
                if status == 409:
                    assert problem(status, headers, text) == "stream-in-use"
    asyncio.run(scenario())


def test_5_wrong_token_challenge_says_invalid_token() -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(token="s3cret-token")) as s:
            status, headers, text = await call("POST", s.base + "/whip", "v=0", {"Content-Type": "application/sdp"})
            assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="streamd"'
            status, headers, text = await call("POST", s.base + "/whip", "v=0", {
                "Content-Type": "application/sdp", "Authorization": "Bearer wrong-token"})
            assert status == 401 and problem(status, headers, text) == "unauthorized"
            assert headers["WWW-Authenticate"] == 'Bearer realm="streamd", error="invalid_token"'
    asyncio.run(scenario())


def test_6_slow_headers_are_cut_off_within_the_header_timeout() -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(header_timeout_s=1.0)) as s:
            loop = asyncio.get_running_loop()

            def slowloris() -> tuple[float, bytes]:
                started = time.monotonic()
                with socket.create_connection((LOOPBACK, s.port), timeout=5) as sock:
                    sock.sendall(b"POST /whip HTTP/1.1\r\nHost: x\r\n")
                    got = b""
                    for i in range(50):
                        sock.settimeout(0.2)
                        try:  # read first: the 408 is read before a further send can provoke a reset
                            chunk = sock.recv(4096)
                        except TimeoutError:
                            chunk = None
                        except OSError:  # reset: the daemon closed while a header line was in flight
                            break
                        if chunk == b"":
                            break
                        got += chunk or b""
                        try:
                            sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                        except OSError:
                            break
                return time.monotonic() - started, got

            elapsed, got = await loop.run_in_executor(None, slowloris)
            # the 408 itself can be lost to a TCP reset when a header line crosses it; the counter cannot
            assert elapsed < 2.5 and s.runner.bounds.timed_out == 1
            assert got == b"" or (got.startswith(b"HTTP/1.1 408") and b"request-timeout" in got)
            # a connection that never sends a byte is cut too
            elapsed, got = await loop.run_in_executor(None, lambda: (time.monotonic(), raw_exchange(s.port, b"", 4)))
            assert got.startswith(b"HTTP/1.1 408")
            assert s.runner.bounds.timed_out == 2 and s.runner.bounds.total == 0
            # an ordinary request on a kept-alive connection is not cut between requests
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    async with http.get(s.base + "/livez") as resp:
                        assert resp.status == 200
                    await asyncio.sleep(0.6)
    asyncio.run(scenario())


def test_connection_limits_answer_503_and_recover() -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(max_connections=6, max_connections_per_client=3, header_timeout_s=3)) as s:
            loop = asyncio.get_running_loop()

            def hold(n: int, local: str) -> list[socket.socket]:
                socks = []
                for _ in range(n):
                    sock = socket.create_connection((LOOPBACK, s.port), source_address=(local, 0))
                    socks.append(sock)
                return socks

            held = await loop.run_in_executor(None, hold, 3, "127.0.0.1")
            await asyncio.sleep(0.2)
            reply = await loop.run_in_executor(None, raw_exchange, s.port, b"GET /livez HTTP/1.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 503") and b"at-capacity" in reply and b"Retry-After: 5" in reply
            # another address still gets in, until the total is reached
            status, _, _ = await call("GET", s.base + "/livez", local="127.0.0.2")
            assert status == 200
            held += await loop.run_in_executor(None, hold, 3, "127.0.0.3")
            await asyncio.sleep(0.2)
            status, headers, text = await call("GET", s.base + "/livez", local="127.0.0.4")
            assert status == 503 and problem(status, headers, text) == "at-capacity"
            assert s.runner.bounds.refused == 2
            for sock in held:
                sock.close()
            await asyncio.sleep(0.3)
            assert s.runner.bounds.total == 0 and not s.runner.bounds.per_client
            assert (await call("GET", s.base + "/livez"))[0] == 200
    asyncio.run(scenario())


def test_slow_body_is_408() -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(body_timeout_s=1.0)) as s:
            loop = asyncio.get_running_loop()

            def slow_body() -> bytes:
                with socket.create_connection((LOOPBACK, s.port), timeout=5) as sock:
                    sock.sendall(b"POST /whip HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                                 b"Content-Length: 100\r\n\r\nv=0\r\n")
                    got = b""
                    while chunk := sock.recv(4096):
                        got += chunk
                    return got

            got = await loop.run_in_executor(None, slow_body)
            assert got.startswith(b"HTTP/1.1 408") and b"request-timeout" in got
    asyncio.run(scenario())


def test_unparseable_requests_get_the_json_400() -> None:
    async def scenario() -> None:
        async with serve() as s:
            loop = asyncio.get_running_loop()
            for data in (b"GARBAGE\r\n\r\n", b"GET /livez HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
                         b"GET /livez HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
                         b"POST /whip HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                         b"GET /\x00 HTTP/1.1\r\n\r\n"):
                reply = await loop.run_in_executor(None, raw_exchange, s.port, data)
                head, _, body = reply.partition(b"\r\n\r\n")
                assert re.match(rb"HTTP/1\.[01] 400 ", head), reply[:200]
                jsonschema.validate(json.loads(body), ERROR_SCHEMA)
    asyncio.run(scenario())


def test_broken_chunked_body_is_400_at_once() -> None:
    # found while hunting: a bad chunk size after the handler started reading left it waiting for the body timeout
    async def scenario() -> None:
        async with serve() as s:
            def broken() -> tuple[float, bytes]:
                with socket.create_connection((LOOPBACK, s.port), timeout=5) as sock:
                    sock.sendall(b"POST /whip HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    time.sleep(0.3)
                    started = time.monotonic()
                    sock.sendall(b"5\r\nv=0\r\n\r\nzz\r\n")
                    got = b""
                    while chunk := sock.recv(4096):
                        got += chunk
                    return time.monotonic() - started, got

            elapsed, got = await asyncio.get_running_loop().run_in_executor(None, broken)
            assert elapsed < 1.0 and got.startswith(b"HTTP/1.1 400") and b'"bad-request"' in got
    asyncio.run(scenario())


def test_a_bug_is_a_json_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serve() as s:
            for _ in range(4):
                status, headers, text = await call("POST", s.base + "/api/cmd/boom", b"{}",
                                                   {"Content-Type": "application/json"})
                assert status == 500 and problem(status, headers, text) == "internal"
                assert "Traceback" not in text and "/" not in json.loads(text)["detail"]
    with caplog.at_level(logging.INFO, logger="streamd"):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # the 1st, 2nd and 4th occurrence (issue 18.9: a client repeating a failing request cannot flood the log)
    assert len(errors) == 3 and all(r.exc_info is None for r in errors)
    assert "RuntimeError" in errors[0].getMessage() and "http_app.py" in errors[0].getMessage()


def test_command_refusal_is_the_reply_and_an_error_body() -> None:
    async def scenario() -> None:
        async with serve() as s:
            status, headers, text = await call("POST", s.base + "/api/cmd/nope", b"{}",
                                               {"Content-Type": "application/json"})
            assert status == 404 and problem(status, headers, text) == "unknown-verb"
            jsonschema.validate(json.loads(text), load_schema("mqtt-reply"))
            status, headers, text = await call("POST", s.base + "/api/cmd/reset", b"{}", {"Content-Type": "text/plain"})
            assert status == 415 and problem(status, headers, text) == "unsupported-media-type"
    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ fuzz regressions
# Minimised examples from test_http_fuzz.py (each once answered 500 or a body that was not the JSON error).
@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    # aiohttp runs the Expect handler before any middleware: its 417 was plain text
    (b"POST /whip?stream=cam1 HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: teapot\r\nContent-Length: 0\r\n"
     b"Connection: close\r\n\r\n", 417, "expectation-failed"),
    # a static path with a component longer than the file system allows: OSError (ENAMETOOLONG) -> 500
    (b"GET /static/app.js/" + b"a" * 300 + b"?stream=cam1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
     b"Connection: close\r\n\r\n", 404, "not-found"),
    # a NUL byte in a static path: ValueError (embedded null byte) -> 500
    (b"GET /static/app.js/%00?stream=cam1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
     b"Connection: close\r\n\r\n", 404, "not-found"),
    (b"GET /static/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not-found"),
])
def test_fuzz_regressions_errors(request_bytes: bytes, status: int, code: str) -> None:
    async def scenario() -> None:
        async with serve() as s:
            reply = await asyncio.get_running_loop().run_in_executor(None, raw_exchange, s.port, request_bytes)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), reply[:300]
            assert b"application/problem+json" in head
            payload = json.loads(body)
            jsonschema.validate(payload, ERROR_SCHEMA)
            assert payload["error"] == code and payload["status"] == status
    asyncio.run(scenario())


def test_fuzz_regression_page_ignores_conditional_and_range_headers() -> None:
    # FileResponse answered If-Match: "nope" with an empty 412 (and Range with 206/416); the page is served whole
    async def scenario() -> None:
        async with serve() as s:
            for path in ("/?stream=cam1", "/static/app.js"):
                for header in ({"If-Match": '"nope"'}, {"Range": "bytes=999999-"}, {"If-None-Match": "*"},
                               {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}):
                    status, _, text = await call("GET", s.base + path, headers=header)
                    assert status == 200 and text, (path, header, status)
    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ roles and backoff
# every authenticated door: (method, path, role); bodies are minimal, enough to get past the token check
DOORS = [
    ("POST", "/whip", "ingest"), ("PATCH", "/whip/unknown-session", "ingest"), ("DELETE", "/whip/unknown", "ingest"),
    ("POST", "/whep", "view"), ("POST", "/whep/cam1", "view"), ("DELETE", "/whep/session/unknown", "view"),
    ("GET", "/api/status", "view"), ("POST", "/api/cmd/reset", "control"),
]


def test_role_separation_on_every_door() -> None:
    tokens = {"ingest": TOKENS["ingest_token"], "view": TOKENS["view_token"], "control": TOKENS["control_token"],
              "all": "one-for-everything"}
    opens = {"ingest": {"ingest", "all"}, "view": {"view", "control", "all"}, "control": {"control", "all"}}

    async def scenario() -> None:
        async with serve(HttpSettings(token="one-for-everything", **TOKENS)) as s:
            for method, path, role in DOORS:
                status, headers, text = await call(method, s.base + path, b"{}")
                assert status == 401 and problem(status, headers, text) == "unauthorized", (method, path)
                for holder, token in tokens.items():
                    status, headers, text = await call(method, s.base + path, b"{}",
                                                       {"Authorization": f"Bearer {token}"})
                    if holder in opens[role]:
                        assert status not in (401, 403, 429), (method, path, holder, status)
                    else:
                        assert status == 403 and problem(status, headers, text) == "forbidden", (method, path, holder)
                        assert f'scope="{role}"' in headers["WWW-Authenticate"]
            # OPTIONS never needs a token
            for path in ("/whip", "/whip/x", "/whep", "/whep/cam1", "/whep/session/x"):
                assert (await call("OPTIONS", s.base + path))[0] == 204, path
    asyncio.run(scenario())


def test_backoff_429_for_one_address_while_another_is_served_at_once() -> None:
    async def scenario() -> None:
        async with serve(HttpSettings(token="the-right-token")) as s:
            wrong = {"Authorization": "Bearer not-the-token"}
            right = {"Authorization": "Bearer the-right-token"}
            for _ in range(FAILURES_BEFORE_BACKOFF):
                assert (await call("GET", s.base + "/api/status", headers=wrong, local="127.0.0.5"))[0] == 401
            status, headers, text = await call("GET", s.base + "/api/status", headers=right, local="127.0.0.5")
            assert status == 429 and problem(status, headers, text) == "too-many-requests"
            assert int(headers["Retry-After"]) >= 1
            started = time.monotonic()
            status, _, _ = await call("GET", s.base + "/api/status", headers=right, local="127.0.0.6")
            assert status == 200 and time.monotonic() - started < 0.5
            # every door is closed to the blocked address, WHIP included
            status, headers, text = await call("POST", s.base + "/whip", "v=0", {**right, "Content-Type":
                                               "application/sdp"}, local="127.0.0.5")
            assert status == 429
            assert s.whip.checks.auth_failures == FAILURES_BEFORE_BACKOFF and s.whip.checks.auth_throttled == 2
            await asyncio.sleep(1.1)
            assert (await call("GET", s.base + "/api/status", headers=right, local="127.0.0.5"))[0] == 200
    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ docs
def documented_routes() -> set[tuple[str, str]]:
    """(method, path with <> for each parameter) of every row of http.md section 2."""
    section = HTTP_MD.read_text().split("## 2. Resources", 1)[1].split("\n## ", 1)[0]
    routes = set()
    for methods, paths in re.findall(r"^\| ((?:`[A-Z]+`(?:, )?)+) \| ((?:`[^`]+`(?:, )?)+) \|", section, flags=re.M):
        for method in re.findall(r"`([A-Z]+)`", methods):
            for path in re.findall(r"`([^`]+)`", paths):
                routes.add((method, re.sub(r"<[^>]+>", "<>", path)))
    return routes


def test_every_served_route_is_documented() -> None:
    async def scenario() -> set[tuple[str, str]]:
        async with serve() as s:
            app = s.runner.app
            served = set()
            for route in app.router.routes():
                info = route.resource.get_info() if route.resource else {}
                path = info.get("path") or info.get("formatter") or (info.get("prefix", "") + "/{file}")
                served.add((route.method, re.sub(r"\{[^}]+\}", "<>", path)))
            return served

    served = asyncio.run(scenario())
    documented = documented_routes()
    assert ("POST", "/whip") in documented and ("GET", "/api/status") in documented  # the parser works
    missing = {r for r in served if r[0] != "*"} - documented
    assert not missing, f"routes served but not in protocols/http.md section 2: {sorted(missing)}"
    stale = documented - served
    assert not stale, f"routes in protocols/http.md section 2 that the daemon does not serve: {sorted(stale)}"


def test_readme_names_the_token_minimum_and_the_bounds() -> None:
    readme = (HTTP_MD.parents[1] / "README.md").read_text()
    assert re.search(r"at least 8 characters", readme)
    for setting in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "max_connections",
                    "max_connections_per_client"):
        assert setting in readme, setting
