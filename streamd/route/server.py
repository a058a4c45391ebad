"""`streamd route`: a stateless front that places WHIP and WHEP sessions on a fleet of `streamd serve` instances.

The router subscribes to `<prefix_root>/+/status` on the broker (the registry: DESIGN.md decision 15) and keeps
a `Fleet`. It holds no session state: the session URL a client gets is the owning instance's own (RFC 9725
section 4.3: PATCH and DELETE go to the `Location`), so any number of routers may run side by side and one may
restart at any time.

- `POST /whip`: the bearer token and the offer are checked here exactly as an instance checks them (the same
  RequestChecks, parse_offer and error path, so bad input gets the same status and JSON body); the session goes
  to the instance with the most headroom. Proxy mode forwards the offer and returns the instance's answer with an
  absolute `Location` at the instance; an instance that answers 503 or cannot be reached is skipped for the next
  (at most MAX_ATTEMPTS). Redirect mode answers 307 with the instance's WHIP URL (browsers drop `Authorization`
  on a cross-origin redirect, hence proxy by default).
- `POST /whep/<stream>`: to the instance that announces the stream; `POST /whep`: to one that has a stream.
- Every instance full, draining, not ready or gone: 503 `at-capacity` with `Retry-After`.
- `GET /api/status`: the fleet (every instance and its streams; every stream with its instance and ZeroMQ
  endpoint). `/livez`, `/readyz` (ready while connected to the broker).

Bounds: connections, header and body times and sizes as `serve` (HttpSettings through BoundedAppRunner and
RequestChecks); at most `max_instances` instances tracked (fleet.py); forwarded requests share one connection
pool of `http.max_connections` connections (32 per instance) and each must be answered within
`upstream_timeout_s`, with at most MAX_UPSTREAM_BODY_BYTES of body read back; at most INCOMING_QUEUE_SIZE status
messages wait to be taken.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import signal
import ssl
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web

from ..config import HttpSettings
from ..edges.connections import BoundedAppRunner
from ..edges.http import RETRY_AFTER_S, SDP, SDPFRAG, RequestChecks, error_middleware
from ..edges.webrtc import WhipError, parse_offer, parse_viewer_offer
from ..wire.frames import valid_stream_id
from .config import RouteConfig
from .fleet import Fleet, Instance

__all__ = ["MAX_ATTEMPTS", "Router"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # instances tried for one WHIP POST before answering 503
MAX_UPSTREAM_BODY_BYTES = 256 * 1024  # an instance's answer (an SDP or an error body) larger than this is refused
UPSTREAM_PER_HOST = 32  # pooled connections per instance
INCOMING_QUEUE_SIZE = 1024  # status messages waiting to be taken; the client library drops beyond it
EXPIRE_EVERY_S = 1.0  # how often stale instances are removed (choosing ignores them at once anyway)
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 30.0
# instance response headers passed back to the client (Location is rewritten to the instance's absolute URL)
_RELAYED = ("Content-Type", "ETag", "Accept-Patch", "Accept-Post", "Streamd-Stream-Id", "Retry-After",
            "WWW-Authenticate", "Allow", "Link")


class UpstreamError(Exception):
    """An instance could not be reached, or did not answer in time or within bounds."""


class Router:
    """The router process: MQTT watcher, fleet, HTTP front; `run()` until SIGTERM/SIGINT."""

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.fleet = Fleet(config.status_max_age_s, config.max_instances)
        self.checks = RequestChecks(config.http)
        self.broker_connected = False
        self.placements = 0  # WHIP sessions placed (201 through the router, or 307)
        self.full = 0  # WHIP POSTs answered 503 because no instance had room
        self.stop_requested = asyncio.Event()
        self._http: BoundedAppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        m = config.mqtt
        self._tls = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None) if m.tls else None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect to the broker (in the background), open the upstream pool, bind the listener."""
        h = self.config.http
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=h.max_connections, limit_per_host=UPSTREAM_PER_HOST),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s), auto_decompress=False)
        self._tasks = [asyncio.create_task(self._watch(), name="route-mqtt"),
                       asyncio.create_task(self._expire(), name="route-expire")]
        self._http = BoundedAppRunner(self.build_app(), h, access_log=None, handle_signals=False)
        await self._http.setup()
        await web.TCPSite(self._http, h.host, h.port).start()
        log.info("routing on http://%s:%d (%s mode) for instances under %s/+/status on %s; %s; at most %d "
                 "instances", h.host, h.port, self.config.mode, self.config.prefix_root, self.config.mqtt.broker,
                 settings_summary(h), self.config.max_instances)

    async def shutdown(self) -> None:
        """Close the listener, the upstream pool and the broker connection."""
        if self._http is not None:
            await self._http.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def run(self) -> int:
        """start(), serve until SIGTERM/SIGINT, shutdown(); the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        try:
            await self.start()
            await self.stop_requested.wait()
        finally:
            await self.shutdown()
        return 0

    # ------------------------------------------------------------------------------------------ the registry
    async def _watch(self) -> None:
        """Stay subscribed to the instances' statuses; reconnect with jittered backoff."""
        m, rng, failures = self.config.mqtt, random.Random(), 0
        host, _, port = (m.broker or "").rpartition(":")
        topic = f"{self.config.prefix_root}/+/status"
        while True:
            try:
                async with aiomqtt.Client(host.strip("[]"), int(port), username=m.username, password=m.password,
                                          identifier="streamd-route-" + secrets.token_hex(6),
                                          tls_context=self._tls, keepalive=30,
                                          max_queued_incoming_messages=INCOMING_QUEUE_SIZE) as client:
                    await client.subscribe(topic, qos=1)
                    self.broker_connected, failures = True, 0
                    log.info("subscribed to %s on %s", topic, m.broker)
                    async for message in client.messages:
                        self._take(str(message.topic), message.payload, bool(message.retain))
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s: %s", m.broker, exc)
            finally:
                self.broker_connected = False
            delay = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2.0 ** failures)
            failures = min(failures + 1, 32)
            await asyncio.sleep(max(RECONNECT_MIN_S, rng.uniform(delay / 2, delay)))

    def _take(self, topic: str, payload: Any, retained: bool) -> None:
        root = self.config.prefix_root + "/"
        if not topic.startswith(root) or not topic.endswith("/status"):
            return
        name = topic[len(root):-len("/status")]
        if not name or "/" in name:
            return
        data = payload if isinstance(payload, (bytes, bytearray)) else str(payload or "").encode()
        before = name in self.fleet.instances
        self.fleet.update(name, bytes(data), retained)
        after = name in self.fleet.instances
        if before != after:
            log.info("instance %s %s", name, "joined" if after else "left")

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            for name in self.fleet.expire():
                log.info("instance %s left: no status for %g s", name, self.fleet.max_age_s)

    # ------------------------------------------------------------------------------------------ forwarding
    async def _forward(self, inst: Instance, path: str, request: web.Request, body: str) -> web.Response:
        """POST `body` to the instance and build the client's response from its answer (Location made absolute)."""
        assert self._client is not None and inst.url is not None
        headers = {"Content-Type": SDP}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        url = inst.url + path + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with self._client.post(url, data=body.encode("utf-8"), headers=headers,
                                         allow_redirects=False) as resp:
                data = await resp.content.read(MAX_UPSTREAM_BODY_BYTES + 1)
                if len(data) > MAX_UPSTREAM_BODY_BYTES:
                    raise UpstreamError(f"the answer is over {MAX_UPSTREAM_BODY_BYTES} bytes")
                out = {k: resp.headers[k] for k in _RELAYED if k in resp.headers}
                location = resp.headers.get("Location")
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
        if location is not None:
            # RFC 9725: the session URL is the instance's own, so PATCH and DELETE go straight there
            out["Location"] = inst.url + location if location.startswith("/") else location
        out["Streamd-Instance"] = inst.name
        return web.Response(status=status, body=data, headers={**self.checks.cors(), **out})

    def _redirect(self, inst: Instance, path: str, request: web.Request) -> web.Response:
        assert inst.url is not None
        location = inst.url + path + (f"?{request.query_string}" if request.query_string else "")
        return web.Response(status=307, headers={**self.checks.cors(), "Location": location,
                                                 "Streamd-Instance": inst.name})

    # ------------------------------------------------------------------------------------------ handlers
    async def whip_post(self, request: web.Request) -> web.Response:
        """Place a new WHIP session (the checks an instance would make come first, in its order)."""
        self.checks.authorize(request, "ingest")
        offer = await self.checks.read_body(request, SDP)
        requested = request.query.get("stream")
        if requested is not None and not valid_stream_id(requested):
            raise WhipError(400, "bad-stream-id", "stream ids are 1 to 64 characters of A-Za-z0-9_-")
        parse_offer(offer)
        if requested is not None and self.fleet.holder(requested) is not None:
            raise WhipError(409, "stream-in-use", f"stream {requested!r} belongs to a live session")
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            inst = self.fleet.choose(exclude=tried)
            if inst is None:
                break
            tried.add(inst.name)
            if self.config.mode == "redirect":
                self.placements += 1
                return self._redirect(inst, "/whip", request)
            key = self.fleet.reserve(inst)
            try:
                response = await self._forward(inst, "/whip", request, offer)
            except BaseException as exc:  # unreachable, or the client went away (cancelled): no placement
                self.fleet.release(inst, key)
                if not isinstance(exc, UpstreamError):
                    raise
                self.fleet.unreachable(inst)
                log.warning("instance %s unreachable (%s): trying another", inst.name, exc)
                continue
            if response.status == 503:  # full, draining or not ready after all: the next one may have room
                self.fleet.release(inst, key)
                self.fleet.refused_by(inst)
                continue
            if response.status == 201:
                self.fleet.confirm(inst, key, response.headers.get("Streamd-Stream-Id"))
                self.placements += 1
            else:
                self.fleet.release(inst, key)  # the client's own mistake: the same answer from any instance
            return response
        self.full += 1
        raise WhipError(503, "at-capacity", "no instance has room for a stream (every one is full, draining, not "
                        "ready or gone)", {"Retry-After": str(RETRY_AFTER_S)})

    async def whep_post(self, request: web.Request) -> web.Response:
        """Send a viewer to the instance that holds the stream."""
        self.checks.authorize(request, "view")
        offer = await self.checks.read_body(request, SDP)
        parse_viewer_offer(offer)
        stream_id = request.match_info.get("stream")
        inst = self.fleet.holder(stream_id) if stream_id else self.fleet.any_holder()
        if inst is None or inst.url is None:
            raise WhipError(404, "not-found", f"no live stream {stream_id!r}" if stream_id else "no live stream")
        path = f"/whep/{stream_id}" if stream_id else "/whep"
        if self.config.mode == "redirect":
            return self._redirect(inst, path, request)
        try:
            return await self._forward(inst, path, request, offer)
        except UpstreamError as exc:
            self.fleet.unreachable(inst)
            raise WhipError(503, "not-ready", f"the instance holding the stream cannot be reached: {exc}",
                            {"Retry-After": str(RETRY_AFTER_S)}) from None

    async def session_elsewhere(self, request: web.Request) -> web.Response:
        """PATCH/DELETE of a session: sessions live at their instance's URL (the Location), never here."""
        whep = request.path.startswith("/whep/")
        self.checks.authorize(request, "view" if whep else "ingest")
        raise WhipError(404, "session-not-found", f"no such {'WHEP' if whep else 'WHIP'} session here: the router "
                        "holds none; send PATCH and DELETE to the Location the POST answered")

    async def options(self, request: web.Request) -> web.Response:
        """CORS preflight and capability discovery, as an instance answers it."""
        if request.path.startswith("/whip/"):
            return self.checks.preflight("OPTIONS, PATCH, DELETE", {"Accept-Patch": SDPFRAG})
        if request.path.startswith("/whep/session/"):
            return self.checks.preflight("OPTIONS, DELETE", {})
        return self.checks.preflight("OPTIONS, POST", {"Accept-Post": SDP})

    def status(self) -> dict[str, Any]:
        """The fleet, for `GET /api/status`."""
        return {
            "router": {"mode": self.config.mode, "prefix_root": self.config.prefix_root,
                       "broker_connected": self.broker_connected, "status_max_age_s": self.config.status_max_age_s,
                       "max_instances": self.fleet.max_instances, "instances": len(self.fleet.instances),
                       "instances_refused": self.fleet.refused, "statuses_invalid": self.fleet.invalid,
                       "placements": self.placements, "refused_full": self.full},
            **self.fleet.snapshot(),
        }

    def build_app(self) -> web.Application:
        """The router's aiohttp application, on the instances' error path (edges/http.py)."""
        no_store = {"Cache-Control": "no-store"}

        async def livez(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"}, headers=no_store)

        async def readyz(request: web.Request) -> web.Response:
            if self.broker_connected:
                return web.json_response({"status": "ok"}, headers=no_store)
            return web.json_response({"status": "not-ready", "reason": "broker-unreachable"}, status=503,
                                     headers=no_store)

        async def status(request: web.Request) -> web.Response:
            self.checks.authorize(request, "view")
            return web.json_response(self.status(), headers=no_store)

        app = web.Application(middlewares=[error_middleware(self.checks)],
                              client_max_size=self.checks.max_body_bytes)
        for path in ("/whip", "/whip/{session}", "/whep", "/whep/{stream}", "/whep/session/{session}"):
            app.router.add_route("OPTIONS", path, self.options)
        app.router.add_post("/whip", self.whip_post)
        app.router.add_patch("/whip/{session}", self.session_elsewhere)
        app.router.add_delete("/whip/{session}", self.session_elsewhere)
        app.router.add_post("/whep", self.whep_post)
        app.router.add_post("/whep/{stream}", self.whep_post)
        app.router.add_delete("/whep/session/{session}", self.session_elsewhere)
        app.router.add_get("/api/status", status)
        app.router.add_get("/livez", livez)
        app.router.add_get("/readyz", readyz)
        return app


def settings_summary(http: HttpSettings) -> str:
    """One line naming the listener's bounds (logged at start)."""
    return (f"{http.max_connections} connections ({http.max_connections_per_client} per client), bodies "
            f"<= {http.max_body_bytes} bytes, headers within {http.header_timeout_s:g} s")
