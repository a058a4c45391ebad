"""The executor: the pipeline, every stream's KV buffers and chunk in progress; runs one planned step at a time.

It only runs plans (`StepPlan` from the scheduler). The first step of a chunk encodes the conditioning frames
(or reuses the stream's last latents), refills the stream's preallocated KV cache in place, draws the noise and
encodes the prompt; every step then denoises once; the last step also decodes. Between steps a chunk's state
(latents, step index) waits here, so the scheduler can interleave streams step by step.

Geometry (codec factors, patch size, text length, guidance batch) comes from the model bundle.

Bounds: one KV cache and at most one chunk in progress per admitted stream; one window of latents per stream for
latent chaining. Buffers are allocated on a stream's first step and freed when the scheduler releases it.

Context parallelism (`ranks`, see ranks.py): before a chunk's prefill and before every step, the workers are told
what it needs, and then every rank runs it; this process's KV caches hold its share of the heads. Any failure of a
step is then a failure of the whole group (`ranks.fail`). Without `ranks` none of this runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..model.kvcache import KVCache
from ..model.shape import bundle_shape
from ..pipeline import ChunkParams, ContinuationPipeline, DenoiseState
from .memory import available_ram
from .params import EngineConfig, StreamParams
from .plan import StreamBytes, activation_bytes, codec_peak_bytes, stream_bytes, usable_bytes
from .ranks import RankGroup
from .scheduler import StepPlan, StepResult
from .window import Chaining, Source, cond_frames_for

WARM_UP_STREAM = "\0warm-up"  # the warm-up step's stream id (no client can name a stream so)
# Where a chunk's engine time goes, in order ("publish" is timed by the daemon's fan-out)
CHUNK_PHASES = ("encode", "prefill", "denoise", "decode")


@dataclass
class _Chunk:
    """A chunk in progress."""

    generation: int
    chunk: int
    denoise: DenoiseState
    phases: dict[str, float]  # seconds per phase so far (CHUNK_PHASES)


@dataclass
class _Latents:
    """A stream's newest window of latents (latent chaining), tagged with the generation that made them."""

    generation: int
    latents: torch.Tensor  # [1, C, T_c, h, w]


class Executor:
    """Runs denoising steps for the scheduler. Single-threaded: only the engine thread calls it."""

    def __init__(self, pipeline: ContinuationPipeline, config: EngineConfig, ranks: RankGroup | None = None) -> None:
        self.pipeline = pipeline
        self.config = config
        self.ranks = ranks
        bundle, dit = pipeline.bundle, pipeline.dit
        self.spatial_factor = pipeline.codec.spatial_factor
        self.temporal_factor = pipeline.codec.temporal_factor
        self.patch = dit.config.patch_size
        self.text_tokens = pipeline.text.encoder.max_length
        self.height, self.width = bundle.height, bundle.width
        self.shape = bundle_shape(bundle)  # the plan's view of the model (configs only)
        self._caches: dict[str, KVCache] = {}
        self._chunks: dict[str, _Chunk] = {}
        self._latents: dict[str, _Latents] = {}

    # ------------------------------------------------------------------------------------------ memory numbers
    # Every number comes from engine/plan.py, the arithmetic `streamd plan` and the refusal before loading use.
    @property
    def itemsize(self) -> int:
        """Bytes per value of the DiT's compute dtype."""
        return torch.empty((), dtype=self.pipeline.dit.dtype).element_size()

    @property
    def world(self) -> int:
        """Ranks of the context-parallel group (1 without one)."""
        return self.ranks.world if self.ranks is not None else 1

    def tokens_per_frame(self, height: int, width: int) -> int:
        """DiT tokens of one latent frame at a pixel size."""
        return self.shape.tokens_per_frame(height, width)

    def footprint(self, height: int | None = None, width: int | None = None) -> StreamBytes:
        """The bytes one stream holds at a size (default: the model's): KV cache, latents, frame windows, text."""
        cfg = self.config
        text_device = getattr(self.pipeline.text.encoder, "device", self.pipeline.device)
        return stream_bytes(self.shape, height or self.height, width or self.width, cfg.cond_latents,
                            cfg.chunk_latents, self.itemsize, self.pipeline.device.type, self.world,
                            text_on_dit_device=torch.device(text_device) == self.pipeline.device)

    def activation_reserve(self) -> int:
        """One step's transient memory at the model's size: the larger of the denoising step's activations and
        the codec's decode peak (plan.activation_bytes, plan.codec_peak_bytes; one step runs at a time)."""
        cfg, tpf = self.config, self.tokens_per_frame(self.height, self.width)
        step = activation_bytes(self.pipeline.dit.config, cfg.chunk_latents * tpf, cfg.cond_latents * tpf,
                                self.text_tokens, self.itemsize, ranks=self.world, cached=cfg.use_kv_cache)
        return max(step, codec_peak_bytes(self.shape, self.height, self.width, cfg.cond_latents, cfg.chunk_latents,
                                          self.itemsize))

    def default_budget(self) -> int:
        """Stream memory when the daemon's plan did not set it: the memory free now (the model is loaded: its
        weights are no longer free), less the plan's allocator reserve and the transient reserve."""
        device = self.pipeline.device
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_ram()
        return max(usable_bytes(free, device.type) - self.activation_reserve(), 1)

    # ------------------------------------------------------------------------------------------ lifecycle
    def warm_up(self) -> float:
        """Run one step at the model's size on synthetic input (loads kernels, sizes allocator pools); seconds."""
        started = time.perf_counter()
        cfg = self.config
        frames = np.zeros((cond_frames_for(cfg.cond_latents, self.temporal_factor), self.height, self.width, 3),
                          np.uint8)
        params = self.chunk_params(cfg.initial_params())
        cond = self.pipeline.encode(frames)
        tokens = cfg.cond_latents * self.tokens_per_frame(self.height, self.width)
        cache = self._new_cache(tokens) if params.use_kv_cache else None
        state = self.pipeline.begin_denoise(cond, cfg.prompt, params, cache=cache)
        self._start(WARM_UP_STREAM, state, tokens)
        self._step(WARM_UP_STREAM, state)
        if self.ranks is not None:
            self.ranks.release(WARM_UP_STREAM)
        if self.pipeline.dit.compiled and self.ranks is None:
            self._warm_compiled(cond, params, cache)
        return time.perf_counter() - started

    def _warm_compiled(self, cond: torch.Tensor, params: ChunkParams, cache: KVCache | None) -> None:
        """Compile every graph a stream can meet, before READY. Token counts are dynamic (one graph serves every
        window fill and frame size), but dynamo specialises sizes of 1 apart (see model/compiled.py): a step
        without guidance (batch 1) and with it (batch 2), and a one-latent window beside a longer one."""
        windows = [cond] if cond.shape[2] == 1 else [cond, cond[:, :, -1:]]
        for window in windows:
            for guidance in (1.0, 4.0):
                variant = replace(params, guidance=guidance)
                state = self.pipeline.begin_denoise(window, self.config.prompt, variant, cache=cache)
                if state.cache is not None:
                    self.pipeline.prefill(state.cond, cache=state.cache)
                self.pipeline.denoise_step(state)

    def idle(self) -> None:
        """Called when no stream can run: keeps worker ranks from mistaking a quiet engine for a dead one."""
        if self.ranks is not None:
            self._guarded(self.ranks.heartbeat)

    def release(self, stream_id: str) -> None:
        """Free everything a stream holds here (and on the worker ranks)."""
        if self.ranks is not None:
            self._guarded(self.ranks.release, stream_id)
        self._caches.pop(stream_id, None)
        self._chunks.pop(stream_id, None)
        self._latents.pop(stream_id, None)

    def free_cached_memory(self) -> None:
        """After a stream's buffers were dropped for running out of memory: hand the CUDA allocator's cached blocks
        back, so the next allocation (of any stream) starts from what is really free."""
        if self.pipeline.device.type == "cuda":
            torch.cuda.empty_cache()

    def holds(self, stream_id: str) -> bool:
        """Whether the stream has buffers or a chunk here (for tests of release)."""
        return stream_id in self._caches or stream_id in self._chunks or stream_id in self._latents

    def cache(self, stream_id: str) -> KVCache | None:
        """The stream's KV cache, once its first chunk allocated it."""
        return self._caches.get(stream_id)

    # ------------------------------------------------------------------------------------------ steps
    def chunk_params(self, params: StreamParams) -> ChunkParams:
        """The sampler settings a stream's parameters resolve to."""
        overrides = {k: v for k, v in (("steps", params.steps), ("schedule", params.schedule),
                                       ("guidance", params.guidance)) if v is not None}
        return self.pipeline.default_params(**overrides, negative_prompt=params.negative_prompt,
                                            noise_latents=self.config.chunk_latents,
                                            use_kv_cache=self.config.use_kv_cache)

    def _cond_latents(self, plan: StepPlan[np.ndarray], gen: torch.Generator) -> torch.Tensor:
        last = self._latents.get(plan.stream_id)
        if (plan.chunk.source is Source.SELF and plan.params.chaining is Chaining.LATENT and last is not None
                and last.generation == plan.generation):
            cond = last.latents
        else:
            cond = self.pipeline.encode(np.stack([f.payload for f in plan.chunk.cond]), generator=gen)
        if plan.params.cond_noise > 0:
            noise = torch.randn(cond.shape, generator=gen).to(cond.device, cond.dtype)
            cond = cond + plan.params.cond_noise * noise
        return cond

    def _clock(self) -> float:
        """perf_counter after the device's queued work (CUDA runs asynchronously; a phase ends when its work does)."""
        device = self.pipeline.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def _begin(self, plan: StepPlan[np.ndarray]) -> _Chunk:
        started = self._clock()
        gen = torch.Generator().manual_seed(plan.seed)
        params = self.chunk_params(plan.params)
        cond = self._cond_latents(plan, gen)
        cache = None
        tokens = self.config.cond_latents * self.tokens_per_frame(plan.height, plan.width)
        if params.use_kv_cache:
            cache = self._caches.get(plan.stream_id)
            if cache is None:  # the stream's first chunk: its buffers, sized for its window, for its whole life
                cache = self._caches[plan.stream_id] = self._new_cache(tokens)
        # the noise is drawn before the prefill, which draws nothing: the same chunk as prefilling first
        state = self.pipeline.begin_denoise(cond, plan.params.prompt, params, cache=cache, generator=gen)
        encoded = self._clock()  # frames -> latents, prompt -> text states, the noise
        self._start(plan.stream_id, state, tokens)
        phases = dict.fromkeys(CHUNK_PHASES, 0.0)
        phases["encode"], phases["prefill"] = encoded - started, self._clock() - encoded
        return _Chunk(plan.generation, plan.chunk.chunk, state, phases)

    def _new_cache(self, tokens: int) -> KVCache:
        dit = self.pipeline.dit
        return KVCache(dit.config, tokens, batch=1, device=dit.device, dtype=dit.dtype, heads=dit.kv_heads)

    def _start(self, stream_id: str, state: DenoiseState, tokens: int) -> None:
        """A chunk's inputs to the worker ranks (if any), then the prefill of its cache (on every rank)."""
        if self.ranks is not None:
            self.ranks.begin(stream_id, state, tokens)
        if state.cache is not None:
            self.pipeline.prefill(state.cond, cache=state.cache)

    def _step(self, stream_id: str, state: DenoiseState) -> None:
        if self.ranks is not None:
            self.ranks.step(stream_id, state.step)
        self.pipeline.denoise_step(state)

    def _guarded(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run `fn` with worker ranks: any failure breaks the whole group, loudly."""
        try:
            return fn(*args)
        except Exception as exc:
            assert self.ranks is not None
            self.ranks.fail(f"{type(exc).__name__}: {exc}")
            raise

    def run(self, plan: StepPlan[np.ndarray]) -> StepResult:
        """Run one planned step; after a chunk's last step the result carries its decoded frames."""
        if self.ranks is not None:
            return self._guarded(self._run, plan)
        return self._run(plan)

    def _run(self, plan: StepPlan[np.ndarray]) -> StepResult:
        started = time.perf_counter()
        chunk = self._chunks.get(plan.stream_id)
        if plan.begins or chunk is None or (chunk.generation, chunk.chunk) != (plan.generation, plan.chunk.chunk):
            if not plan.begins:
                raise RuntimeError(f"stream {plan.stream_id}: step {plan.step} planned for a chunk that never began")
            chunk = self._begin(plan)
            self._chunks[plan.stream_id] = chunk
        elif chunk.denoise.step != plan.step:
            raise RuntimeError(f"stream {plan.stream_id}: step {plan.step} planned, the chunk is at "
                               f"{chunk.denoise.step}")
        state = chunk.denoise
        denoise_started = self._clock()
        self._step(plan.stream_id, state)
        if self.config.step_delay_s > 0:
            time.sleep(self.config.step_delay_s)
        decode_started = self._clock()
        chunk.phases["denoise"] += decode_started - denoise_started
        frames = None
        if state.done:
            del self._chunks[plan.stream_id]
            frames = self.pipeline.decode_continuation(state.cond, state.x)  # [F, H, W, 3] uint8
            if plan.params.chaining is Chaining.LATENT:
                window = torch.cat([state.cond, state.x.to(state.cond.dtype)], dim=2)[:, :, -self.config.cond_latents:]
                self._latents[plan.stream_id] = _Latents(plan.generation, window)
            chunk.phases["decode"] = self._clock() - decode_started
        phases = dict(chunk.phases) if state.done else None
        return StepResult(state.steps, time.perf_counter() - started, frames, phases)
