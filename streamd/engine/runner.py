"""EngineRunner: hosts the EngineCore in its own thread and is the only bridge to asyncio.

Into the engine: per stream, a latest-frames slot holding at most one conditioning window of frames (newest wins;
what is pushed out is counted as dropped), and a bounded queue of control commands run between chunks.
Out of the engine: a bounded queue of generated chunks (oldest dropped and counted when the network falls
behind). The asyncio side never blocks on the GPU, and the GPU never waits on the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, TypeVar

import numpy as np

from .core import ChunkOutput, EngineCore, FrameError

log = logging.getLogger(__name__)
R = TypeVar("R")

COMMAND_QUEUE_SIZE = 256  # control commands waiting for a chunk boundary; more is an error, not a wait
IDLE_WAIT_S = 0.02  # how long the thread sleeps when no stream is ready (woken early by new frames)


class EngineBusy(RuntimeError):
    """The command queue is full."""


@dataclass
class _Frame:
    frame: np.ndarray
    arrival: float


class FrameSlot:
    """The newest frames of one stream, at most `capacity` (one conditioning window). Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._frames: deque[_Frame] = deque()
        self._lock = threading.Lock()
        self.superseded = 0  # frames pushed out before the engine took them

    def put(self, frame: np.ndarray) -> bool:
        """Store a frame; returns False when an older one had to be dropped for it."""
        with self._lock:
            dropped = len(self._frames) >= self.capacity
            if dropped:
                self._frames.popleft()
                self.superseded += 1
            self._frames.append(_Frame(frame, time.monotonic()))
            return not dropped

    def take(self) -> list[_Frame]:
        """Remove and return every stored frame, oldest first."""
        with self._lock:
            frames = list(self._frames)
            self._frames.clear()
            return frames


class EngineRunner:
    """Runs `core.step()` in a thread; frames and commands in, chunks out."""

    def __init__(self, core: EngineCore, output_capacity: int = 8) -> None:
        self.core = core
        self.output_capacity = output_capacity  # chunks waiting for the network; oldest dropped beyond
        self._slots: dict[str, FrameSlot] = {}
        self._slots_lock = threading.Lock()
        self._commands: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue(
            COMMAND_QUEUE_SIZE
        )
        self._outputs: deque[ChunkOutput] = deque()
        self._outputs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._output_ready: asyncio.Event | None = None
        self.drops: Counter[str] = Counter()  # reason -> frames dropped
        self.chunks = 0
        self.frames_generated = 0
        self.last_progress = time.monotonic()  # last time the engine finished a chunk or found nothing to do
        self.busy_since: float | None = None  # start of the chunk in progress
        self.error: BaseException | None = None
        self.on_chunk: Callable[[ChunkOutput], None] | None = None  # called in the engine thread (metrics)
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
        """Ask the thread to finish its chunk and stop; returns whether it stopped within `timeout`."""
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

    def stalled_for(self) -> float:
        """Seconds the current chunk has been running (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    # ------------------------------------------------------------------------------------------ inputs
    def open_slot(self, stream_id: str) -> None:
        """Create the stream's frame slot (call after the stream was added to the core)."""
        with self._slots_lock:
            self._slots[stream_id] = FrameSlot(self.core.config.cond_latents * 4 - 3)

    def close_slot(self, stream_id: str) -> None:
        """Forget the stream's frame slot."""
        with self._slots_lock:
            self._slots.pop(stream_id, None)

    def push_frame(self, stream_id: str, frame: np.ndarray) -> bool:
        """Hand one frame to the engine without blocking; False when it replaced an unconsumed frame."""
        with self._slots_lock:
            slot = self._slots.get(stream_id)
        if slot is None:
            self.drops["unknown-stream"] += 1
            return False
        accepted = slot.put(frame)
        if not accepted:
            self.drops["superseded"] += 1
        self._wake.set()
        return accepted

    async def call(self, fn: Callable[[EngineCore], R]) -> R:
        """Run `fn(core)` in the engine thread at the next chunk boundary and await its result."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        try:
            self._commands.put_nowait((lambda: fn(self.core), future))
        except queue.Full:
            raise EngineBusy("the engine has too many pending commands") from None
        self._wake.set()
        return await asyncio.wrap_future(future)

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

    def _purge(self, stream_id: str, generation: int) -> None:
        """Drop queued chunks of `stream_id` older than `generation` (after a reset or a removal)."""
        with self._outputs_lock:
            kept = [o for o in self._outputs if o.stream_id != stream_id or o.generation >= generation]
            self._outputs = deque(kept)

    def current_generation(self, stream_id: str) -> int | None:
        """The stream's generation (None once removed). Read across threads: an int read is atomic."""
        state = self.core.streams.get(stream_id)
        return None if state is None else state.generation

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
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------------------------------ the thread
    def _drain_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # the caller gets the error; the engine goes on
                future.set_exception(exc)

    def _drain_frames(self) -> None:
        with self._slots_lock:
            slots = list(self._slots.items())
        for stream_id, slot in slots:
            for item in slot.take():
                try:
                    if not self.core.push_frame(stream_id, item.frame, item.arrival):
                        self.drops["superseded"] += 1
                except KeyError:
                    self.drops["unknown-stream"] += 1
                except FrameError as exc:
                    self.drops["invalid"] += 1
                    log.warning("stream %s: dropped a frame: %s", stream_id, exc)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_commands()
                self._drain_frames()
                self.busy_since = time.monotonic()
                out = self.core.step()
                self.busy_since = None
                self.last_progress = time.monotonic()
                if out is None:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                self.chunks += 1
                self.frames_generated += len(out.frames)
                if self.on_chunk is not None:
                    self.on_chunk(out)
                self._emit(out)
            self._drain_commands()  # answer what is left rather than leave callers waiting
        except BaseException as exc:  # a crashed engine must be visible: readiness and the watchdog use this
            self.error = exc
            log.exception("engine thread failed")
        finally:
            self.busy_since = None
            if self._loop is not None and self._output_ready is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._output_ready.set)
