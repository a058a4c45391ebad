"""The HTTP surface (protocols/http.md): WHIP ingest, /livez, /readyz, /metrics.

Every refused request gets a JSON error body `{"error", "detail", "status"}` and changes nothing else.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..config import HttpSettings, WebRtcSettings
from ..wire.errors import ERROR_CONTENT_TYPE, error_body
from ..wire.frames import valid_stream_id
from .webrtc import WhipError, WhipSession, new_session_id, new_stream_id, parse_offer, parse_sdpfrag
from .whep import WhepViewer

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
RETRY_AFTER_S = 5


@dataclass
class StreamHooks:
    """What the HTTP edge asks of the rest of the daemon (wired by app.py)."""

    open_stream: Callable[[str], Awaitable[None]]  # admit a stream in the engine (raises on refusal)
    close_stream: Callable[[str, str, bool], Awaitable[None]]  # (stream id, reason, was live): release it
    session_live: Callable[[str], None]  # a session's peer connected (publish session-started)
    push_frame: Callable[[str, Any], None]  # hand one RGB frame to the engine
    readiness: Callable[[], tuple[bool, str]]  # (ready, reason when not)
    metrics: Callable[[], tuple[bytes, str]]  # (body, content type)
    max_streams: Callable[[], int]
    command: Callable[[str, bytes], Awaitable[dict[str, Any]]]  # (verb, JSON payload) -> reply (control.py)
    status: Callable[[], dict[str, Any]]


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(error_body(status, code, detail)),
                        content_type=ERROR_CONTENT_TYPE, headers=headers)


class WhipEndpoint:
    """WHIP sessions keyed by their unguessable id. Bound: at most `max_streams` live sessions."""

    def __init__(self, http: HttpSettings, webrtc: WebRtcSettings, hooks: StreamHooks) -> None:
        self.http = http
        self.webrtc = webrtc
        self.hooks = hooks
        self.sessions: dict[str, WhipSession] = {}
        self.accepting = True

    # ------------------------------------------------------------------------------------------ checks
    def _cors(self) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": self.http.cors_origin,
            "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Link, Streamd-Stream-Id",
        }

    def _authorize(self, request: web.Request) -> None:
        token = self.http.token
        if token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise WhipError(401, "unauthorized", "a valid bearer token is required",
                            {"WWW-Authenticate": 'Bearer realm="streamd"'})

    async def _body(self, request: web.Request, content_type: str) -> str:
        if request.content_type != content_type:
            accept = {"Accept-Post": SDP} if content_type == SDP else {"Accept-Patch": SDPFRAG}
            raise WhipError(415, "unsupported-media-type",
                            f"the body must be {content_type}, got {request.content_type or 'none'}", accept)
        limit = self.http.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise WhipError(413, "body-too-large", f"the body exceeds {limit} bytes")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise WhipError(413, "body-too-large", f"the body exceeds {limit} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError(400, "bad-sdp" if content_type == SDP else "bad-sdpfrag", "the body is not UTF-8") from None

    def _session(self, request: web.Request) -> WhipSession:
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            raise WhipError(404, "session-not-found", "no such WHIP session")
        return session

    # ------------------------------------------------------------------------------------------ handlers
    async def options(self, request: web.Request) -> web.Response:
        if "session" in request.match_info:  # 204 even for unknown sessions: reveals nothing
            methods, extra = "OPTIONS, PATCH, DELETE", {"Accept-Patch": SDPFRAG}
        else:
            methods, extra = "OPTIONS, POST", {"Accept-Post": SDP}
        headers = {
            **self._cors(), **extra,
            "Allow": methods,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    async def post(self, request: web.Request) -> web.Response:
        self._authorize(request)
        offer = await self._body(request, SDP)
        requested = request.query.get("stream")
        if requested is not None and not valid_stream_id(requested):
            raise WhipError(400, "bad-stream-id", "stream ids are 1 to 64 characters of A-Za-z0-9_-")
        parsed = parse_offer(offer)
        if requested is not None and any(s.stream_id == requested for s in self.sessions.values()):
            raise WhipError(409, "stream-in-use", f"stream {requested!r} belongs to a live session")
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if not self.accepting:
            raise WhipError(503, "not-ready", "the daemon is shutting down", retry)
        ready, reason = self.hooks.readiness()
        if not ready:
            raise WhipError(503, "not-ready", f"not ready: {reason}", retry)
        if len(self.sessions) >= self.hooks.max_streams():
            raise WhipError(503, "at-capacity", f"{len(self.sessions)} streams are live, the configured limit",
                            retry)
        session_id, stream_id = new_session_id(), requested or new_stream_id()
        try:
            await self.hooks.open_stream(stream_id)
        except Exception as exc:  # AdmissionError and friends: no room for this stream
            raise WhipError(503, "at-capacity", str(exc), retry) from None
        session = WhipSession(session_id, stream_id, self.webrtc, self.hooks.push_frame, self._closed,
                              self.hooks.session_live)
        self.sessions[session_id] = session
        try:
            answer = await session.answer(offer, parsed)
        except Exception as exc:
            await session.close("error")
            raise WhipError(400, "bad-sdp", f"cannot negotiate the offer: {exc}") from None
        log.info("session %s started: stream %s from %s", session_id[:6], stream_id, request.remote)
        headers = {**self._cors(), "Location": f"/whip/{session_id}", "ETag": session.etag,
                   "Accept-Patch": SDPFRAG, "Streamd-Stream-Id": stream_id}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        self._authorize(request)
        session = self._session(request)
        body = await self._body(request, SDPFRAG)
        if_match = request.headers.get("If-Match")
        if if_match is None:
            raise WhipError(428, "if-match-required", "PATCH needs the session's ETag in If-Match")
        if if_match.strip() == "*":
            raise WhipError(422, "ice-restart-unsupported", "ICE restarts are not supported: start a new session")
        if if_match.strip() != session.etag:
            raise WhipError(412, "etag-mismatch", "If-Match does not match the session's ETag")
        await session.add_candidates(parse_sdpfrag(body))
        return web.Response(status=204, headers={**self._cors(), "ETag": session.etag})

    async def delete(self, request: web.Request) -> web.Response:
        self._authorize(request)
        session = self._session(request)
        await session.close("client-delete")
        return web.Response(status=200, headers=self._cors())

    async def _closed(self, session: WhipSession, reason: str) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            log.info("session %s ended: stream %s, %s (%d frames)", session.session_id[:6], session.stream_id,
                     reason, session.frames)
            await self.hooks.close_stream(session.stream_id, reason, session.went_live)

    async def close_all(self, reason: str) -> None:
        """End every session (shutdown)."""
        self.accepting = False
        for session in list(self.sessions.values()):
            await session.close(reason)


class WhepEndpoint:
    """WHEP playback sessions. Bound: at most `max_viewers` viewers in all."""

    def __init__(self, whip: WhipEndpoint, fps: float, max_viewers: int = 16) -> None:
        self.whip = whip
        self.fps = fps
        self.max_viewers = max_viewers
        self.viewers: dict[str, WhepViewer] = {}

    def _live_streams(self) -> list[str]:
        """Stream ids of live sessions, newest first."""
        live = [s for s in self.whip.sessions.values() if s.went_live and not s.closed]
        return [s.stream_id for s in sorted(live, key=lambda s: s.created, reverse=True)]

    async def options(self, request: web.Request) -> web.Response:
        return await self.whip.options(request)

    async def post(self, request: web.Request) -> web.Response:
        self.whip._authorize(request)
        offer = await self.whip._body(request, SDP)
        if not offer.lstrip().startswith("v=0"):
            raise WhipError(400, "bad-sdp", "the body is not an SDP offer (it must start with v=0)")
        live = self._live_streams()
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
            if viewer.pc.connectionState in ("failed", "closed"):
                await self._drop(viewer.session_id)

        log.info("viewer %s watching stream %s", viewer.session_id[:6], stream_id)
        headers = {**self.whip._cors(), "Location": f"/whep/session/{viewer.session_id}",
                   "ETag": f'"{viewer.session_id[:8]}"', "Streamd-Stream-Id": stream_id}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        self.whip._authorize(request)
        if request.match_info["session"] not in self.viewers:
            raise WhipError(404, "session-not-found", "no such WHEP session")
        await self._drop(request.match_info["session"])
        return web.Response(status=200, headers=self.whip._cors())

    async def _drop(self, session_id: str) -> None:
        viewer = self.viewers.pop(session_id, None)
        if viewer is not None:
            await viewer.close()

    def offer_chunk(self, stream_id: str, frames: Any, pts_ns: list[int]) -> None:
        """Hand a generated chunk to the stream's viewers."""
        for viewer in self.viewers.values():
            if viewer.stream_id == stream_id:
                viewer.track.offer(frames, pts_ns)

    async def close_stream(self, stream_id: str) -> None:
        """End the viewers of a stream that ended."""
        for sid in [k for k, v in self.viewers.items() if v.stream_id == stream_id]:
            await self._drop(sid)

    async def close_all(self) -> None:
        """End every viewer (shutdown)."""
        for sid in list(self.viewers):
            await self._drop(sid)


def build_app(whip: WhipEndpoint, hooks: StreamHooks, whep: WhepEndpoint | None = None) -> web.Application:
    """The aiohttp application: routes, and WhipError -> JSON error responses."""

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            return await handler(request)
        except WhipError as exc:
            return _error(exc.status, exc.code, exc.detail, {**whip._cors(), **exc.headers})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status, "bad-request")
            return _error(exc.status, code, exc.reason, dict(exc.headers) if exc.status == 405 else None)
        except Exception:  # a bug must not leave the client without a protocol answer
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal", "internal error; see the daemon's log")

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

    app = web.Application(middlewares=[errors], client_max_size=whip.http.max_body_bytes)
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
        whip._authorize(request)
        if request.content_type != "application/json":
            raise WhipError(415, "unsupported-media-type", "commands are application/json")
        body = await request.content.read(whip.http.max_body_bytes + 1)
        reply = await hooks.command(request.match_info["verb"], body)
        status = 200 if reply.get("ok") else reply_status.get(str(reply.get("error")), 400)
        return web.json_response(reply, status=status, headers={"Cache-Control": "no-store"})

    async def status(request: web.Request) -> web.Response:
        whip._authorize(request)
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
