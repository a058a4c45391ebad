"""LongCat-Video continuation: text + codec + DiT + sampler, one chunk at a time.

`ContinuationPipeline.generate_chunk` encodes the conditioning frames, builds the KV cache once, denoises the next
chunk of noise latents over every step of the schedule, decodes, and returns the new frames. The engine uses the
same building blocks (`encode`, `prefill`, `denoise`, `decode_continuation`) one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model.bundle import ModelBundle, load_model
from .model.dit import LongCatVideoDiT
from .model.kvcache import KVCache
from .model.vae import latent_frames, pixel_frames
from .sampling import SCHEDULE_NAMES, Schedule, euler_step, guided_velocity, make_schedule

ProgressFn = Callable[[int, int], None]  # (steps done, steps total)


@dataclass(frozen=True)
class ChunkParams:
    """How one chunk is sampled. Validated on construction."""

    steps: int
    schedule: str
    guidance: float
    negative_prompt: str = ""
    seed: int | None = None
    noise_latents: int = 4  # latent frames generated per chunk: 4 latents = 16 new frames
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULE_NAMES)})")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be in 1..1000, got {self.steps}")
        if not 0.0 <= self.guidance <= 50.0:
            raise ValueError(f"guidance must be in 0..50, got {self.guidance}")
        if not 1 <= self.noise_latents <= 64:
            raise ValueError(f"noise_latents must be in 1..64, got {self.noise_latents}")


@dataclass
class ChunkResult:
    """Frames of one generated chunk and the latents behind them."""

    frames: np.ndarray  # [4 * noise_latents, H, W, 3] uint8
    latents: torch.Tensor  # [1, C, noise_latents, h, w] (normalised)
    cond_latents: torch.Tensor  # [1, C, T_c, h, w]


@dataclass
class DenoiseState:
    """A chunk being denoised: its latents, its inputs, and how far along its schedule it is."""

    x: torch.Tensor  # [1, C, T_n, h, w] fp32, the latents at sigmas[step]
    cond: torch.Tensor  # [1, C, T_c, h, w] conditioning latents
    text: torch.Tensor  # [B, L, D] B = 2 with guidance ([uncond ; cond]), else 1
    mask: torch.Tensor  # [B, L]
    sigmas: tuple[float, ...]
    params: ChunkParams
    cache: KVCache | None  # prefilled from `cond` (cached path), None for the uncached path
    step: int = 0

    @property
    def steps(self) -> int:
        """Steps of the schedule."""
        return len(self.sigmas) - 1

    @property
    def done(self) -> bool:
        """Whether every step ran."""
        return self.step >= self.steps


@torch.inference_mode()
def denoise_step(dit: LongCatVideoDiT, state: DenoiseState) -> None:
    """Take the next step of `state`'s schedule with `dit`, in place.

    Uses the state's cache when `params.use_kv_cache`, else the uncached block-causal path over [cond ; noise]
    with timestep 0 on the conditioning frames. CFG-zero's s* is taken over the noise frames only (see
    sampling), so both paths give the same guided sample. A context-parallel worker rank calls this directly.
    """
    if state.done:
        raise RuntimeError("the chunk is fully denoised")
    i, params, t_c = state.step, state.params, state.cond.shape[2]
    sigma, sigma_next = state.sigmas[i], state.sigmas[i + 1]
    batch = state.text.shape[0]
    device = dit.device
    x_in = state.x.expand(batch, -1, -1, -1, -1).to(dit.dtype)
    t = torch.full((batch, params.noise_latents), 1000.0 * sigma, device=device)
    if state.cache is not None:
        v = dit(x_in, t, state.text, state.mask, num_cond_latents=t_c, kv_cache=state.cache)
    else:
        full = torch.cat([state.cond.expand(batch, -1, -1, -1, -1).to(dit.dtype), x_in], dim=2)
        t_full = torch.cat([torch.zeros(batch, t_c, device=device), t], dim=1)
        v = dit(full, t_full, state.text, state.mask, num_cond_latents=t_c)[:, :, t_c:]
    v = guided_velocity(v, params.guidance) if batch > 1 else v
    state.x = euler_step(state.x, v, sigma, sigma_next)
    state.step += 1


def frames_to_video(frames: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB [F, H, W, 3] -> [1, 3, F, H, W] in [-1, 1]."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return (video.permute(3, 0, 1, 2).unsqueeze(0).to(dtype) / 127.5 - 1.0)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> uint8 RGB [F, H, W, 3]."""
    pixels = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()


class ContinuationPipeline:
    """Video continuation with a LongCat-Video model bundle."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.dit = bundle.dit
        self.codec = bundle.codec
        self.text = bundle.text
        self.shift = bundle.shift  # the scheduler config's, or the random preset's

    @classmethod
    def from_spec(
        cls, spec: str | Path = "tiny", device: torch.device | str | None = "cpu", dtype: torch.dtype | None = None,
        distilled: bool | None = None, text_device: torch.device | str | None = None, weights: str = "bf16",
    ) -> ContinuationPipeline:
        """Load an embedded preset by name or a checkpoint folder (`distilled`, `text_device`, `weights`: see
        `load_model`)."""
        return cls(load_model(spec, device=device, dtype=dtype, distilled=distilled, text_device=text_device,
                              weights=weights))

    @property
    def device(self) -> torch.device:
        """Where the DiT runs."""
        return self.dit.device

    @property
    def spatial_multiple(self) -> int:
        """Frame sizes must be multiples of this (codec downsampling x patch size)."""
        return self.codec.spatial_factor * self.dit.config.patch_size[1]

    def default_params(self, **overrides: Any) -> ChunkParams:
        """The model's sampling defaults with `overrides` applied."""
        d = self.bundle.defaults
        return replace(ChunkParams(steps=d.steps, schedule=d.schedule, guidance=d.guidance), **overrides)

    def schedule(self, params: ChunkParams) -> Schedule:
        """The sigma table a chunk with these parameters walks."""
        return make_schedule(params.schedule, params.steps, shift=self.shift)

    def check_frame_size(self, height: int, width: int) -> None:
        """Raise ValueError unless height and width are positive multiples of `spatial_multiple`."""
        m = self.spatial_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(f"frame size {width}x{height} must be a positive multiple of {m} in each dimension")

    # ------------------------------------------------------------------------------------------ building blocks
    @torch.inference_mode()
    def encode(self, frames: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 frames [4k+1, H, W, 3] -> normalised latents [1, C, k+1, h, w] in the DiT's dtype."""
        latent_frames(frames.shape[0])  # validates 4k+1
        self.check_frame_size(frames.shape[1], frames.shape[2])
        video = frames_to_video(frames, self.codec.device, self.codec.dtype)
        return self.codec.encode(video, generator=generator).to(self.device, self.dit.dtype)

    def prefill(self, cond_latents: torch.Tensor, cache: KVCache | None = None) -> KVCache:
        """Build (or refill in place) the conditioning KV cache."""
        return self.dit.prefill(cond_latents, cache=cache)

    @torch.inference_mode()
    def begin_denoise(
        self,
        cond_latents: torch.Tensor,
        prompt: str,
        params: ChunkParams,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
    ) -> DenoiseState:
        """Prepare to sample `params.noise_latents` new latent frames after `cond_latents` [1, C, T_c, h, w].

        Draws the noise, encodes the prompt(s) and, for the cached path without a `cache`, prefills one. Guidance
        != 1 runs both branches as one batch [uncond ; cond].
        """
        _, c, _, h, w = cond_latents.shape
        schedule = self.schedule(params)
        if generator is None and params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        # noise is drawn on the CPU so a seed gives the same chunk on every device
        x = torch.randn((1, c, params.noise_latents, h, w), generator=generator).to(self.device)  # fp32
        text, mask = self.text.get(prompt)
        if params.guidance != 1.0:
            neg_text, neg_mask = self.text.get(params.negative_prompt)
            text, mask = torch.cat([neg_text, text]), torch.cat([neg_mask, mask])
        if params.use_kv_cache and cache is None:
            cache = self.prefill(cond_latents)
        return DenoiseState(x, cond_latents, text.to(self.device), mask.to(self.device), schedule.sigmas, params,
                            cache if params.use_kv_cache else None)

    def denoise_step(self, state: DenoiseState) -> None:
        """Take the next step of `state`'s schedule, in place (see `denoise_step`)."""
        denoise_step(self.dit, state)

    def denoise(
        self,
        cond_latents: torch.Tensor,
        prompt: str,
        params: ChunkParams,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """Sample `params.noise_latents` new latent frames after `cond_latents`: every step of the schedule.

        `progress(done, total)` is called after each step. Returns the latents [1, C, T_n, h, w] (fp32).
        """
        state = self.begin_denoise(cond_latents, prompt, params, cache=cache, generator=generator)
        while not state.done:
            self.denoise_step(state)
            if progress is not None:
                progress(state.step, state.steps)
        return state.x

    @torch.inference_mode()
    def decode_continuation(self, cond_latents: torch.Tensor, new_latents: torch.Tensor) -> np.ndarray:
        """Decode [cond ; new] (the codec is causal in time) and keep the new frames: [4 * T_n, H, W, 3] uint8."""
        latents = torch.cat([cond_latents.float(), new_latents.float()], dim=2).to(self.codec.device, self.codec.dtype)
        video = self.codec.decode(latents)
        return video_to_frames(video[:, :, pixel_frames(cond_latents.shape[2]):])

    # ------------------------------------------------------------------------------------------ one chunk
    def generate_chunk(
        self,
        cond_frames: np.ndarray,
        prompt: str = "",
        params: ChunkParams | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> ChunkResult:
        """Continue `cond_frames` (uint8 [4k+1, H, W, 3], e.g. the last 13 frames) by one chunk."""
        params = params or self.default_params()
        if generator is None and params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        cond = self.encode(cond_frames, generator=generator)
        cache = self.prefill(cond) if params.use_kv_cache else None
        new = self.denoise(cond, prompt, params, cache=cache, generator=generator, progress=progress)
        return ChunkResult(self.decode_continuation(cond, new), new, cond)
