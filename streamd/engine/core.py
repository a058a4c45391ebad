"""EngineCore: the synchronous heart of the daemon. No I/O, no threads, no asyncio.

Each `step()` picks the next ready stream fairly (round robin), applies its pending parameters (chunk boundaries
are the only place parameters change), plans its conditioning window, encodes the conditioning frames, refills
the stream's preallocated KV cache in place, denoises the next chunk, decodes it and returns the frames with
their numbers, timestamps and conditioning source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..media import fit_frames
from ..model.kvcache import KVCache
from ..pipeline import ChunkParams, ContinuationPipeline, ProgressFn
from ..sampling import SCHEDULE_NAMES
from .kvcache import AdmissionError, MemoryBudget, activation_reserve, default_budget, stream_footprint
from .window import Chaining, ChunkPlan, ConditioningWindow, Policy, Source

MAX_FRAME_SIDE = 4096  # larger input frames are refused rather than resized (a 16K frame is a mistake or abuse)


class FrameError(ValueError):
    """An input frame the engine cannot use (wrong type, shape or size)."""


@dataclass(frozen=True)
class StreamParams:
    """Runtime parameters of a stream; None means the model's default. Validated on construction."""

    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None
    steps: int | None = None
    schedule: str | None = None
    seed: int | None = None
    policy: Policy = Policy.AUTO
    chaining: Chaining = Chaining.PIXEL
    cond_noise: float = 0.0  # std of noise added to conditioning latents (LongCat's anti-drift trick)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise ValueError("prompt and negative_prompt must be strings")
        if len(self.prompt) > 4000 or len(self.negative_prompt) > 4000:
            raise ValueError("prompts are limited to 4000 characters")
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and 0 <= self.guidance <= 50):
            raise ValueError(f"guidance must be a number in 0..50, got {self.guidance!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise ValueError(f"steps must be an integer in 1..1000, got {self.steps!r}")
        if self.schedule is not None and self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {self.schedule!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.cond_noise, (int, float)) or not 0 <= self.cond_noise <= 1:
            raise ValueError(f"cond_noise must be in 0..1, got {self.cond_noise!r}")
        object.__setattr__(self, "policy", Policy(self.policy))
        object.__setattr__(self, "chaining", Chaining(self.chaining))

    def updated(self, **changes: Any) -> "StreamParams":
        """A copy with `changes` applied (validated); unknown names are an error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EngineConfig:
    """Engine-wide settings."""

    cond_latents: int = 4  # conditioning window: 4 latents = 13 frames
    chunk_latents: int = 4  # generated per chunk: 4 latents = 16 frames
    fps: float = 15.0  # model frame rate: output timestamps advance by 1/fps
    min_fresh: int | None = None  # live frames needed since the last chunk for live conditioning (None: window)
    memory_budget_bytes: int | None = None  # stream memory; None: derived from the device
    max_streams: int = 8
    use_kv_cache: bool = True  # False runs the uncached block-causal path (for comparison)
    # Live pacing: a stream's output may run at most `max_lead_s` ahead of real time (measured from its first
    # chunk). Without it a fast engine would continue a live stream many times faster than it is watched.
    realtime: bool = True
    max_lead_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.cond_latents <= 16 or not 1 <= self.chunk_latents <= 64:
            raise ValueError("cond_latents must be in 1..16 and chunk_latents in 1..64")
        if self.fps <= 0 or self.max_streams < 1:
            raise ValueError("fps must be positive and max_streams at least 1")
        if self.max_lead_s < 0:
            raise ValueError("max_lead_s must not be negative")


@dataclass
class ChunkOutput:
    """One generated chunk of one stream."""

    stream_id: str
    generation: int
    chunk: int
    source: Source
    first_frame: int  # output frame number of frames[0]
    frames: np.ndarray  # [F, H, W, 3] uint8
    pts_ns: list[int]
    params: StreamParams
    cond_arrival: float | None  # monotonic arrival time of the newest live conditioning frame (live chunks)
    started: float  # monotonic time the chunk began
    finished: float  # monotonic time the chunk was decoded

    @property
    def seconds(self) -> float:
        """Wall time the chunk took."""
        return self.finished - self.started


@dataclass
class StreamState:
    """Everything the engine holds for one stream."""

    stream_id: str
    height: int
    width: int
    params: StreamParams
    window: ConditioningWindow[np.ndarray]
    cache: KVCache
    pending: StreamParams | None = None
    generation: int = 0
    last_latents: torch.Tensor | None = None  # [1, C, T_c, h, w] newest latents, for latent chaining
    arrivals: dict[int, float] = field(default_factory=dict)  # live frame number -> arrival (newest window only)
    frames_in: int = 0
    chunks_out: int = 0
    clock_start: float | None = None  # monotonic time of output frame `clock_frame` (live pacing)
    clock_frame: int = 0


class EngineCore:
    """Runs every stream's chunks, one `step()` at a time. Not thread-safe: one thread owns it."""

    def __init__(self, pipeline: ContinuationPipeline, config: EngineConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = config or EngineConfig()
        self.streams: dict[str, StreamState] = {}
        self._order: list[str] = []  # round-robin order of admission
        self._cursor = 0
        dit = pipeline.dit
        h, w = pipeline.bundle.height // 8, pipeline.bundle.width // 8
        tokens = (self.config.cond_latents + self.config.chunk_latents) * (h // 2) * (w // 2)
        reserve = activation_reserve(dit.config, tokens, 512, 2, dit.dtype)
        total = self.config.memory_budget_bytes or default_budget(pipeline.device, reserve)
        self.budget = MemoryBudget(total)

    # ------------------------------------------------------------------------------------------ streams
    def add_stream(
        self, stream_id: str, params: StreamParams | None = None, height: int | None = None, width: int | None = None
    ) -> StreamState:
        """Admit a stream at a working resolution (default: the model's); its buffers are allocated now."""
        if stream_id in self.streams:
            raise AdmissionError(f"stream {stream_id!r} exists already")
        if len(self.streams) >= self.config.max_streams:
            raise AdmissionError(f"the engine runs at most {self.config.max_streams} streams")
        height = height or self.pipeline.bundle.height
        width = width or self.pipeline.bundle.width
        self.pipeline.check_frame_size(height, width)
        cfg, dit = self.config, self.pipeline.dit
        window: ConditioningWindow[np.ndarray] = ConditioningWindow(
            cfg.cond_latents, cfg.chunk_latents, cfg.fps, (params or StreamParams()).policy, cfg.min_fresh
        )
        footprint = stream_footprint(dit.config, height, width, cfg.cond_latents, cfg.chunk_latents,
                                     window.cond_frames, dit.dtype)
        self.budget.admit(stream_id, footprint.total)
        try:
            tokens = cfg.cond_latents * (height // 16) * (width // 16)
            cache = KVCache(dit.config, tokens, batch=1, device=dit.device, dtype=dit.dtype)
        except (RuntimeError, MemoryError) as exc:  # allocation failed despite the estimate
            self.budget.release(stream_id)
            raise AdmissionError(f"stream {stream_id!r}: cannot allocate its KV cache: {exc}") from None
        state = StreamState(stream_id, height, width, params or StreamParams(), window, cache)
        self.streams[stream_id] = state
        self._order.append(stream_id)
        return state

    def remove_stream(self, stream_id: str) -> None:
        """Drop a stream and everything it holds (unknown ids are ignored)."""
        if self.streams.pop(stream_id, None) is not None:
            self._order.remove(stream_id)
            self.budget.release(stream_id)

    def push_frame(self, stream_id: str, frame: np.ndarray, arrival: float | None = None) -> bool:
        """Add one live RGB frame [H, W, 3] uint8 of any size; it is scaled and cropped to the stream's size.

        Returns False when the window had to push out a frame that never conditioned a chunk.
        """
        state = self._stream(stream_id)
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise FrameError(f"frames must be uint8 arrays [H, W, 3], got {got}")
        h, w = frame.shape[:2]
        if not (2 <= h <= MAX_FRAME_SIDE and 2 <= w <= MAX_FRAME_SIDE):
            raise FrameError(f"frame size {w}x{h} is outside 2..{MAX_FRAME_SIDE} pixels per side")
        if (h, w) != (state.height, state.width):
            frame = fit_frames(frame[None], state.height, state.width)[0]
        number = state.window.live_received
        kept_all = state.window.push_live(frame)
        state.arrivals[number] = arrival if arrival is not None else time.monotonic()
        state.arrivals.pop(number - state.window.cond_frames, None)  # bound: one window of arrivals
        state.frames_in += 1
        return kept_all

    def update_params(self, stream_id: str, **changes: Any) -> StreamParams:
        """Validate and queue parameter changes; they apply at the stream's next chunk boundary."""
        state = self._stream(stream_id)
        new = (state.pending or state.params).updated(**changes)
        state.pending = new
        return new

    def reset(self, stream_id: str) -> int:
        """Start the stream over from live input; returns the new generation. Older output must not be emitted."""
        state = self._stream(stream_id)
        state.generation += 1
        state.window.reset()
        state.clock_start = None
        state.last_latents = None
        state.arrivals.clear()
        return state.generation

    def _stream(self, stream_id: str) -> StreamState:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise KeyError(f"no stream {stream_id!r}") from None

    # ------------------------------------------------------------------------------------------ stepping
    def _due(self, state: StreamState, now: float) -> bool:
        """Whether pacing lets the stream run its next chunk now."""
        if not self.config.realtime or state.clock_start is None:
            return True
        ahead = (state.window.next_output - state.clock_frame) / self.config.fps - (now - state.clock_start)
        return ahead <= self.config.max_lead_s

    def ready(self) -> list[str]:
        """Streams that could run a chunk now."""
        now = time.monotonic()
        return [sid for sid in self._order if self.streams[sid].window.ready() and self._due(self.streams[sid], now)]

    def _next_ready(self) -> StreamState | None:
        n = len(self._order)
        now = time.monotonic()
        for i in range(n):
            sid = self._order[(self._cursor + i) % n]
            if self.streams[sid].window.ready() and self._due(self.streams[sid], now):
                self._cursor = (self._cursor + i + 1) % n
                return self.streams[sid]
        return None

    def chunk_params(self, state: StreamState) -> ChunkParams:
        """The sampler settings a stream's parameters resolve to."""
        p = state.params
        overrides = {k: v for k, v in (("steps", p.steps), ("schedule", p.schedule), ("guidance", p.guidance))
                     if v is not None}
        return self.pipeline.default_params(**overrides, negative_prompt=p.negative_prompt,
                                            noise_latents=self.config.chunk_latents,
                                            use_kv_cache=self.config.use_kv_cache)

    def _generator(self, state: StreamState, chunk: int) -> torch.Generator:
        gen = torch.Generator()
        if state.params.seed is None:
            gen.seed()
        else:
            # reproducible per (seed, stream, generation, chunk)
            key = f"{state.params.seed}/{state.stream_id}/{state.generation}/{chunk}".encode()
            gen.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        return gen

    def _cond_latents(self, state: StreamState, plan: ChunkPlan[np.ndarray], gen: torch.Generator) -> torch.Tensor:
        if plan.source is Source.SELF and state.params.chaining is Chaining.LATENT and state.last_latents is not None:
            cond = state.last_latents
        else:
            cond = self.pipeline.encode(np.stack([f.payload for f in plan.cond]), generator=gen)
        if state.params.cond_noise > 0:
            noise = torch.randn(cond.shape, generator=gen).to(cond.device, cond.dtype)
            cond = cond + state.params.cond_noise * noise
        return cond

    def step(self, progress: ProgressFn | None = None) -> ChunkOutput | None:
        """Generate the next chunk of the next ready stream, or return None when no stream is ready.

        `progress(done, total)` is called after each denoising step.
        """
        state = self._next_ready()
        if state is None:
            return None
        started = time.monotonic()
        if state.pending is not None:  # the chunk boundary: parameter changes take effect here only
            state.params, state.pending = state.pending, None
            state.window.policy = state.params.policy
        plan = state.window.plan()
        gen = self._generator(state, plan.chunk)
        params = self.chunk_params(state)
        cond = self._cond_latents(state, plan, gen)
        cache = self.pipeline.prefill(cond, cache=state.cache) if params.use_kv_cache else None
        new = self.pipeline.denoise(cond, state.params.prompt, params, cache=cache, generator=gen, progress=progress)
        frames = self.pipeline.decode_continuation(cond, new)
        if state.params.chaining is Chaining.LATENT:
            state.last_latents = torch.cat([cond, new.to(cond.dtype)], dim=2)[:, :, -self.config.cond_latents:]
        refs = state.window.commit(plan, list(frames))
        state.chunks_out += 1
        if state.clock_start is None:  # the stream's clock starts with its first frame out
            state.clock_start, state.clock_frame = time.monotonic(), plan.first_output
        arrival = state.arrivals.get(plan.cond[-1].number) if plan.source is Source.LIVE else None
        return ChunkOutput(
            stream_id=state.stream_id, generation=state.generation, chunk=plan.chunk, source=plan.source,
            first_frame=plan.first_output, frames=frames, pts_ns=[r.pts_ns for r in refs], params=state.params,
            cond_arrival=arrival, started=started, finished=time.monotonic(),
        )
