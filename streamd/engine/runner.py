"""EngineRunner: hosts the EngineCore in its own thread and is the only bridge between it and asyncio.

Into the engine, nothing waits: frames, new and ended streams, parameters and resets go straight to the
scheduler (under its lock, never held while a step runs) and take effect at once or at the stream's next chunk
boundary. Out of the engine: a bounded queue of generated chunks (oldest dropped and counted when the network
falls behind). The thread checks its stop flag between denoising steps, so stopping never waits for a chunk.

Progress is counted per denoising step: `steps` and `step_running_for()` feed readiness and the systemd
watchdog, so a slow but steady chunk is healthy and a step that hangs is a stall.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable

import numpy as np

from ..lograte import is_logged
from .core import ChunkOutput, EngineCore, FrameError, StepOutcome, StreamFailure

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.02  # how long the thread sleeps when no stream can run (woken early by new frames)


class EngineRunner:
    """Runs `core.step()` in a thread; chunks out through a bounded queue."""

    def __init__(self, core: EngineCore, output_capacity: int = 8) -> None:
        self.core = core
        self.output_capacity = output_capacity  # chunks waiting for the network; oldest dropped beyond
        self._outputs: deque[ChunkOutput] = deque()
        self._outputs_lock = threading.Lock()
        self._wake = threading.Event()
        core.scheduler.on_change = self._wake.set  # new streams, frames, parameters or resets wake an idle thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_ready: asyncio.Event | None = None
        self.drops: Counter[str] = Counter()  # reason -> frames dropped
        self.chunks = 0
        self.frames_generated = 0
        self.steps = 0  # denoising steps run
        self.last_step_seconds: float | None = None
        self._step_started: float | None = None  # monotonic start of the step in progress (None between steps)
        self.error: BaseException | None = None
        self.on_step: Callable[[StepOutcome], None] | None = None  # called in the engine thread (metrics)
        self.on_chunk: Callable[[ChunkOutput], None] | None = None  # called in the engine thread (metrics)
        self.failures: Counter[str] = Counter()  # reason -> streams the engine ended (out-of-memory)
        # called on the event loop when the engine ended a stream (its step ran out of memory)
        self.on_stream_failed: Callable[[StreamFailure], None] | None = None
        # called on the event loop with (stream id, frames) when a queued chunk is dropped for a newer one
        self.on_output_drop: Callable[[str, int], None] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the engine thread; outputs are signalled to `loop` (default: the running loop)."""
        self._loop = loop or asyncio.get_running_loop()
        self._output_ready = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="streamd-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the step in progress (a chunk is abandoned); returns whether it stopped within `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def step_running_for(self) -> float:
        """Seconds the denoising step in progress has run (0 between steps and when idle)."""
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    # ------------------------------------------------------------------------------------------ inputs
    def push_frame(self, stream_id: str, frame: np.ndarray) -> bool:
        """Hand one frame to the engine without blocking; False when it was dropped or pushed out an unused one."""
        try:
            accepted = self.core.push_frame(stream_id, frame)
        except KeyError:
            self.drops["unknown-stream"] += 1
            return False
        except FrameError as exc:
            self.drops["invalid"] += 1
            n = self.drops["invalid"]
            if is_logged(n):  # the 1st, 2nd, 4th, 8th...: a client sending garbage cannot flood the log
                log.warning("stream %s: dropped a frame (%d invalid so far): %s", stream_id, n, exc)
            return False
        if not accepted:
            self.drops["superseded"] += 1
        return accepted

    # ------------------------------------------------------------------------------------------ outputs
    def _emit(self, out: ChunkOutput) -> None:
        with self._outputs_lock:
            old = self._outputs.popleft() if len(self._outputs) >= self.output_capacity else None
            if old is not None:
                self.drops["output-full"] += len(old.frames)
            self._outputs.append(out)
        if old is not None and self._loop is not None and self.on_output_drop is not None:
            self._loop.call_soon_threadsafe(self.on_output_drop, old.stream_id, len(old.frames))
        if self._loop is not None and self._output_ready is not None:
            self._loop.call_soon_threadsafe(self._output_ready.set)

    def current_generation(self, stream_id: str) -> int | None:
        """The stream's generation (None once removed)."""
        return self.core.scheduler.generation(stream_id)

    def is_current(self, out: ChunkOutput) -> bool:
        """Whether a chunk may still be emitted (its stream exists and was not reset since)."""
        return self.current_generation(out.stream_id) == out.generation

    def get_nowait(self) -> ChunkOutput | None:
        """The oldest queued chunk that is still current, or None."""
        with self._outputs_lock:
            while self._outputs:
                out = self._outputs.popleft()
                if self.is_current(out):
                    return out
        return None

    async def outputs(self) -> AsyncIterator[ChunkOutput]:
        """Yield generated chunks as they come (stale ones skipped), until the runner stops."""
        assert self._output_ready is not None, "start() the runner first"
        while not (self._stop.is_set() and not self._outputs):
            out = self.get_nowait()
            if out is not None:
                yield out
                continue
            self._output_ready.clear()
            if self._outputs:
                continue
            try:
                await asyncio.wait_for(self._output_ready.wait(), timeout=0.5)
            except TimeoutError:
                pass

    def _stream_failed(self, failure: StreamFailure) -> None:
        """One stream ended in the engine (it ran out of memory): count it and tell the event loop."""
        self.failures[failure.reason] += 1
        log.error("stream %s ended: %s (%s)", failure.stream_id, failure.reason, failure.message)
        if self._loop is not None and self.on_stream_failed is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.on_stream_failed, failure)

    # ------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._step_started = time.monotonic()
                outcome = self.core.step(wait_for_prompts=False)
                self._step_started = None
                if outcome is None:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                if outcome.failure is not None:  # the stream is gone; the others go on
                    self._stream_failed(outcome.failure)
                    continue
                self.steps += 1
                self.last_step_seconds = outcome.result.seconds
                if self.on_step is not None:
                    self.on_step(outcome)
                out = outcome.chunk
                if out is None:
                    continue
                self.chunks += 1
                self.frames_generated += len(out.frames)
                if self.on_chunk is not None:
                    self.on_chunk(out)
                self._emit(out)
        except BaseException as exc:  # a crashed engine must be visible: readiness and the watchdog use this
            self.error = exc
            log.exception("engine thread failed")
        finally:
            self._step_started = None
            if self._loop is not None and self._output_ready is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._output_ready.set)
