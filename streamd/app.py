"""The daemon's lifecycle: load the model, start the engine and the edges, serve, shut down in order.

Start: model -> warm-up step -> engine thread -> ZeroMQ publisher -> HTTP listener (listening only once the
model is loaded). Stop (the first SIGTERM/SIGINT only sets a flag; a second one exits at once): refuse new
sessions -> end every session concurrently (reason `shutdown`) -> stop the HTTP listener -> stop the engine
thread (it stops after the denoising step in progress, abandoning a chunk) -> close the ZeroMQ socket.

No control path waits for the engine: streams are admitted, removed, re-parameterised and reset through the
scheduler at once, and progress (readiness, the watchdog) is counted per denoising step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any

from aiohttp import web

from . import __version__
from .config import ServeConfig
from .control import ReplyCache, handle_command
from .edges.announce import Capacity, public_endpoint, public_url
from .edges.connections import BoundedAppRunner
from .edges.http import StreamHooks, build_app
from .edges.metrics import CONTENT_TYPE, Metrics, Readings
from .edges.mqtt import MqttControl
from .edges.systemd import Notifier, Watchdog
from .edges.webrtc import restrict_host_addresses
from .edges.whep import WhepEndpoint
from .edges.whip import WhipEndpoint
from .edges.zmq import CurveConfig, FramePublisher
from .engine.core import ChunkOutput, EngineCore, StepOutcome, StreamFailure
from .engine.ranks import RankGroup, start_group
from .engine.runner import EngineRunner
from .model.shape import run_plan
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
        # stream -> latency of its newest live-conditioned chunk (bounded by streams)
        self.latency: dict[str, float] = {}
        self._http: BoundedAppRunner | None = None
        self._publish_task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.publish_errors = 0  # chunks whose publishing (ZeroMQ or WHEP) raised
        self._publish_failed_at: float | None = None  # monotonic time of the newest publishing failure
        self.metrics = Metrics(self._readings)
        self.replies = ReplyCache()  # one de-duplication cache for every command surface (MQTT and HTTP)
        self.mqtt: MqttControl | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self.instance = config.instance or socket.gethostname()
        self.notifier = Notifier()
        self._watchdog_task: asyncio.Task[None] | None = None
        self._fps_mark: tuple[float, int] = (time.monotonic(), 0)  # for the STATUS frames/s figure
        self._signals = 0
        self.ranks: RankGroup | None = None  # worker ranks of a context-parallel engine
        self.rank_failure: str | None = None  # why the rank group broke (the daemon then exits non-zero)
        self._closing: set[asyncio.Task[None]] = set()  # sessions being ended by the engine (bounded by streams)
        self.draining = False  # no new sessions (drain command or SIGUSR1); live ones go on
        self._stream_bytes = 0  # what one stream at the model's size holds (set once the engine exists)

    # ------------------------------------------------------------------------------------------ control
    def stream_ids(self) -> list[str]:
        """Streams of live sessions (the Controller protocol of control.py)."""
        return self.whip.stream_ids() if self.whip else []

    async def set_params(
        self, stream_ids: list[str], changes: dict[str, Any], skip_missing: bool = False
    ) -> dict[str, Any]:
        """Queue parameter changes for every stream's next chunk in one update (no wait for the engine)."""
        assert self.runner is not None
        queued = self.runner.core.scheduler.update_params(stream_ids, changes, skip_missing=skip_missing)
        return {sid: {**params.as_json(), "applies_at_chunk": chunk} for sid, (params, chunk) in queued.items()}

    async def reset(self, stream_id: str) -> int:
        """Restart the stream from live input; nothing generated before is published after."""
        assert self.runner is not None and self.publisher is not None
        generation = self.runner.core.reset(stream_id)
        self.publisher.publish_event("stream-reset", stream_id, generation=generation, reason="command")
        self._mqtt_event("stream-reset", stream_id, generation=generation, reason="command")
        return generation

    async def stop_stream(self, stream_id: str) -> None:
        """End the stream's WHIP session (its client sees the peer connection close)."""
        session = self.whip.session_for(stream_id) if self.whip else None
        if session is None:
            raise KeyError(stream_id)
        await session.close("stopped")

    def set_draining(self, draining: bool) -> bool:
        """Stop (True) or resume (False) taking new WHIP sessions; live sessions go on. Announced at once."""
        if draining != self.draining:
            log.info("%s", "draining: new sessions are refused, live ones go on" if draining
                     else "no longer draining: new sessions are taken")
        self.draining = draining
        if self.mqtt is not None:
            self.mqtt.notify_status()
        return self.draining

    def capacity(self) -> Capacity:
        """Room for new streams now (announced for routers)."""
        budget = self.runner.core.scheduler.budget if self.runner else None
        return Capacity(max_streams=self.config.engine.max_streams,
                        streams=self.whip.slots_held() if self.whip else 0,
                        headroom_bytes=max(0, budget.total - budget.used) if budget else 0,
                        stream_bytes=self._stream_bytes)

    def status(self) -> dict[str, Any]:
        """Daemon status for MQTT and /api/status: streams, model, and step progress of every chunk."""
        bundle = self.pipeline.bundle if self.pipeline else None
        runner = self.runner
        progress = {s.stream_id: s for s in runner.core.scheduler.snapshot()} if runner else {}
        stats: dict[str, Any] = {}
        for sid in self.stream_ids():
            snap = progress.get(sid)
            stats[sid] = {
                "latency_s": self.latency.get(sid),
                "chunks": snap.chunks_out if snap else 0,
                "chunk": snap.chunk if snap else None,  # chunk in progress (None between chunks)
                "step": snap.step if snap else None,  # its steps done
                "steps": snap.steps if snap else None,  # its step count (known after its first step)
                "step_s": snap.step_seconds if snap else None,
                "lateness_s": round(snap.lateness_s, 3) if snap else None,
                "params": snap.params.as_json() if snap else None,  # in effect now
                "params_pending": snap.pending if snap else False,  # a change waits for the next chunk
            }
        return {
            "state": self.state,
            "instance": self.instance,
            "streams": sorted(self.stream_ids()),
            "model": bundle.name if bundle else None,
            "model_embedded": bundle.preset is not None if bundle else None,
            "model_trained": bundle.trained if bundle else None,
            "model_description": bundle.description if bundle else None,
            "version": __version__,
            "engine": {
                "steps": runner.steps if runner else 0,
                "step_s": runner.last_step_seconds if runner else None,
                "step_running_s": round(runner.step_running_for(), 3) if runner else 0.0,
            },
            "stream_stats": stats,
            # listeners off loopback without authentication by explicit opt-out (allow_unauthenticated)
            "unauthenticated": self.config.unauthenticated(),
            # for routers (protocols/mqtt-control.md section 4.1): where to reach us, and whether we take more
            "url": public_url(self.config.http),
            "zmq_endpoint": public_endpoint(self.config.zmq),
            "ready": self.readiness()[0],
            "draining": self.draining,
            "capacity": self.capacity().as_json(),
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
            # frames refused at ingest (sizes outside 2..4096 px, undecodable) and those the engine dropped
            "dropped": {**(dict(runner.drops) if runner else {}),
                        "bad-size": self.whip.frames_refused if self.whip else 0},
            "generated": runner.frames_generated if runner else 0,
            "chunks": runner.chunks if runner else 0,
            "published": pub.published if pub else 0,
            "subscribers": pub.subscribers if pub else 0,
            "streams": len(self.whip.live_streams()) if self.whip else 0,
            "ready": 1 if self.runner is not None else 0,
            "steps": runner.steps if runner else 0,
            "publish_errors": self.publish_errors,
            "progress": [(s.stream_id, s.step or 0, s.steps or 0) for s in runner.core.scheduler.snapshot()]
            if runner else [],
            "http": self._http_readings(),
        }

    def _http_readings(self) -> dict[str, int]:
        checks = self.whip.checks if self.whip else None
        bounds = self._http.bounds if self._http else None
        return {
            "auth_failures": checks.auth_failures if checks else 0,
            "auth_throttled": checks.auth_throttled if checks else 0,
            "connections_refused": bounds.refused if bounds else 0,
            "header_timeouts": bounds.timed_out if bounds else 0,
            "connections_open": bounds.total if bounds else 0,
        }

    def _status_line(self) -> str:
        """One line for `systemctl status`: streams and generated frames/s since the last line."""
        now, frames = time.monotonic(), self.runner.frames_generated if self.runner else 0
        then, before = self._fps_mark
        self._fps_mark = (now, frames)
        fps = (frames - before) / (now - then) if now > then else 0.0
        return f"{self.state}: {len(self.stream_ids())} streams, {fps:.1f} frames/s"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the model is loaded, no denoising step hangs, and output goes out.

        A step running longer than `engine.stall_timeout_s` is a stall; a slow chunk of steady steps is not.
        A publishing failure in the last `stall_timeout_s` turns readiness red until publishing works again.
        """
        if self.state == "starting" or self.runner is None:
            return False, "model-loading"
        if self.state in ("stopping", "offline"):
            return False, "shutting-down"
        if not self.runner.alive or self.runner.error is not None:
            return False, "engine-stopped"
        timeout = self.config.engine.stall_timeout_s
        if self.runner.step_running_for() > timeout:
            return False, "engine-stalled"
        if self._publish_task is None or self._publish_task.done():
            return False, "output-stopped"
        if self._publish_failed_at is not None and time.monotonic() - self._publish_failed_at < timeout:
            return False, "output-failing"
        return True, ""

    # ------------------------------------------------------------------------------------------ stream hooks
    async def _open_stream(self, stream_id: str) -> None:
        assert self.runner is not None
        self.runner.core.add_stream(stream_id, self.config.engine.initial_params())
        if self.mqtt is not None:  # a slot is taken: routers must see it before they place the next session
            self.mqtt.notify_status()

    async def _close_stream(self, stream_id: str, reason: str, was_live: bool) -> None:
        assert self.runner is not None and self.publisher is not None
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
        live = self.runner is not None and self.runner.current_generation(stream_id) is not None
        if self.publisher is not None and live:
            self.publisher.publish_event("drops", stream_id, dropped=frames, reason="output-full")
            self._mqtt_event("drops", stream_id, dropped=frames, reason="output-full")

    def _stream_failed(self, failure: StreamFailure) -> None:
        """The engine ended a stream (its step ran out of memory; its buffers are already freed): end its session,
        which publishes `session-ended` with the failure's reason. Every other stream goes on."""
        session = self.whip.session_for(failure.stream_id) if self.whip else None
        if session is not None:
            task = asyncio.create_task(session.close(failure.reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _push_frame(self, stream_id: str, frame: Any) -> None:
        assert self.runner is not None
        self.metrics.frames_received.inc()
        self.runner.push_frame(stream_id, frame)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model, start the engine and the edges; raises when a listener cannot bind."""
        cfg = self.config
        for listener in cfg.unauthenticated():  # the explicit opt-outs: say so once, loudly
            where = {"http": f"http {cfg.http.host}:{cfg.http.port}", "zmq": f"zmq {cfg.zmq.endpoint}",
                     "mqtt": f"mqtt broker {cfg.mqtt.broker}"}[listener]
            log.warning("%s is reachable off loopback without authentication (%s.allow_unauthenticated = true)",
                        where, listener)
        for warning in cfg.secret_file_warnings(os.environ.get("CREDENTIALS_DIRECTORY")):
            log.warning("%s", warning)
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
        # the memory plan first: a daemon that cannot fit is refused (PlanError, with the cheapest fix) before a
        # single weight loads; its stream budget is what admission admits streams from
        m = cfg.model
        plan = await asyncio.to_thread(
            run_plan, m.spec, m.device, ranks=cfg.engine.context_parallel, max_streams=cfg.engine.max_streams,
            weights=m.weights, text_encoder=m.text_encoder, shard_weights=m.shard_weights, gpu_memory=m.gpu_memory,
            cond_latents=cfg.engine.cond_latents, chunk_latents=cfg.engine.chunk_latents)
        log.info("memory plan: %.2f GiB of %.2f GiB usable per rank, %d stream(s) fit (weights %s%s, text encoder "
                 "on the %s)", plan.total / 2**30, plan.usable / 2**30, plan.streams_that_fit, m.weights,
                 ", sharded" if plan.sharded else "", "GPU" if plan.text_on_gpu else "CPU")
        if cfg.engine.context_parallel > 1:  # the workers load their DiT while this process loads the model
            self.ranks = start_group(cfg.engine.context_parallel, str(cfg.model.spec), cfg.model.device,
                                     cfg.engine.collective_timeout_s, cfg.model.distilled,
                                     shard_weights=plan.sharded, weights=m.weights)
            self.ranks.exit_on_failure = True
            loop = asyncio.get_running_loop()
            self.ranks.on_failure = lambda reason: loop.call_soon_threadsafe(self._ranks_failed, reason)
        log.info("loading model %s", cfg.model.spec)
        self.pipeline = await asyncio.to_thread(ContinuationPipeline.from_spec, cfg.model.spec, cfg.model.device,
                                                distilled=cfg.model.distilled,
                                                text_device=None if plan.text_on_gpu else "cpu",
                                                weights=m.weights)
        if self.ranks is not None:
            await asyncio.to_thread(self.ranks.connect, self.pipeline.dit, plan.sharded)
        bundle = self.pipeline.bundle
        log.info("model %s loaded in %.1f s on %s (%s)%s", bundle.name, time.perf_counter() - started,
                 self.pipeline.device, bundle.description,
                 "" if bundle.trained else " -- random weights: output is structured noise")
        e = cfg.engine
        if cfg.model.compile:  # the graphs are built by the warm-up below, before READY
            from .model.compiled import CompileOptions, compile_blocks

            cache_dir = compile_blocks(self.pipeline.dit, CompileOptions(cfg.model.compile_mode,
                                                                         cfg.model.compile_cache_dir))
            log.info("compiling the DiT blocks (mode %s, cache %s) in the warm-up", cfg.model.compile_mode,
                     cache_dir)
        core = EngineCore(self.pipeline, e, ranks=self.ranks, budget=plan.stream_budget)
        warm = await asyncio.to_thread(core.executor.warm_up)
        log.info("warm-up at %dx%d took %.2f s%s", bundle.width, bundle.height, warm,
                 " (compiled blocks)" if self.pipeline.dit.compiled else "")
        runner = EngineRunner(core, output_capacity=e.output_queue)
        self._stream_bytes = core.executor.footprint(bundle.height, bundle.width).total

        def observe_chunk(out: ChunkOutput) -> None:  # engine thread: latency from the newest live frame
            if out.cond_arrival is not None:
                self.metrics.chunk_latency.observe(time.monotonic() - out.cond_arrival)

        def observe_step(outcome: StepOutcome) -> None:  # engine thread
            self.metrics.step_seconds.observe(outcome.result.seconds)
            for phase, seconds in (outcome.result.phases or {}).items():  # a chunk's last step
                self.metrics.chunk_phase_seconds.labels(phase).observe(seconds)

        runner.on_chunk = observe_chunk
        runner.on_step = observe_step
        runner.on_output_drop = self._output_dropped
        runner.on_stream_failed = self._stream_failed
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
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE), max_streams=lambda: e.max_streams,
            command=self._command, status=self.status, frame_size=core.frame_size,
            draining=lambda: self.draining,
        )
        self.whip = WhipEndpoint(cfg.http, cfg.webrtc, hooks)
        self.whep = WhepEndpoint(self.whip, fps=e.fps, setup_timeout_s=cfg.webrtc.whep_setup_timeout_s)
        self._http = BoundedAppRunner(build_app(self.whip, hooks, self.whep), cfg.http, access_log=None,
                                      handle_signals=False)
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
        """Every generated chunk goes to ZeroMQ and to the stream's WHEP viewers (stale chunks are skipped).

        A chunk whose publishing raises is logged and counted, and turns readiness (and so the watchdog) red
        for `engine.stall_timeout_s`; the loop goes on with the next chunk, so output never stops silently.
        """
        assert self.publisher is not None
        async for out in runner.outputs():
            if not runner.is_current(out):
                continue
            try:
                started = time.perf_counter()
                self.publisher.publish_chunk(out)
                if self.whep is not None:
                    self.whep.offer_chunk(out.stream_id, out.frames, out.pts_ns)
                self.metrics.chunk_phase_seconds.labels("publish").observe(time.perf_counter() - started)
            except Exception:
                self.publish_errors += 1
                self._publish_failed_at = time.monotonic()
                log.exception("stream %s: publishing chunk %d failed", out.stream_id, out.chunk)
                continue
            self._publish_failed_at = None
            if out.cond_arrival is not None:
                self.latency[out.stream_id] = time.monotonic() - out.cond_arrival

    def _ranks_failed(self, reason: str) -> None:
        """A rank of the context-parallel group died or hung: stop, and exit non-zero (systemd restarts us)."""
        self.rank_failure = reason
        self.stop_requested.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM/SIGINT asks for a graceful stop; a second one exits at once."""
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping (send it again to exit at once)", sig.name)
            self.stop_requested.set()
            return
        log.warning("%s again: exiting now", sig.name)
        os._exit(1)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop (they only set a flag); a second one forces exit."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # SIGUSR1 drains (as the drain command does): `systemctl kill -s USR1 streamd@0` before maintenance
        loop.add_signal_handler(signal.SIGUSR1, self.set_draining, True)

    async def shutdown(self, engine_timeout_s: float = 30.0) -> bool:
        """Stop in order; returns False when the engine thread did not stop within the timeout."""
        self.state = "stopping"
        log.info("stopping")
        self.notifier.stopping()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        if self.mqtt is not None:
            self.mqtt.set_state("stopping")
        # every viewer and session ends at once: a shutdown costs one session's close, not their sum
        await asyncio.gather(self.whep.close_all() if self.whep else asyncio.sleep(0),
                             self.whip.close_all("shutdown") if self.whip else asyncio.sleep(0))
        if self._http is not None:
            await self._http.cleanup()
        stopped = True
        if self.runner is not None:
            stopped = await asyncio.to_thread(self.runner.stop, engine_timeout_s)
        if self.ranks is not None:  # after the engine: `stop` to every worker rank, then wait for them
            await asyncio.to_thread(self.ranks.close, 10.0, stopped)
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
        stopped = await self.shutdown()
        return 0 if stopped and self.rank_failure is None else 1
