"""EngineCore: one denoising step is plan -> execute -> commit. Synchronous; no threads, no asyncio.

The scheduler (torch-free) plans the step, the executor (torch) runs it, the scheduler commits the result. The
runner calls `step()` from its thread; file continuation and benchmarks call it directly. Everything that
changes streams (add, remove, frames, parameters, reset) goes to the scheduler and takes effect at once, from any
thread, without waiting for a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..pipeline import ContinuationPipeline, ProgressFn
from .executor import Executor
from .memory import MemoryBudget, is_out_of_memory
from .params import EngineConfig, StreamParams
from .prompts import PromptEncoder
from .ranks import RankGroup
from .scheduler import ChunkDone, Scheduler, StepPlan, StepResult

OUT_OF_MEMORY = "out-of-memory"  # the session-ended reason of a stream whose step ran out of memory
MAX_FRAME_SIDE = 4096  # larger input frames are refused rather than resized (a 16K frame is a mistake or abuse)

ChunkOutput = ChunkDone[np.ndarray]


class FrameError(ValueError):
    """An input frame the engine cannot use (wrong type, shape or size)."""


@dataclass(frozen=True)
class StreamFailure:
    """A stream the engine ended because its step failed in a way that is its own (memory ran out)."""

    stream_id: str
    reason: str  # "out-of-memory"
    message: str


@dataclass(frozen=True)
class StepOutcome:
    """What one `step()` did: the step it ran, how it went, and the chunk it finished (if any).

    `failure`: the step ran out of memory and its stream was ended (its buffers freed); `result` then carries
    the step's time and no frames, and `chunk` is None.
    """

    plan: StepPlan[np.ndarray]
    result: StepResult
    chunk: ChunkOutput | None
    failure: StreamFailure | None = None


class EngineCore:
    """Scheduler + executor. `step()` runs on one thread; the stream methods may be called from any thread."""

    def __init__(self, pipeline: ContinuationPipeline, config: EngineConfig | None = None,
                 ranks: RankGroup | None = None, budget: int | None = None) -> None:
        """`ranks`: worker ranks of a context-parallel group (connected, see ranks.py); None for one process.

        Streams are admitted from `engine.memory_budget_bytes` when set, else from `budget` (the daemon passes its
        memory plan's stream budget), else from the executor's default budget (measured after loading).
        """
        self.pipeline = pipeline
        self.config = config or EngineConfig()
        self.executor = Executor(pipeline, self.config, ranks)
        budget = MemoryBudget(self.config.memory_budget_bytes or (budget if budget is not None and budget > 0 else None)
                              or self.executor.default_budget())
        self.scheduler: Scheduler[np.ndarray] = Scheduler(
            self.config, budget, spatial_multiple=pipeline.spatial_multiple,
            temporal_factor=pipeline.codec.temporal_factor)
        # a chunk starts only once its prompts are encoded, off this thread (see prompts.py)
        self.prompts = PromptEncoder(pipeline.text, on_ready=self.scheduler.notify)
        self.scheduler.gate = self._prompts_ready
        self._gated = False  # the latest plan found a stream waiting for its prompt (engine thread only)

    def _prompts_ready(self, params: StreamParams) -> bool:
        """Whether the prompts a chunk with these parameters conditions on are encoded (queues them if not)."""
        chunk = self.executor.chunk_params(params)
        prompts = [params.prompt] if chunk.guidance == 1.0 else [params.prompt, chunk.negative_prompt]
        ready = self.prompts.ready(prompts)
        self._gated = self._gated or not ready
        return ready

    # ------------------------------------------------------------------------------------------ streams
    def add_stream(self, stream_id: str, params: StreamParams | None = None, height: int | None = None,
                   width: int | None = None) -> None:
        """Admit a stream at a working size (default: the model's); AdmissionError or ValueError when refused."""
        height = height or self.pipeline.bundle.height
        width = width or self.pipeline.bundle.width
        footprint = self.executor.footprint(height, width).total
        self.scheduler.add_stream(stream_id, footprint, height, width, params)

    def remove_stream(self, stream_id: str) -> bool:
        """Drop a stream; its buffers are freed before the next step. False when it was unknown."""
        return self.scheduler.remove_stream(stream_id)

    def frame_size(self, stream_id: str) -> tuple[int, int]:
        """The (height, width) a stream's frames must have. KeyError for an unknown stream."""
        return self.scheduler.frame_size(stream_id)

    def push_frame(self, stream_id: str, frame: np.ndarray, arrival: float | None = None) -> bool:
        """Add one live RGB frame, uint8 [H, W, 3] at the model's size (resize at ingest); FrameError otherwise.

        Returns False when the window had to push out a frame that never conditioned a chunk.
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise FrameError(f"frames must be uint8 arrays [H, W, 3], got {got}")
        want = self.frame_size(stream_id)
        if frame.shape[:2] != want:
            raise FrameError(f"frame size {frame.shape[1]}x{frame.shape[0]} is not the stream's "
                             f"{want[1]}x{want[0]} (frames are resized at ingest)")
        return self.scheduler.push_frame(stream_id, frame, arrival)

    def update_params(self, stream_id: str, **changes: object) -> StreamParams:
        """Queue parameter changes for the stream's next chunk; returns the parameters it will use."""
        return self.scheduler.update_params([stream_id], dict(changes))[stream_id][0]

    def reset(self, stream_id: str) -> int:
        """Start the stream over from live input; returns the new generation."""
        return self.scheduler.reset(stream_id)

    # ------------------------------------------------------------------------------------------ stepping
    def step(self, wait_for_prompts: bool = True) -> StepOutcome | None:
        """Run the next denoising step of the stream that needs it most; None when no stream can run now.

        A stream whose next chunk's prompt is still being encoded (off this thread, see prompts.py) cannot start
        it. When no other stream can run either, `wait_for_prompts` waits for the encoding (callers that step on
        their own: file continuation, benchmarks); the runner passes False and is woken when it is done.

        A step that runs out of memory (its chunk's start: KV allocation, encode, prefill; a step; the decode) ends
        its stream alone: see StepOutcome.failure. Any other error, and any error under context parallelism,
        propagates.
        """
        for stream_id in self.scheduler.take_released():
            self.executor.release(stream_id)
        self._gated = False
        plan = self.scheduler.next_step()
        # a stream waits for its prompt: wait for the encoder and plan again (it may have finished already, so
        # the flag, set while planning, decides, not whether the encoder is busy now)
        while plan is None and wait_for_prompts and self._gated:
            self.prompts.wait()
            self._gated = False
            plan = self.scheduler.next_step()
        if plan is None:
            self.executor.idle()
            return None
        started = time.perf_counter()
        try:
            result = self.executor.run(plan)
        except Exception as exc:
            # Out of memory is one stream's problem on one process: end that stream, free what it holds, and let
            # every other stream go on. Under context parallelism the ranks may disagree on whether the step
            # failed, so the group fails as a whole (the executor already told the workers): re-raise.
            if self.executor.ranks is not None or not is_out_of_memory(exc):
                raise
            failure = StreamFailure(plan.stream_id, OUT_OF_MEMORY, f"{type(exc).__name__}: {exc}")
            del exc  # its traceback holds the failed step's frames, and with them their tensors
            self.scheduler.remove_stream(plan.stream_id)
            for stream_id in self.scheduler.take_released():
                self.executor.release(stream_id)
            self.executor.free_cached_memory()
            return StepOutcome(plan, StepResult(0, time.perf_counter() - started), None, failure)
        return StepOutcome(plan, result, self.scheduler.commit(plan, result))

    def run_chunk(self, progress: ProgressFn | None = None) -> ChunkOutput | None:
        """Step until some stream finishes a chunk; None when nothing can run. `progress(done, total)` per step."""
        while True:
            outcome = self.step()
            if outcome is None:
                return None
            if progress is not None:
                progress(outcome.plan.step + 1, outcome.result.steps)
            if outcome.chunk is not None:
                return outcome.chunk

__all__ = ["OUT_OF_MEMORY", "ChunkOutput", "EngineCore", "FrameError", "StepOutcome", "StreamFailure"]
