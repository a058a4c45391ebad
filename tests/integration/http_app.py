"""The daemon's real HTTP surface (build_app, WHIP, WHEP, bounded connections) on a loopback port, in-process,
over stand-in engine hooks: for tests of the HTTP edge that need no model. A stand-in engine admits streams
after `open_delay_s` (the real engine answers at once; the delay widens races for the tests) and refuses a
duplicate id the way the real scheduler does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streamd.config import HttpSettings, WebRtcSettings
from streamd.e2e import LOOPBACK, free_port
from streamd.edges.connections import BoundedAppRunner
from streamd.edges.http import StreamHooks, build_app
from streamd.edges.whep import WhepEndpoint
from streamd.edges.whip import WhipEndpoint
from streamd.engine.memory import AdmissionError


@dataclass
class FakeEngine:
    """Streams admitted by the stand-in engine."""

    open_delay_s: float = 0.0
    max_streams: int = 4
    streams: set[str] = field(default_factory=set)
    commands: list[tuple[str, bytes]] = field(default_factory=list)

    async def open_stream(self, stream_id: str) -> None:
        await asyncio.sleep(self.open_delay_s)
        if stream_id in self.streams:
            raise AdmissionError(f"stream {stream_id!r} exists already")
        self.streams.add(stream_id)

    async def close_stream(self, stream_id: str, reason: str, was_live: bool) -> None:
        self.streams.discard(stream_id)

    async def command(self, verb: str, body: bytes) -> dict[str, Any]:
        self.commands.append((verb, body))
        if verb == "boom":
            raise RuntimeError("a bug in a command handler")
        if verb != "reset":
            return {"v": 1, "ok": False, "verb": verb, "error": "unknown-verb", "detail": "unknown verb"}
        return {"v": 1, "ok": True, "verb": verb, "streams": {}}

    def hooks(self) -> StreamHooks:
        return StreamHooks(
            open_stream=self.open_stream, close_stream=self.close_stream, session_live=lambda s: None,
            push_frame=lambda s, f: None, readiness=lambda: (True, ""),
            metrics=lambda: (b"# metrics\n", "text/plain; version=0.0.4; charset=utf-8"),
            max_streams=lambda: self.max_streams, command=self.command,
            status=lambda: {"state": "online", "streams": sorted(self.streams)})


@dataclass
class Served:
    """A running HTTP surface."""

    base: str
    port: int
    engine: FakeEngine
    whip: WhipEndpoint
    runner: BoundedAppRunner
    whep: WhepEndpoint


@contextlib.asynccontextmanager
async def serve(http: HttpSettings | None = None, whep_setup_timeout_s: float = 5.0,
                **engine: Any) -> AsyncIterator[Served]:
    """Serve the HTTP surface on a free loopback port for the duration of the block."""
    port = free_port()
    settings = HttpSettings(**{**(http.__dict__ if http else {}), "host": LOOPBACK, "port": port})
    fake = FakeEngine(**engine)
    hooks = fake.hooks()
    whip = WhipEndpoint(settings, WebRtcSettings(setup_timeout_s=5, media_timeout_s=3), hooks)
    whep = WhepEndpoint(whip, fps=15.0, setup_timeout_s=whep_setup_timeout_s)
    runner = BoundedAppRunner(build_app(whip, hooks, whep), settings, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield Served(f"http://{LOOPBACK}:{port}", port, fake, whip, runner, whep)
    finally:
        await asyncio.gather(whep.close_all(), whip.close_all("shutdown"))
        await runner.cleanup()
