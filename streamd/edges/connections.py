"""Bounded HTTP connections: how many, for how long, and the answer to a request aiohttp cannot parse.

aiohttp bounds line and header sizes but not time: a client sending one header line a second (slowloris) holds
its connection, and its file descriptor, forever, and nothing limits how many connections are open. This module
adds, per listener (`HttpSettings`):

- a header timeout: once a connection is open or a request has started, its request line and headers must be
  complete within `header_timeout_s`, or the daemon answers 408 and closes the connection;
- an idle limit: a keep-alive connection with no request for `keepalive_timeout_s` is closed;
- `max_connections` open connections in all and `max_connections_per_client` per client address: one more is
  answered 503 `at-capacity` (with `Retry-After`) and closed at once;
- the JSON error body (protocols/http.md section 8) for requests the HTTP parser refuses (400), in place of
  aiohttp's plain-text page, logged in one line without a traceback.

The body timeout is the request handlers' (`RequestChecks.read_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_server import Server

from ..config import HttpSettings
from ..lograte import Occurrences
from ..wire.errors import ERROR_CONTENT_TYPE, error_body
from .http import http_exception_response
from .redact import quote_client

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a connection refused for capacity is told to wait
# the request line as the HTTP parser quotes it in its error message (b'FOO /livez HTTP/1.1')
_QUOTED_REQUEST_LINE = re.compile(r"b['\"]([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/[^\s'\"]*)")


def allowed_methods(app: web.Application, path: str) -> list[str]:
    """The methods the application's router serves on `path` (empty when no route matches it)."""
    methods: set[str] = set()
    for resource in app.router.resources():
        match = getattr(resource, "_match", None)  # aiohttp's own path matcher, the one the router uses
        if match is not None and match(path.split("?", 1)[0]) is not None:
            methods |= {route.method for route in resource if route.method != "*"}
    return sorted(methods)


def raw_error(status: int, reason: str, code: str, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 error response with the JSON body, for writing straight to a transport."""
    body = json.dumps(error_body(status, code, detail)).encode()
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ERROR_CONTENT_TYPE}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_response_bytes(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error response (protocols/http.md section 12) for the connection handler to send."""
    return web.Response(status=status, text=json.dumps(error_body(status, code, detail)),
                        content_type=ERROR_CONTENT_TYPE, headers=headers)


class ConnectionCounts:
    """Open connections in all and per client address (entries exist only while connections do)."""

    def __init__(self, settings: HttpSettings, on_refused: Any = None,
                 allowed: Callable[[str], list[str]] | None = None) -> None:
        self.settings = settings
        self.allowed = allowed  # the methods served on a path (for 405 to methods the parser does not know)
        self.errors_logged = Occurrences()
        self.total = 0
        self.per_client: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self._on_refused = on_refused

    def admit(self, address: str) -> str | None:
        """Count a new connection; the reason to refuse it ("total", "per-client") or None."""
        if self.total >= self.settings.max_connections:
            return "total"
        if self.per_client[address] >= self.settings.max_connections_per_client:
            return "per-client"
        self.total += 1
        self.per_client[address] += 1
        return None

    def release(self, address: str) -> None:
        """A counted connection closed."""
        self.total -= 1
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]


class BoundedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a header timeout, connection counting and JSON parse errors."""

    def __init__(self, manager: BoundedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds = manager.bounds
        self._address: str | None = None  # set once counted
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose headers are not complete yet have arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        refusal = self._bounds.admit(address)
        if refusal is not None:
            self._bounds.refused += 1
            if self._bounds._on_refused is not None:
                self._bounds._on_refused(refusal)
            limit = (self._bounds.settings.max_connections if refusal == "total"
                     else self._bounds.settings.max_connections_per_client)
            detail = (f"{limit} connections are open, the limit" if refusal == "total"
                      else f"{limit} connections from this address are open, the limit")
            transport.write(raw_error(503, "Service Unavailable", "at-capacity", detail,
                                      {"Retry-After": str(RETRY_AFTER_S)}))
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._address is not None:
            self._bounds.release(self._address)
            self._address = None
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is None:  # refused at connection_made: nothing is read
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._partial = False
            self._cancel_header_timer()  # a request's headers are complete
            request = self._current_request
            if (request is not None and self._request_in_progress and self._messages
                    and isinstance(self._messages[-1][0], _ErrInfo)):
                # the parser failed inside the body of the request being handled (a bad chunk size): aiohttp
                # queues the error as the next "request" and leaves the handler waiting for body bytes that
                # never come, until the body timeout. Fail the body read now instead (answered 400).
                request.content.set_exception(RequestPayloadError(str(self._messages[-1][0].message)[:200]))
        elif not self._request_in_progress and not self._messages:
            self._partial = True
            if self._header_timer is None:
                self._arm_header_timer()  # the first bytes of a new request on a kept-alive connection

    def abandon_body(self) -> None:
        """Close the connection after this response instead of reading the rest of the body (aiohttp's lingering
        close reads and discards it for up to 10 s: pointless for a body that was too slow to begin with)."""
        self._lingering_time = 0.0

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._bounds.settings.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return  # a request got going in time
        if self._request_count and not self._partial:
            return  # an idle keep-alive connection: keepalive_timeout_s governs it
        self._bounds.timed_out += 1
        transport = self.transport
        transport.write(raw_error(408, "Request Timeout", "request-timeout",
                                  f"the request's headers did not arrive within "
                                  f"{self._bounds.settings.header_timeout_s:g} s"))
        self.force_close()  # stops the request loop; it drops its reference to the transport
        transport.close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The JSON error body for what aiohttp refuses itself (unparseable requests: 400), logged in one line."""
        if status >= 500 and isinstance(exc, ConnectionError):  # the client went away: nobody to answer
            log.debug("HTTP client %s went away: %s", getattr(request, "remote", "?"), exc)
            code, detail = "internal", "the connection was lost"
            status = 500
        elif status >= 500:
            n = self._bounds.errors_logged.due("handle_error")
            if n is not None:  # a client repeating a failing request cannot flood the log (1st, 2nd, 4th...)
                log.error("HTTP request from %s failed: %s (%d so far)", getattr(request, "remote", "?"),
                          type(exc).__name__ if exc is not None else status, n)
            code, detail = "internal", "internal error; see the daemon's log"
            status = 500
        elif (isinstance(exc, BadHttpMethod) and self._bounds.allowed is not None
              and (found := _QUOTED_REQUEST_LINE.search(str(exc))) is not None):
            # a well-formed request line with a method the HTTP parser does not know (FOO /livez): answered as the
            # router answers any method a path does not serve (protocols/http.md section 2); garbage stays a 400
            allowed = self._bounds.allowed(found.group(2))
            if allowed:
                resp = error_response_bytes(405, "method-not-allowed",
                                            f"method not allowed; allowed: {', '.join(allowed)}",
                                            {"Allow": ", ".join(allowed)})
            else:
                resp = error_response_bytes(404, "not-found", "no such resource")
            resp.force_close()
            return resp
        else:
            # the parser's message quotes the broken line: bounded, printable, and never an Authorization value
            text = message or (str(getattr(exc, "message", "") or exc) if exc is not None else "")
            text = quote_client(text)
            log.debug("refused an unparseable request from %s: %s", getattr(request, "remote", "?"), text)
            code, status = "bad-request", 400
            detail = "the request is not valid HTTP/1.1" + (f": {text}" if text else "")
            detail = detail.encode("ascii", "replace").decode()
        resp = web.Response(status=status, text=json.dumps(error_body(status, code, detail)),
                            content_type=ERROR_CONTENT_TYPE)
        resp.force_close()
        return resp


class BoundedServer(Server):
    """aiohttp's low-level server making `BoundedRequestHandler`s that share one `ConnectionCounts`."""

    def __init__(self, *args: Any, bounds: ConnectionCounts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounds = bounds

    def __call__(self) -> RequestHandler:
        return BoundedRequestHandler(self, loop=self._loop, **self._kwargs)


class BoundedAppRunner(web.AppRunner):
    """An AppRunner whose server bounds connections as `settings` says."""

    def __init__(self, app: web.Application, settings: HttpSettings, on_refused: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=settings.keepalive_timeout_s, **kwargs)
        self.bounds = ConnectionCounts(settings, on_refused, allowed=lambda path: allowed_methods(app, path))

    async def _make_server(self) -> Server:
        loop = asyncio.get_running_loop()
        app = self._app
        app._set_loop(loop)  # noqa: SLF001 - what AppRunner._make_server does before making its server
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        handle = app._handle  # noqa: SLF001

        async def handle_outside_middlewares(request: web.BaseRequest) -> web.StreamResponse:
            # aiohttp runs a route's Expect handler before any middleware, and its 417 (an Expect other than
            # 100-continue) would leave as plain text: what escapes the application is answered here.
            try:
                return await handle(request)  # type: ignore[arg-type]
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return http_exception_response(exc, {})

        return BoundedServer(handle_outside_middlewares, request_factory=app._make_request,  # noqa: SLF001
                             loop=loop, bounds=self.bounds, **self._kwargs)
