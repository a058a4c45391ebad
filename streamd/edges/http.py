"""The HTTP surface (protocols/http.md): routes, health, metrics, the control API, and the request plumbing
that the WHIP (whip.py) and WHEP (whep.py) endpoints share.

Every refused request gets a JSON error body `{"error", "detail", "status"}` and changes nothing else.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from ..config import HttpSettings
from ..wire.errors import ERROR_CONTENT_TYPE, error_body
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


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error response of protocols/http.md section 8 (`application/problem+json`)."""
    return web.Response(status=status, text=json.dumps(error_body(status, code, detail)),
                        content_type=ERROR_CONTENT_TYPE, headers=headers)


class RequestChecks:
    """The checks every door of the HTTP surface shares: bearer token, bounded typed bodies, CORS headers.

    Bound: a body is at most `settings.max_body_bytes` bytes; one byte more is refused with 413 unread beyond it.
    """

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings

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

    def authorize(self, request: web.Request) -> None:
        """Raise 401 `unauthorized` unless the request carries the configured bearer token (if any)."""
        token = self.settings.token
        if token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # constant-time comparison: response timing must not reveal how much of a guessed token was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise WhipError(401, "unauthorized", "a valid bearer token is required",
                            {"WWW-Authenticate": 'Bearer realm="streamd"'})

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
        # read one byte past the limit: a chunked body without Content-Length is measured, never buffered whole
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise WhipError(413, "body-too-large", f"the body exceeds {limit} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError(400, bad_code, "the body is not UTF-8") from None


def build_app(whip: WhipEndpoint, hooks: StreamHooks, whep: WhepEndpoint | None = None) -> web.Application:
    """The aiohttp application: routes, and WhipError -> JSON error responses."""
    checks = whip.checks

    @web.middleware
    async def errors(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except WhipError as exc:
            return error_response(exc.status, exc.code, exc.detail, {**checks.cors(), **exc.headers})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "bad-request")
            return error_response(exc.status, code, exc.reason, dict(exc.headers) if exc.status == 405 else None)
        except Exception:  # a bug must not leave the client without a protocol answer
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; see the daemon's log")

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
        app.router.add_post("/whep/{stream}", whep.post)
        app.router.add_delete("/whep/session/{session}", whep.delete)
    # errors of the control API carry the command reply itself (protocols/mqtt-control.md), mapped to a status
    reply_status = {"unknown-stream": 404, "unknown-verb": 404, "payload-too-large": 413, "internal": 500}

    async def command(request: web.Request) -> web.Response:
        checks.authorize(request)
        if request.content_type != "application/json":
            raise WhipError(415, "unsupported-media-type", "commands are application/json")
        # one byte past the bound is read so that the handler can tell "too large" (payload-too-large) itself
        body = await request.content.read(checks.max_body_bytes + 1)
        reply = await hooks.command(request.match_info["verb"], body)
        status = 200 if reply.get("ok") else reply_status.get(str(reply.get("error")), 400)
        return web.json_response(reply, status=status, headers=no_store)

    async def status(request: web.Request) -> web.Response:
        checks.authorize(request)
        return web.json_response(hooks.status(), headers=no_store)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    app.router.add_post("/api/cmd/{verb}", command)
    app.router.add_get("/api/status", status)
    app.router.add_get("/", index)
    app.router.add_static("/static", WEB_DIR)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app

