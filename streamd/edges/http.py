"""The HTTP surface (protocols/http.md): routes, health, metrics, the control API, and the request plumbing
that the WHIP (whip.py) and WHEP (whep.py) endpoints share.

Every refused request gets a JSON error body `{"error", "detail", "status"}` and changes nothing else: the
`errors` middleware of `build_app` is the one error path, for the handlers' refusals (WhipError), for what
aiohttp's router raises itself (404, 405, 403 of the static folder), and for bugs (a JSON 500 and one log line).
Requests the HTTP parser cannot read are answered by `connections.BoundedRequestHandler`, the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..config import HttpSettings
from ..lograte import Occurrences
from ..wire.errors import ERROR_CONTENT_TYPE, error_body
from .auth import AuthRefused, AuthThrottle, TokenCheck
from .redact import quote_client
from .webrtc import WhipError

if TYPE_CHECKING:  # only for annotations: whip.py and whep.py import this module
    from .whep import WhepEndpoint
    from .whip import WhipEndpoint

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
RETRY_AFTER_S = 5  # the delay every 503 names in Retry-After (protocols/http.md section 8)

# What a body of each accepted content type answers when it is refused: the header that names the accepted type
# on a 415, and the error code of a body that is not UTF-8.
_BODY_KINDS: dict[str, tuple[str, str]] = {SDP: ("Accept-Post", "bad-sdp"), SDPFRAG: ("Accept-Patch", "bad-sdpfrag")}


@dataclass
class StreamHooks:
    """What the HTTP edge asks of the rest of the daemon (wired by app.py)."""

    open_stream: Callable[[str], Awaitable[None]]  # admit a stream in the engine (raises on refusal)
    close_stream: Callable[[str, str, bool], Awaitable[None]]  # (stream id, reason, was live): release it
    session_live: Callable[[str], None]  # a session's peer connected (publish session-started)
    push_frame: Callable[[str, Any], None]  # hand one RGB frame [H, W, 3] uint8 to the engine
    readiness: Callable[[], tuple[bool, str]]  # (ready, reason when not)
    metrics: Callable[[], tuple[bytes, str]]  # (body, content type)
    max_streams: Callable[[], int]
    command: Callable[[str, bytes], Awaitable[dict[str, Any]]]  # (verb, JSON payload) -> reply (control.py)
    status: Callable[[], dict[str, Any]]
    # (height, width) every frame of an admitted stream is resized to at ingest; None hands frames on at the
    # size they arrive in (the engine then fits them itself)
    frame_size: Callable[[str], tuple[int, int]] | None = None
    draining: Callable[[], bool] | None = None  # True: refuse new sessions (503 draining); live ones go on


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error response of protocols/http.md section 8 (`application/problem+json`)."""
    return web.Response(status=status, text=json.dumps(error_body(status, code, detail)),
                        content_type=ERROR_CONTENT_TYPE, headers=headers)


class RequestChecks:
    """The checks every door of the HTTP surface shares: bearer tokens by role, bounded typed bodies, CORS.

    Bounds: a body is at most `settings.max_body_bytes` bytes (one byte more is refused with 413 unread beyond
    it) and must arrive within `settings.body_timeout_s` (408); failed authentications back off per address
    (auth.py).
    """

    def __init__(self, settings: HttpSettings, throttle: AuthThrottle | None = None) -> None:
        self.settings = settings
        self.auth_failures = 0  # wrong tokens presented (streamd_http_auth_failures_total)
        self.auth_throttled = 0  # requests answered 429 by the backoff (streamd_http_auth_throttled_total)
        self.tokens = TokenCheck(settings.tokens(), throttle, on_failure=self._failed, on_throttled=self._throttled)

    def _failed(self) -> None:
        self.auth_failures += 1

    def _throttled(self) -> None:
        self.auth_throttled += 1

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted."""
        return self.settings.max_body_bytes

    def cors(self) -> dict[str, str]:
        """Headers every WHIP/WHEP response carries, errors included, so browser pages can read them."""
        return {
            "Access-Control-Allow-Origin": self.settings.cors_origin,
            "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Link, Streamd-Stream-Id",
        }

    def preflight(self, methods: str, extra: dict[str, str]) -> web.Response:
        """The 204 answer to an OPTIONS request (CORS preflight), allowing `methods`, with `extra` headers."""
        headers = {
            **self.cors(), **extra,
            "Allow": methods,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    def authorize(self, request: web.Request, role: str) -> None:
        """Raise WhipError unless the request's bearer token opens `role`'s doors (auth.py): 401 without a valid
        token (with `error="invalid_token"` when one was presented), 403 for another role's token, 429 while
        the client's address is backing off. Tokens are compared in constant time."""
        try:
            self.tokens.check(role, request.headers.get("Authorization"), request.remote or "unknown")
        except AuthRefused as exc:
            raise WhipError(exc.status, exc.code, exc.detail, exc.headers) from None

    async def read_body(self, request: web.Request, content_type: str) -> str:
        """The request body as text, when it is `content_type` (SDP or SDPFRAG), UTF-8 and within the bound.

        Raises WhipError 415 (wrong type, naming the accepted one), 413 (too large) or 400 (not UTF-8).
        """
        accept_header, bad_code = _BODY_KINDS[content_type]
        if request.content_type != content_type:
            raise WhipError(415, "unsupported-media-type",
                            f"the body must be {content_type}, got {request.content_type or 'none'}",
                            {accept_header: content_type})
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise WhipError(413, "body-too-large", f"the body exceeds {limit} bytes")
        data = await self.read_bounded(request)
        if len(data) > limit:
            raise WhipError(413, "body-too-large", f"the body exceeds {limit} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError(400, bad_code, "the body is not UTF-8") from None

    async def read_bounded(self, request: web.Request) -> bytes:
        """Up to `max_body_bytes + 1` bytes of the body (one past the bound, so that a chunked body without
        Content-Length is measured, never buffered whole), within `body_timeout_s` (else WhipError 408)."""
        limit, timeout = self.max_body_bytes, self.settings.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while size <= limit:
                    chunk = await request.content.read(limit + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError:
            raise WhipError(408, "request-timeout", f"the body did not arrive within {timeout:g} s",
                            {"Connection": "close"}) from None
        except (ConnectionError, RequestPayloadError) as exc:
            # aiohttp ends the body this way when its framing breaks (a bad chunk size) or the client goes away;
            # if the client is still there it gets the answer, and the connection closes after it
            raise WhipError(400, "bad-request", f"the body could not be read: {type(exc).__name__}",
                            {"Connection": "close"}) from None
        return b"".join(chunks)


# What aiohttp raises itself, mapped to protocols/http.md: (status, code). The static folder's 403 (a directory,
# a path outside the folder) is a 404: it must not reveal what exists. Anything else aiohttp refuses is a 400.
_AIOHTTP_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "bad-request"), 403: (404, "not-found"), 404: (404, "not-found"), 405: (405, "method-not-allowed"),
    408: (408, "request-timeout"), 413: (413, "body-too-large"), 415: (415, "unsupported-media-type"),
    417: (417, "expectation-failed"),
}
# Only these headers of an aiohttp exception go into the JSON answer (its own Content-Type must not).
_KEPT_HEADERS = ("Allow",)


def http_exception_response(exc: web.HTTPException, cors: dict[str, str]) -> web.Response:
    """The JSON error response for an HTTPException that aiohttp raised (router, static files, request parsing)."""
    status, code = _AIOHTTP_ERRORS.get(exc.status, (400, "bad-request"))
    headers = {**cors, **{k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}}
    detail = {404: "no such resource", 405: f"{exc.reason}; allowed: {exc.headers.get('Allow', '')}"}.get(
        status, exc.reason)
    return error_response(status, code, detail, headers)


def page_file(path: Path) -> web.Response:
    """One of the web page's files, whole.

    Not aiohttp's add_static or FileResponse: after every middleware has run, those answer a missing file with
    an empty 404, a folder with 403, and If-Match or Range headers with empty 412 and 416 responses, none with
    the JSON error body. The page's files are a few KiB, read per request (no caching: an edited page is seen).
    """
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.Response(body=path.read_bytes(), content_type=content_type, headers={"Cache-Control": "no-cache"})


def error_middleware(checks: RequestChecks) -> Any:
    """The one error path of an HTTP surface (an instance's or a router's): WhipError refusals, what aiohttp
    raises itself, and bugs (a JSON 500 and one rate-limited log line) -> the JSON error body, with CORS."""
    failures = Occurrences()  # the 500 log line is logged at its 1st, 2nd, 4th... occurrence per place

    @web.middleware
    async def errors(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except WhipError as exc:
            response = error_response(exc.status, exc.code, exc.detail, {**checks.cors(), **exc.headers})
            if exc.status == 408 or exc.headers.get("Connection") == "close":
                # a body too slow to arrive, or broken: answer and close, do not wait for the rest
                response.force_close()
                abandon = getattr(request.protocol, "abandon_body", None)
                if abandon is not None:
                    abandon()
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_exception_response(exc, checks.cors())
        except asyncio.CancelledError:
            raise
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # the client went away mid-request: nobody to answer; one line, no trace
            log.debug("%s %s: client gone: %s", request.method, request.path, exc)
            raise
        except Exception as exc:  # a bug must not leave the client without a protocol answer
            # one line with the place it failed, not a traceback per request: a client repeating the request
            # must not be able to flood the log (debug logging shows the whole trace)
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
            n = failures.due((type(exc).__name__, where))
            if n is not None:
                log.error("%s %s failed: %s: %s (at %s; %d so far)", request.method, quote_client(request.path),
                          type(exc).__name__, quote_client(str(exc)), where, n)
            log.debug("traceback", exc_info=exc)
            return error_response(500, "internal", "internal error; see the daemon's log", checks.cors())

    return errors


def build_app(whip: WhipEndpoint, hooks: StreamHooks, whep: WhepEndpoint | None = None) -> web.Application:
    """The aiohttp application: routes, and every refusal -> the JSON error response of protocols/http.md."""
    checks = whip.checks
    errors = error_middleware(checks)

    no_store = {"Cache-Control": "no-store"}

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers=no_store)

    async def readyz(request: web.Request) -> web.Response:
        ready, reason = hooks.readiness()
        if ready:
            return web.json_response({"status": "ok"}, headers=no_store)
        return web.json_response({"status": "not-ready", "reason": reason}, status=503, headers=no_store)

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = hooks.metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application(middlewares=[errors], client_max_size=checks.max_body_bytes)
    app.router.add_route("OPTIONS", "/whip", whip.options)
    app.router.add_post("/whip", whip.post)
    app.router.add_route("OPTIONS", "/whip/{session}", whip.options)
    app.router.add_patch("/whip/{session}", whip.patch)
    app.router.add_delete("/whip/{session}", whip.delete)
    if whep is not None:
        app.router.add_route("OPTIONS", "/whep", whep.options)
        app.router.add_post("/whep", whep.post)
        # a browser page POSTing to /whep/<stream> preflights that URL first: it must answer OPTIONS too
        app.router.add_route("OPTIONS", "/whep/{stream}", whep.options)
        app.router.add_post("/whep/{stream}", whep.post)
        app.router.add_route("OPTIONS", "/whep/session/{session}", whep.options)
        app.router.add_delete("/whep/session/{session}", whep.delete)
    # errors of the control API carry the command reply itself (protocols/mqtt-control.md), mapped to a status
    reply_status = {"unknown-stream": 404, "unknown-verb": 404, "payload-too-large": 413, "internal": 500}

    async def command(request: web.Request) -> web.Response:
        checks.authorize(request, "control")
        if request.content_type != "application/json":
            raise WhipError(415, "unsupported-media-type", "commands are application/json",
                            {"Accept-Post": "application/json"})
        # one byte past the bound is read so that the handler can tell "too large" (payload-too-large) itself
        body = await checks.read_bounded(request)
        reply = await hooks.command(request.match_info["verb"], body)
        if reply.get("ok"):
            return web.json_response(reply, headers=no_store)
        # a refusal is the command reply and an HTTP error body at once (protocols/http.md section 6.1)
        status = reply_status.get(str(reply.get("error")), 400)
        return web.json_response({**reply, "status": status}, status=status, content_type=ERROR_CONTENT_TYPE,
                                 headers=no_store)

    async def status(request: web.Request) -> web.Response:
        checks.authorize(request, "view")
        return web.json_response(hooks.status(), headers=no_store)

    async def index(request: web.Request) -> web.Response:
        return page_file(WEB_DIR / "index.html")

    async def static(request: web.Request) -> web.Response:
        try:
            path = (WEB_DIR / request.match_info["file"]).resolve()
            found = path.is_relative_to(WEB_DIR) and path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte: no such file either
            found = False
        if not found:
            raise WhipError(404, "not-found", "no such resource")
        return page_file(path)

    app.router.add_post("/api/cmd/{verb}", command)
    app.router.add_get("/api/status", status)
    app.router.add_get("/", index)
    app.router.add_get("/static/{file:.+}", static)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app

