"""WHIP ingest endpoint (RFC 9725, protocols/http.md): POST creates a session, PATCH trickles ICE, DELETE ends it.

The WebRTC side of a session (peer connection, video reader) is `webrtc.WhipSession`; this module owns the HTTP
resources and the set of sessions. Bound: at most `StreamHooks.max_streams()` sessions at once.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..config import HttpSettings, WebRtcSettings
from ..wire.frames import valid_stream_id
from .http import RETRY_AFTER_S, SDP, SDPFRAG, RequestChecks, StreamHooks
from .webrtc import WhipError, WhipSession, new_session_id, new_stream_id, parse_offer, parse_sdpfrag

log = logging.getLogger(__name__)


class WhipEndpoint:
    """WHIP sessions keyed by their unguessable id. Bound: at most `hooks.max_streams()` live sessions."""

    def __init__(self, http: HttpSettings, webrtc: WebRtcSettings, hooks: StreamHooks) -> None:
        self.checks = RequestChecks(http)
        self.webrtc = webrtc
        self.hooks = hooks
        self.sessions: dict[str, WhipSession] = {}
        self.accepting = True
        # stream ids claimed by a POST between its checks and its session's creation: the POST awaits the engine
        # and the peer connection in between, and a second POST for the same id must see the claim (409)
        self._claimed: set[str] = set()
        self._refused_ended = 0  # frames refused by sessions that have ended (see `frames_refused`)

    # ------------------------------------------------------------------------------------------ queries
    def live_streams(self) -> list[str]:
        """Stream ids of sessions whose peer has connected and that have not ended, newest first."""
        live = [s for s in self.sessions.values() if s.went_live and not s.closed]
        return [s.stream_id for s in sorted(live, key=lambda s: s.created, reverse=True)]

    def stream_ids(self) -> list[str]:
        """Stream ids of every session not yet ended (connected or still connecting)."""
        return [s.stream_id for s in self.sessions.values() if not s.closed]

    def slots_held(self) -> int:
        """Stream slots taken now: sessions not yet ended and admissions in progress (what max_streams bounds)."""
        return len(self.sessions) + len(self._claimed)

    def session_for(self, stream_id: str) -> WhipSession | None:
        """The session publishing `stream_id`, if any."""
        return next((s for s in self.sessions.values() if s.stream_id == stream_id), None)

    @property
    def frames_refused(self) -> int:
        """Received frames dropped at ingest because a side was outside 2..4096 px, since the endpoint started."""
        return self._refused_ended + sum(s.frames_refused for s in self.sessions.values())

    # ------------------------------------------------------------------------------------------ handlers
    def _session(self, request: web.Request) -> WhipSession:
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            raise WhipError(404, "session-not-found", "no such WHIP session")
        return session

    async def options(self, request: web.Request) -> web.Response:
        """CORS preflight and capability discovery; never needs the token (browsers send none)."""
        if "session" in request.match_info:  # 204 even for unknown sessions: reveals nothing
            methods, extra = "OPTIONS, PATCH, DELETE", {"Accept-Patch": SDPFRAG}
        else:
            methods, extra = "OPTIONS, POST", {"Accept-Post": SDP}
        return self.checks.preflight(methods, extra)

    async def post(self, request: web.Request) -> web.Response:
        """Create a session from an SDP offer; 201 with the answer, Location and ETag."""
        self.checks.authorize(request, "ingest")
        offer = await self.checks.read_body(request, SDP)
        requested = request.query.get("stream")
        if requested is not None and not valid_stream_id(requested):
            raise WhipError(400, "bad-stream-id", "stream ids are 1 to 64 characters of A-Za-z0-9_-")
        parsed = parse_offer(offer)
        # From here to the claim there is no await: concurrent POSTs for one id cannot both pass (one 409s).
        if requested is not None and (requested in self._claimed or self.session_for(requested) is not None):
            raise WhipError(409, "stream-in-use", f"stream {requested!r} belongs to a live session")
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if not self.accepting:
            raise WhipError(503, "not-ready", "the daemon is shutting down", retry)
        ready, reason = self.hooks.readiness()
        if not ready:
            raise WhipError(503, "not-ready", f"not ready: {reason}", retry)
        if self.hooks.draining is not None and self.hooks.draining():
            raise WhipError(503, "draining", "this instance is draining: it takes no new sessions", retry)
        if len(self.sessions) + len(self._claimed) >= self.hooks.max_streams():
            raise WhipError(503, "at-capacity", f"{self.hooks.max_streams()} streams are live, the configured "
                            "limit", retry)
        session_id, stream_id = new_session_id(), requested or new_stream_id()
        self._claimed.add(stream_id)
        try:
            session = await self._admit(session_id, stream_id, retry)
        finally:
            self._claimed.discard(stream_id)
        try:
            answer = await session.answer(offer, parsed)
        except Exception as exc:
            await session.close("error")
            raise WhipError(400, "bad-sdp", f"cannot negotiate the offer: {exc}") from None
        log.info("session %s started: stream %s from %s", session_id[:6], stream_id, request.remote)
        headers = {**self.checks.cors(), "Location": f"/whip/{session_id}", "ETag": session.etag,
                   "Accept-Patch": SDPFRAG, "Streamd-Stream-Id": stream_id}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def _admit(self, session_id: str, stream_id: str, retry: dict[str, str]) -> WhipSession:
        """Admit the stream in the engine and make its session (registered in `sessions`)."""
        try:
            await self.hooks.open_stream(stream_id)
        except Exception as exc:  # AdmissionError and friends: no room for this stream
            raise WhipError(503, "at-capacity", str(exc), retry) from None
        try:
            frame_size = self.hooks.frame_size(stream_id) if self.hooks.frame_size is not None else None
            session = WhipSession(session_id, stream_id, self.webrtc, self.hooks.push_frame, self._closed,
                                  self.hooks.session_live, frame_size=frame_size)
        except Exception:  # a wiring bug (no size for the stream): release what was admitted, then answer 500
            await self.hooks.close_stream(stream_id, "error", False)
            raise
        self.sessions[session_id] = session
        return session

    async def patch(self, request: web.Request) -> web.Response:
        """Trickle ICE candidates into a session (ICE restarts are refused)."""
        self.checks.authorize(request, "ingest")
        session = self._session(request)
        body = await self.checks.read_body(request, SDPFRAG)
        if_match = request.headers.get("If-Match")
        if if_match is None:
            raise WhipError(428, "if-match-required", "PATCH needs the session's ETag in If-Match")
        if if_match.strip() == "*":
            raise WhipError(422, "ice-restart-unsupported", "ICE restarts are not supported: start a new session")
        if if_match.strip() != session.etag:
            raise WhipError(412, "etag-mismatch", "If-Match does not match the session's ETag")
        await session.add_candidates(parse_sdpfrag(body))
        return web.Response(status=204, headers={**self.checks.cors(), "ETag": session.etag})

    async def delete(self, request: web.Request) -> web.Response:
        """End a session at its client's request."""
        self.checks.authorize(request, "ingest")
        session = self._session(request)
        await session.close("client-delete")
        return web.Response(status=200, headers=self.checks.cors())

    async def _closed(self, session: WhipSession, reason: str) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            self._refused_ended += session.frames_refused
            log.info("session %s ended: stream %s, %s (%d frames)", session.session_id[:6], session.stream_id,
                     reason, session.frames)
            await self.hooks.close_stream(session.stream_id, reason, session.went_live)

    async def close_all(self, reason: str) -> None:
        """Refuse new sessions and end every session, concurrently (shutdown)."""
        self.accepting = False
        await asyncio.gather(*(session.close(reason) for session in list(self.sessions.values())))
