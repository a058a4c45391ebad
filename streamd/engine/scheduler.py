"""The engine's scheduler (torch-free): streams, parameter mailboxes, windows, pacing, deadlines, admission.

The scheduler decides, one denoising step at a time, which stream runs next; the executor runs that step; the
scheduler commits the result. Like an LLM engine scheduling per iteration, this lets a stream with expensive
parameters (1000 steps a chunk) slow only itself: between any two of its steps another stream may run.

Which stream: every stream has a real-time deadline, the wall time its next output frame is due (its first
chunk is due at admission). Among the streams that can run (a chunk in progress, or a full conditioning window
and pacing allows it), the one furthest behind its deadline runs, with two refinements for overload:
- a stream whose chunk costs more engine time than the video it yields (its steps x its measured step time >
  chunk frames / fps) can never keep up, whatever the others do. Under live pacing it yields to every stream
  that can: it gets the engine time they leave, so its expensive parameters slow only itself;
- lateness counts only up to `EngineConfig.lateness_cap_s`: streams later than that are equally late and take
  turns, least recently run first, so no late stream takes every step.

Thread safety: the event loop calls `add_stream`, `remove_stream`, `push_frame`, `update_params`, `reset` and
`snapshot` at any moment; the engine thread calls `next_step` and `commit`. One lock guards all state and is
never held while a step runs, so no caller ever waits for the model.

Bounds: at most `max_streams` streams; per stream one conditioning window of live frames and one of own output
(`ConditioningWindow`), one window of arrival times, one pending parameter set (a newer update replaces it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .memory import AdmissionError, MemoryBudget
from .params import EngineConfig, StreamParams
from .window import ChunkPlan, ConditioningWindow, Source

F = TypeVar("F")  # a frame payload (the engine uses uint8 numpy arrays [H, W, 3]; the scheduler never looks)


@dataclass
class ChunkProgress:
    """The chunk a stream is generating: which, how far, since when."""

    plan: ChunkPlan[Any]
    params: StreamParams
    started: float
    seed: int
    step: int = 0  # steps done
    steps: int | None = None  # steps of its schedule (known once the executor ran the first)
    step_seconds: float | None = None  # duration of its latest step


@dataclass
class StreamState(Generic[F]):
    """Everything the scheduler holds for one stream."""

    stream_id: str
    height: int
    width: int
    params: StreamParams
    window: ConditioningWindow[F]
    admitted: float
    pending: StreamParams | None = None
    generation: int = 0
    active: ChunkProgress | None = None
    arrivals: dict[int, float] = field(default_factory=dict)  # live frame number -> arrival (one window's worth)
    frames_in: int = 0
    chunks_out: int = 0
    clock_start: float | None = None  # monotonic time of output frame `clock_frame` (live pacing)
    clock_frame: int = 0
    last_run: int = -1  # scheduler step count when it last ran (ties go to the least recently run)
    step_s: float | None = None  # moving average of its step time (engine seconds)
    chunk_steps: int | None = None  # steps of its latest chunk

    def sustainable(self, fps: float) -> bool:
        """Whether one chunk costs less engine time than the video it yields (unknown: assumed so)."""
        if self.step_s is None or self.chunk_steps is None:
            return True
        return self.chunk_steps * self.step_s <= self.window.chunk_frames / fps

    def deadline(self, fps: float) -> float:
        """When the stream's next output frame is due (monotonic seconds)."""
        if self.clock_start is None:
            return self.admitted
        return self.clock_start + (self.window.next_output - self.clock_frame) / fps

    @property
    def next_chunk(self) -> int:
        """Number of the chunk that will pick up a parameter change made now."""
        return self.window.chunks + (1 if self.active is not None else 0)


@dataclass(frozen=True)
class StepPlan(Generic[F]):
    """One denoising step for the executor to run."""

    stream_id: str
    generation: int
    height: int
    width: int
    chunk: ChunkPlan[F]
    params: StreamParams
    seed: int  # noise seed of the chunk
    step: int  # index of the step (0 = the chunk starts: encode and prefill first)
    steps: int | None  # the chunk's step count when known

    @property
    def begins(self) -> bool:
        """Whether this step starts its chunk."""
        return self.step == 0


@dataclass(frozen=True)
class StepResult:
    """What the executor reports after one step."""

    steps: int  # the chunk's step count
    seconds: float  # how long the step took
    frames: Sequence[Any] | None = None  # the decoded chunk, after its last step
    # after its last step: seconds the chunk spent per phase (encode, prefill, denoise = all its steps, decode)
    phases: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ChunkDone(Generic[F]):
    """A chunk the scheduler committed: its frames with numbers, timestamps and conditioning source."""

    stream_id: str
    generation: int
    chunk: int
    source: Source
    first_frame: int
    frames: Sequence[F]
    pts_ns: list[int]
    params: StreamParams
    cond_arrival: float | None  # arrival of the newest live conditioning frame (live chunks)
    cond_frame: int | None  # arrival number (0-based, this generation) of that frame (live chunks)
    started: float
    finished: float
    steps: int

    @property
    def seconds(self) -> float:
        """Wall time from the chunk's first step to its commit."""
        return self.finished - self.started


@dataclass(frozen=True)
class StreamSnapshot:
    """A stream as status and metrics show it."""

    stream_id: str
    generation: int
    chunks_out: int
    frames_in: int
    chunk: int | None  # chunk in progress
    step: int | None  # steps done in it
    steps: int | None
    step_seconds: float | None
    lateness_s: float  # how far behind its deadline (negative: ahead)
    params: StreamParams  # in effect: those of the chunk in progress, else of the latest boundary
    pending: bool  # a parameter change waits for the next chunk


def chunk_seed(params: StreamParams, stream_id: str, generation: int, chunk: int) -> int | None:
    """The noise seed of a chunk: reproducible per (seed, stream, generation, chunk); None without a seed."""
    if params.seed is None:
        return None
    key = f"{params.seed}/{stream_id}/{generation}/{chunk}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class Scheduler(Generic[F]):
    """Streams and their windows; picks the next denoising step. Thread-safe (one lock, never held long)."""

    def __init__(self, config: EngineConfig, budget: MemoryBudget, spatial_multiple: int = 16,
                 temporal_factor: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock  # monotonic seconds (a fake clock in tests)
        self.budget = budget
        self.spatial_multiple = spatial_multiple  # frame sides must be multiples of this (codec x patch)
        self.temporal_factor = temporal_factor
        self._lock = threading.Lock()
        # called (outside the lock) after every change that may let a stream run: the runner wakes its thread
        self.on_change: Callable[[], None] | None = None
        # whether a stream may start a chunk with these parameters (their prompts are encoded); None: always.
        # Called under the lock, so it must not block (engine/prompts.py queues what it lacks and returns).
        self.gate: Callable[[StreamParams], bool] | None = None
        self._streams: dict[str, StreamState[F]] = {}
        self._released: list[str] = []  # removed streams whose executor state must go (at most one per removal)
        self._steps = 0
        self._fresh_seeds = 0  # counter mixed into seeds of seedless chunks

    # ------------------------------------------------------------------------------------------ event loop side
    def add_stream(self, stream_id: str, footprint: int, height: int, width: int,
                   params: StreamParams | None = None) -> None:
        """Admit a stream at a working size, holding `footprint` bytes; raises AdmissionError (nothing changes)."""
        m = self.spatial_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(f"frame size {width}x{height} must be a positive multiple of {m} in each dimension")
        cfg = self.config
        with self._lock:
            if stream_id in self._streams:
                raise AdmissionError(f"stream {stream_id!r} exists already")
            if len(self._streams) >= cfg.max_streams:
                raise AdmissionError(f"the engine runs at most {cfg.max_streams} streams")
            self.budget.admit(stream_id, footprint)
            params = params or cfg.initial_params()
            window: ConditioningWindow[F] = ConditioningWindow(
                cfg.cond_latents, cfg.chunk_latents, cfg.fps, params.policy, cfg.min_fresh, self.temporal_factor)
            self._streams[stream_id] = StreamState(stream_id, height, width, params, window, self.clock())
        self._changed()

    def remove_stream(self, stream_id: str) -> bool:
        """Forget a stream (a chunk in progress is abandoned); False when it was unknown."""
        with self._lock:
            if self._streams.pop(stream_id, None) is None:
                return False
            self.budget.release(stream_id)
            self._released.append(stream_id)
            return True

    def push_frame(self, stream_id: str, frame: F, arrival: float | None = None) -> bool:
        """Record one live frame (already at the stream's size). KeyError for an unknown stream.

        Returns False when the window pushed out a frame that never conditioned a chunk.
        """
        with self._lock:
            state = self._stream(stream_id)
            number = state.window.live_received
            kept_all = state.window.push_live(frame)
            state.arrivals[number] = arrival if arrival is not None else self.clock()
            state.arrivals.pop(number - state.window.cond_frames, None)  # bound: one window of arrivals
            state.frames_in += 1
        self._changed()
        return kept_all

    def update_params(self, stream_ids: Sequence[str], changes: dict[str, Any],
                      skip_missing: bool = False) -> dict[str, tuple[StreamParams, int]]:
        """Queue `changes` for every stream in `stream_ids` at once; each applies at that stream's next chunk.

        Returns stream -> (its parameters once applied, the chunk that applies them). Validation happens for
        every stream before any changes: a ValueError (bad value) or KeyError (unknown stream, unless
        `skip_missing`) changes nothing.
        """
        with self._lock:
            staged = {}
            for sid in stream_ids:
                if skip_missing and sid not in self._streams:
                    continue
                state = self._stream(sid)
                staged[sid] = (state, (state.pending or state.params).updated(**changes))
            out = {}
            for sid, (state, new) in staged.items():
                state.pending = new
                out[sid] = (new, state.next_chunk)
        self._changed()
        return out

    def reset(self, stream_id: str) -> int:
        """Start the stream over from live input (a chunk in progress is abandoned); returns the new generation."""
        with self._lock:
            state = self._stream(stream_id)
            state.generation += 1
            state.window.reset()
            state.active = None
            state.clock_start = None
            state.admitted = self.clock()
            state.arrivals.clear()
            generation = state.generation
        self._changed()
        return generation

    def generation(self, stream_id: str) -> int | None:
        """The stream's generation, or None once it is gone."""
        with self._lock:
            state = self._streams.get(stream_id)
            return None if state is None else state.generation

    def frame_size(self, stream_id: str) -> tuple[int, int]:
        """The (height, width) of the stream's frames. KeyError for an unknown stream."""
        with self._lock:
            state = self._stream(stream_id)
            return state.height, state.width

    def stream_ids(self) -> list[str]:
        """Admitted streams, in admission order."""
        with self._lock:
            return list(self._streams)

    def params(self, stream_id: str) -> StreamParams:
        """The parameters the stream's next chunk will use."""
        with self._lock:
            state = self._stream(stream_id)
            return state.pending or state.params

    def snapshot(self) -> list[StreamSnapshot]:
        """Every stream's progress, for status and metrics."""
        now = self.clock()
        with self._lock:
            return [StreamSnapshot(
                s.stream_id, s.generation, s.chunks_out, s.frames_in,
                s.active.plan.chunk if s.active else None, s.active.step if s.active else None,
                s.active.steps if s.active else None, s.active.step_seconds if s.active else None,
                now - s.deadline(self.config.fps), s.active.params if s.active else s.params,
                s.pending is not None,
            ) for s in self._streams.values()]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _stream(self, stream_id: str) -> StreamState[F]:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(f"no stream {stream_id!r}") from None

    # ------------------------------------------------------------------------------------------ engine side
    def take_released(self) -> list[str]:
        """Streams whose executor state (buffers, chunk in progress) must be dropped; each returned once."""
        with self._lock:
            out, self._released = self._released, []
            return out

    def _due(self, state: StreamState[F], now: float) -> bool:
        """Whether pacing lets the stream start its next chunk now."""
        if not self.config.realtime or state.clock_start is None:
            return True
        ahead = state.deadline(self.config.fps) - now
        return ahead <= self.config.max_lead_s

    def _runnable(self, state: StreamState[F], now: float) -> bool:
        if state.active is not None:
            return True
        if not (state.window.ready() and self._due(state, now)):
            return False
        return self.gate is None or self.gate(state.pending or state.params)

    def notify(self) -> None:
        """Something outside the scheduler may let a stream run now (a prompt got encoded): wake the engine."""
        self._changed()

    def next_step(self, now: float | None = None) -> StepPlan[F] | None:
        """The next denoising step to run, or None when no stream can run now.

        Starting a chunk is its stream's chunk boundary: pending parameters take effect there, and the window
        plans the conditioning frames.
        """
        now = self.clock() if now is None else now
        cap = self.config.lateness_cap_s
        fps = self.config.fps
        paced = self.config.realtime
        with self._lock:
            candidates = [s for s in self._streams.values() if self._runnable(s, now)]
            if not candidates:
                return None
            # streams that can keep up first (under pacing), then furthest behind (capped), then least recently run
            state = max(candidates, key=lambda s: (not paced or s.sustainable(fps), min(now - s.deadline(fps), cap),
                                                   -s.last_run))
            self._steps += 1
            state.last_run = self._steps
            if state.active is None:
                if state.pending is not None:
                    state.params, state.pending = state.pending, None
                    state.window.policy = state.params.policy
                plan = state.window.plan()
                seed = chunk_seed(state.params, state.stream_id, state.generation, plan.chunk)
                if seed is None:
                    self._fresh_seeds += 1
                    seed = int.from_bytes(hashlib.blake2b(
                        f"{time.time_ns()}/{self._fresh_seeds}".encode(), digest_size=8).digest(), "little") >> 1
                state.active = ChunkProgress(plan, state.params, now, seed)
            a = state.active
            return StepPlan(state.stream_id, state.generation, state.height, state.width, a.plan, a.params, a.seed,
                            a.step, a.steps)

    def commit(self, plan: StepPlan[F], result: StepResult) -> ChunkDone[F] | None:
        """Record a step's result; returns the finished chunk after its last step.

        A result for a stream that was removed or reset meanwhile is discarded (None).
        """
        now = self.clock()
        with self._lock:
            state = self._streams.get(plan.stream_id)
            if state is None or state.generation != plan.generation or state.active is None:
                return None
            a = state.active
            a.step, a.steps, a.step_seconds = plan.step + 1, result.steps, result.seconds
            state.chunk_steps = result.steps
            state.step_s = result.seconds if state.step_s is None else 0.8 * state.step_s + 0.2 * result.seconds
            if result.frames is None:
                return None
            state.active = None
            refs = state.window.commit(a.plan, list(result.frames))
            state.chunks_out += 1
            if state.clock_start is None:  # the stream's clock starts with its first frame out
                state.clock_start, state.clock_frame = now, a.plan.first_output
            newest = a.plan.cond[-1].number if a.plan.source is Source.LIVE else None
            arrival = state.arrivals.get(newest) if newest is not None else None
            return ChunkDone(
                stream_id=state.stream_id, generation=state.generation, chunk=a.plan.chunk, source=a.plan.source,
                first_frame=a.plan.first_output, frames=result.frames, pts_ns=[r.pts_ns for r in refs],
                params=a.params, cond_arrival=arrival, cond_frame=newest,
                started=a.started, finished=now, steps=result.steps,
            )
