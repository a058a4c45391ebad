"""The daemon's lifecycle: load the model, start the engine and the edges, serve, shut down in order.

Start: model -> engine thread -> ZeroMQ publisher -> HTTP listener (listening only once the model is loaded).
Stop (SIGTERM/SIGINT only set a flag): refuse new sessions -> end every session (reason `shutdown`) -> stop
the HTTP listener -> stop the engine thread -> close the ZeroMQ socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import time
from enum import Enum
from typing import Any

from aiohttp import web

from . import __version__
from .config import ServeConfig
from .control import ReplyCache, handle_command
from .edges.mqtt import MqttControl
from .edges.systemd import Notifier, Watchdog
from .edges.http import StreamHooks, WhepEndpoint, WhipEndpoint, build_app
from .edges.metrics import CONTENT_TYPE, Metrics, Readings
from .edges.webrtc import restrict_host_addresses
from .edges.zmq import CurveConfig, FramePublisher
from .engine.core import EngineConfig, EngineCore, StreamParams
from .engine.runner import EngineRunner
from .pipeline import ContinuationPipeline

log = logging.getLogger("streamd")


class Daemon:
    """One streamd instance: engine, WHIP ingest, ZeroMQ publisher, health and metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state = "starting"  # starting -> online -> stopping -> offline
        self.pipeline: ContinuationPipeline | None = None
        self.runner: EngineRunner | None = None
        self.publisher: FramePublisher | None = None
        self.whip: WhipEndpoint | None = None
        self.whep: WhepEndpoint | None = None
        self.latency: dict[str, float] = {}  # stream -> latency of its newest live-conditioned chunk (bounded by streams)
        self._http: web.AppRunner | None = None
        self._publish_task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.metrics = Metrics(self._readings)
        self.replies = ReplyCache()  # one de-duplication cache for every command surface (MQTT and HTTP)
        self.mqtt: MqttControl | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self.instance = config.instance or socket.gethostname()
        self.notifier = Notifier()
        self._watchdog_task: asyncio.Task[None] | None = None
        self._fps_mark: tuple[float, int] = (time.monotonic(), 0)  # for the STATUS frames/s figure

    # ------------------------------------------------------------------------------------------ control
    def stream_ids(self) -> list[str]:
        """Streams of live sessions (the Controller protocol of control.py)."""
        return [s.stream_id for s in self.whip.sessions.values() if not s.closed] if self.whip else []

    async def set_params(self, stream_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Queue parameter changes for the stream's next chunk; returns its resulting parameters."""
        assert self.runner is not None
        params = await self.runner.call(lambda core: core.update_params(stream_id, **changes))
        return {k: v.value if isinstance(v, Enum) else v for k, v in dataclasses.asdict(params).items()}

    async def reset(self, stream_id: str) -> int:
        """Restart the stream from live input; nothing generated before is published after."""
        assert self.runner is not None and self.publisher is not None
        generation = await self.runner.call(lambda core: core.reset(stream_id))
        self.publisher.publish_event("stream-reset", stream_id, generation=generation, reason="command")
        self._mqtt_event("stream-reset", stream_id, generation=generation, reason="command")
        return generation

    async def stop_stream(self, stream_id: str) -> None:
        """End the stream's WHIP session (its client sees the peer connection close)."""
        session = next((s for s in (self.whip.sessions.values() if self.whip else []) if s.stream_id == stream_id),
                       None)
        if session is None:
            raise KeyError(stream_id)
        await session.close("stopped")

    def status(self) -> dict[str, Any]:
        """Daemon status for MQTT and /api/status."""
        bundle = self.pipeline.bundle if self.pipeline else None
        return {
            "state": self.state,
            "instance": self.instance,
            "streams": sorted(self.stream_ids()),
            "model": bundle.name if bundle else None,
            "model_embedded": bundle.embedded if bundle else None,
            "version": __version__,
            "stream_stats": {sid: {"latency_s": self.latency.get(sid)} for sid in self.stream_ids()},
        }

    async def _command(self, verb: str, payload: bytes) -> dict[str, Any]:
        return await handle_command(self, verb, payload, replies=self.replies)

    def _mqtt_event(self, event: str, stream: str, **fields: Any) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_event({"event": event, "stream": stream, "time_ns": time.time_ns(), **fields})

    # ------------------------------------------------------------------------------------------ readings
    def _readings(self) -> Readings:
        runner, pub = self.runner, self.publisher
        return {
            "dropped": dict(runner.drops) if runner else {},
            "generated": runner.frames_generated if runner else 0,
            "chunks": runner.chunks if runner else 0,
            "published": pub.published if pub else 0,
            "subscribers": pub.subscribers if pub else 0,
            "streams": sum(1 for s in self.whip.sessions.values() if s.went_live) if self.whip else 0,
            "ready": 1 if self.runner is not None else 0,
        }

    def _status_line(self) -> str:
        """One line for `systemctl status`: streams and generated frames/s since the last line."""
        now, frames = time.monotonic(), self.runner.frames_generated if self.runner else 0
        then, before = self._fps_mark
        self._fps_mark = (now, frames)
        fps = (frames - before) / (now - then) if now > then else 0.0
        return f"{self.state}: {len(self.stream_ids())} streams, {fps:.1f} frames/s"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the model is loaded and the engine thread makes progress."""
        if self.state == "starting" or self.runner is None:
            return False, "model-loading"
        if self.state in ("stopping", "offline"):
            return False, "shutting-down"
        if not self.runner.alive or self.runner.error is not None:
            return False, "engine-stopped"
        if time.monotonic() - self.runner.last_progress > self.config.engine.stall_timeout_s:
            return False, "engine-stalled"
        return True, ""

    # ------------------------------------------------------------------------------------------ stream hooks
    def _stream_params(self) -> StreamParams:
        e = self.config.engine
        return StreamParams(prompt=e.prompt, steps=e.steps, guidance=e.guidance)

    async def _open_stream(self, stream_id: str) -> None:
        assert self.runner is not None
        params = self._stream_params()
        await self.runner.call(lambda core: core.add_stream(stream_id, params))
        self.runner.open_slot(stream_id)

    async def _close_stream(self, stream_id: str, reason: str, was_live: bool) -> None:
        assert self.runner is not None and self.publisher is not None
        self.runner.close_slot(stream_id)
        if self.runner.alive:
            await self.runner.call(lambda core: core.remove_stream(stream_id))
        else:
            self.runner.core.remove_stream(stream_id)
        self.latency.pop(stream_id, None)
        if self.whep is not None:
            await self.whep.close_stream(stream_id)
        if was_live:
            self.publisher.publish_event("session-ended", stream_id, reason=reason)
            self._mqtt_event("session-ended", stream_id, reason=reason)
        self.publisher.forget_stream(stream_id)
        self.metrics.sessions.labels(reason).inc()
        if self.mqtt is not None:
            self.mqtt.notify_status()

    def _session_live(self, stream_id: str) -> None:
        assert self.pipeline is not None and self.publisher is not None
        bundle = self.pipeline.bundle
        self.publisher.publish_event("session-started", stream_id, width=bundle.width, height=bundle.height)
        self._mqtt_event("session-started", stream_id, width=bundle.width, height=bundle.height)
        if self.mqtt is not None:
            self.mqtt.notify_status()

    def _output_dropped(self, stream_id: str, frames: int) -> None:
        """Generated frames discarded because publishing fell behind: tell subscribers (seq has no gap)."""
        if self.publisher is not None and self.runner is not None and self.runner.current_generation(stream_id) is not None:
            self.publisher.publish_event("drops", stream_id, dropped=frames, reason="output-full")
            self._mqtt_event("drops", stream_id, dropped=frames, reason="output-full")

    def _push_frame(self, stream_id: str, frame: Any) -> None:
        assert self.runner is not None
        self.metrics.frames_received.inc()
        self.runner.push_frame(stream_id, frame)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model, start the engine and the edges; raises when a listener cannot bind."""
        cfg = self.config
        restrict_host_addresses(cfg.webrtc.host_addresses)
        m = cfg.mqtt
        if m.broker is not None:  # first, so that the broker sees "starting" while the model loads
            host, _, port = m.broker.rpartition(":")
            self.mqtt = MqttControl(self, host.strip("[]"), int(port), m.prefix or f"streamd/{self.instance}",
                                    username=m.username, password=m.password, tls=m.tls, ca_file=m.ca_file,
                                    status_interval_s=m.status_interval_s, replies=self.replies)
            self.mqtt.set_state("starting")
            self._mqtt_task = asyncio.create_task(self.mqtt.run())
        started = time.perf_counter()
        log.info("loading model %s", cfg.model.spec)
        self.pipeline = await asyncio.to_thread(ContinuationPipeline.from_spec, cfg.model.spec, cfg.model.device)
        bundle = self.pipeline.bundle
        log.info("model %s loaded in %.1f s on %s (%s)%s", bundle.name, time.perf_counter() - started,
                 self.pipeline.device, bundle.description,
                 " -- untrained: output is structured noise" if bundle.embedded else "")
        e = cfg.engine
        core = EngineCore(self.pipeline, EngineConfig(
            cond_latents=e.cond_latents, chunk_latents=e.chunk_latents, fps=e.fps, min_fresh=e.min_fresh,
            memory_budget_bytes=e.memory_budget_bytes, max_streams=cfg.max_streams, max_lead_s=e.max_lead_s,
        ))
        runner = EngineRunner(core, output_capacity=e.output_queue)

        def observe(out: Any) -> None:  # engine thread: latency from the newest live conditioning frame
            if out.cond_arrival is not None:
                self.metrics.chunk_latency.observe(time.monotonic() - out.cond_arrival)

        runner.on_chunk = observe
        runner.on_output_drop = self._output_dropped
        z = cfg.zmq
        curve = (CurveConfig(z.curve_secret_key, z.curve_public_key, z.curve_allowed_clients)
                 if z.curve_secret_key and z.curve_public_key and z.curve_allowed_clients else None)
        self.publisher = FramePublisher(z.endpoint, sndhwm=z.sndhwm, curve=curve, fps=e.fps)
        self.publisher.start()
        runner.start()
        self.runner = runner
        self._publish_task = asyncio.create_task(self._fan_out(runner))
        hooks = StreamHooks(
            open_stream=self._open_stream, close_stream=self._close_stream, session_live=self._session_live,
            push_frame=self._push_frame, readiness=self.readiness,
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE), max_streams=lambda: cfg.max_streams,
            command=self._command, status=self.status,
        )
        self.whip = WhipEndpoint(cfg.http, cfg.webrtc, hooks)
        self.whep = WhepEndpoint(self.whip, fps=e.fps)
        self._http = web.AppRunner(build_app(self.whip, hooks, self.whep), access_log=None, handle_signals=False)
        await self._http.setup()
        site = web.TCPSite(self._http, cfg.http.host, cfg.http.port)
        await site.start()
        self.state = "online"
        if self.mqtt is not None:
            self.mqtt.set_state("online")
        # READY only now: the model is loaded and every listener is bound
        self.notifier.ready(f"online: model {bundle.name}, http {cfg.http.host}:{cfg.http.port}")
        self._watchdog_task = asyncio.create_task(
            Watchdog(self.notifier, lambda: self.readiness()[0], self._status_line).run())
        log.info("listening on http://%s:%d (WHIP at /whip), publishing frames on %s", cfg.http.host,
                 cfg.http.port, self.publisher.endpoint)

    async def _fan_out(self, runner: EngineRunner) -> None:
        """Every generated chunk goes to ZeroMQ and to the stream's WHEP viewers (stale chunks are skipped)."""
        assert self.publisher is not None
        async for out in runner.outputs():
            if not runner.is_current(out):
                continue
            self.publisher.publish_chunk(out)
            if out.cond_arrival is not None:
                self.latency[out.stream_id] = time.monotonic() - out.cond_arrival
            if self.whep is not None:
                self.whep.offer_chunk(out.stream_id, out.frames, out.pts_ns)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop (they only set a flag)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)

    async def shutdown(self, engine_timeout_s: float = 30.0) -> bool:
        """Stop in order; returns False when the engine thread did not stop within the timeout."""
        self.state = "stopping"
        log.info("stopping")
        self.notifier.stopping()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        if self.mqtt is not None:
            self.mqtt.set_state("stopping")
        if self.whep is not None:
            await self.whep.close_all()
        if self.whip is not None:
            await self.whip.close_all("shutdown")
        if self._http is not None:
            await self._http.cleanup()
        stopped = True
        if self.runner is not None:
            stopped = await asyncio.to_thread(self.runner.stop, engine_timeout_s)
        if self._publish_task is not None:
            self._publish_task.cancel()
            await asyncio.gather(self._publish_task, return_exceptions=True)
        if self.publisher is not None:
            self.publisher.close()
        if self.mqtt is not None:
            await self.mqtt.close()  # publishes the retained "offline" itself: a clean disconnect sends no will
        if self._mqtt_task is not None:
            self._mqtt_task.cancel()
            await asyncio.gather(self._mqtt_task, return_exceptions=True)
        self.state = "offline"
        log.info("stopped")
        return stopped

    async def run(self) -> int:
        """start(), serve until a stop is requested, shutdown(); the exit status."""
        self.install_signal_handlers()
        try:
            await self.start()
        except BaseException:
            await self.shutdown()
            raise
        await self.stop_requested.wait()
        return 0 if await self.shutdown() else 1
