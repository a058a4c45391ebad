"""Video codecs: pixels <-> normalised latents with LongCat-Video's frame arithmetic.

LongCat-Video diffuses in the latent space of the Wan 2.1 VAE: 16 channels, 8x8 spatial and 4x causal temporal
compression, so ``F = 4k + 1`` pixel frames become ``k + 1`` latent frames (frame 0 is encoded alone, every later
latent covers four frames). The DiT expects latents normalised per channel, ``z = (z_raw - mean) / std``.

Two implementations share the :class:`VideoCodec` protocol:

* :class:`WanVAECodec` wraps diffusers' ``AutoencoderKLWan`` loaded from a local checkpoint folder.
* :class:`EmbeddedCodec` is a deterministic, torch-only stand-in with identical shapes that needs no download, so
  the daemon and its tests run end to end on a machine without the weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:  # diffusers is heavy to import; only WanVAECodec.from_pretrained needs it at run time.
    from diffusers import AutoencoderKLWan

# Per-channel statistics of the Wan 2.1 VAE latents, used when a checkpoint's config does not carry its own.
WAN_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
LATENT_CHANNELS: int = 16
TEMPORAL_FACTOR: int = 4
SPATIAL_FACTOR: int = 8

# File names diffusers may store a model's weights under (single file, sharded index, or legacy pickle).
_WEIGHT_FILES: tuple[str, ...] = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)


def latent_frames(num_frames: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Number of latent frames a causal VAE makes of ``num_frames`` pixel frames: ``(F - 1) // t + 1``.

    Raises:
        ValueError: unless ``num_frames >= 1`` and ``num_frames % temporal_factor == 1`` (``F = t*k + 1``).
    """
    if temporal_factor < 1:
        raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(
            f"a causal VAE with temporal factor {temporal_factor} needs {temporal_factor}k+1 frames "
            f"(1, {temporal_factor + 1}, {2 * temporal_factor + 1}, ...), got {num_frames}"
        )
    return (num_frames - 1) // temporal_factor + 1


def pixel_frames(num_latents: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Number of pixel frames ``num_latents`` latent frames decode to: ``t * (T - 1) + 1``.

    Raises:
        ValueError: if ``num_latents < 1`` or ``temporal_factor < 1``.
    """
    if temporal_factor < 1:
        raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
    if num_latents < 1:
        raise ValueError(f"need at least one latent frame, got {num_latents}")
    return temporal_factor * (num_latents - 1) + 1


@runtime_checkable
class VideoCodec(Protocol):
    """Maps pixel videos to normalised latents and back.

    Pixels are ``[B, 3, F, H, W]`` floats in ``[-1, 1]`` with ``F = temporal_factor * k + 1`` and ``H``, ``W``
    multiples of ``spatial_factor``; latents are ``[B, latent_channels, k + 1, H / s, W / s]`` float32, already
    normalised per channel so the DiT can consume them directly.
    """

    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    device: torch.device
    dtype: torch.dtype

    def encode(self, video: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Encode pixels ``[B, 3, F, H, W]`` in [-1, 1] to normalised latents ``[B, C, T, H/s, W/s]`` float32."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised latents ``[B, C, T, h, w]`` to pixels ``[B, 3, t(T-1)+1, h*s, w*s]`` in [-1, 1]."""
        ...


def _check_video(video: Tensor, temporal_factor: int, spatial_factor: int) -> None:
    """Raise ValueError unless ``video`` is ``[B, 3, t*k+1, H, W]`` with H, W multiples of ``spatial_factor``."""
    if not isinstance(video, Tensor):
        raise ValueError(f"expected a torch.Tensor video, got {type(video).__name__}")
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected video of shape [B, 3, F, H, W], got {tuple(video.shape)}")
    _, _, frames, height, width = video.shape
    if frames < 1 or (frames - 1) % temporal_factor:
        raise ValueError(
            f"expected video of shape [B, 3, {temporal_factor}k+1, H, W], got {tuple(video.shape)} "
            f"({frames} frames is not {temporal_factor}k+1)"
        )
    if height < spatial_factor or width < spatial_factor or height % spatial_factor or width % spatial_factor:
        raise ValueError(
            f"expected video height and width to be positive multiples of {spatial_factor}, "
            f"got {tuple(video.shape)} (H={height}, W={width})"
        )
    if not video.is_floating_point():
        raise ValueError(f"expected a floating-point video in [-1, 1], got dtype {video.dtype}")


def _check_latents(latents: Tensor, channels: int) -> None:
    """Raise ValueError unless ``latents`` is ``[B, channels, T, h, w]`` with every size positive."""
    if not isinstance(latents, Tensor):
        raise ValueError(f"expected a torch.Tensor of latents, got {type(latents).__name__}")
    if latents.ndim != 5 or latents.shape[1] != channels:
        raise ValueError(f"expected latents of shape [B, {channels}, T, h, w], got {tuple(latents.shape)}")
    if min(latents.shape) < 1:
        raise ValueError(f"expected latents with every dimension >= 1, got {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise ValueError(f"expected floating-point latents, got dtype {latents.dtype}")


class WanVAECodec:
    """:class:`VideoCodec` over diffusers' ``AutoencoderKLWan`` (the Wan 2.1 VAE LongCat-Video was trained with).

    Latents are normalised with the checkpoint config's ``latents_mean`` / ``latents_std`` when present, the
    published Wan 2.1 statistics otherwise. Gradients are never tracked: this codec only ever runs inference.
    """

    def __init__(self, vae: AutoencoderKLWan, device: torch.device | str, dtype: torch.dtype) -> None:
        """Wrap an already built ``AutoencoderKLWan``; moves it to ``device``/``dtype`` and into eval mode."""
        self.device: torch.device = torch.device(device)
        self.dtype: torch.dtype = dtype
        # Cast only when the dtype differs: `from_pretrained` already loaded in `dtype` (diffusers' own way, which
        # keeps the modules a model marks as float32 in float32), and a needless `.to(dtype)` makes diffusers warn.
        if vae.dtype != dtype:
            vae = vae.to(dtype=dtype)
        self.vae = vae.to(device=self.device).eval()
        config = vae.config
        self.latent_channels: int = int(getattr(config, "z_dim", LATENT_CHANNELS))
        self.temporal_factor: int = int(getattr(config, "scale_factor_temporal", None) or TEMPORAL_FACTOR)
        self.spatial_factor: int = int(getattr(config, "scale_factor_spatial", None) or SPATIAL_FACTOR)
        mean = getattr(config, "latents_mean", None) or WAN_LATENTS_MEAN
        std = getattr(config, "latents_std", None) or WAN_LATENTS_STD
        if len(mean) != self.latent_channels or len(std) != self.latent_channels:
            raise ValueError(
                f"latents_mean/latents_std have {len(mean)}/{len(std)} entries, expected {self.latent_channels} "
                "(the VAE's z_dim)"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"latents_std must be positive, got {list(std)}")
        # Normalisation happens in float32 whatever the VAE dtype, so bf16 rounding does not bias the statistics.
        # mean, std: [1, C, 1, 1, 1]
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(
        cls, vae_dir: Path | str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> WanVAECodec:
        """Load the VAE from a local diffusers folder (``config.json`` + weights); never touches the network.

        Raises:
            FileNotFoundError: the folder, its ``config.json`` or its weights are missing.
            ValueError: the config is not an ``AutoencoderKLWan`` one diffusers can build.
        """
        vae_dir = Path(vae_dir)
        if not vae_dir.is_dir():
            raise FileNotFoundError(f"VAE folder {vae_dir} does not exist (expected a diffusers AutoencoderKLWan)")
        if not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(f"VAE folder {vae_dir} has no config.json")
        if not any((vae_dir / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(
                f"VAE folder {vae_dir} has no weights (looked for {', '.join(_WEIGHT_FILES)})"
            )
        from diffusers import AutoencoderKLWan  # deferred: see the TYPE_CHECKING import

        try:
            vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=dtype, local_files_only=True)
        except (OSError, TypeError, KeyError) as exc:
            raise ValueError(f"cannot load an AutoencoderKLWan from {vae_dir}: {exc}") from exc
        return cls(vae, device, dtype)

    @torch.no_grad()
    def encode(self, video: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Encode ``[B, 3, F, H, W]`` pixels to normalised latents ``[B, 16, (F-1)/4+1, H/8, W/8]`` float32.

        ``sample=True`` draws from the posterior with ``generator`` (as in training); ``sample=False`` takes its
        mode, which is deterministic.
        """
        # no_grad rather than inference_mode: callers write into the returned tensors (rolling windows), which
        # inference tensors forbid outside inference mode.
        _check_video(video, self.temporal_factor, self.spatial_factor)
        x = video.to(device=self.device, dtype=self.dtype)  # x: [B, 3, F, H, W]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()  # z: [B, C, T, H/8, W/8]
        return (z.float() - self._mean) / self._std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised latents ``[B, 16, T, h, w]`` to pixels ``[B, 3, 4(T-1)+1, 8h, 8w]`` float32 in [-1, 1]."""
        _check_latents(latents, self.latent_channels)
        z = latents.to(device=self.device, dtype=torch.float32) * self._std + self._mean  # z: [B, C, T, h, w]
        video = self.vae.decode(z.to(self.dtype)).sample  # video: [B, 3, F, 8h, 8w]
        return video.float().clamp_(-1.0, 1.0)


# Per-row scales of the embedded codec's projection, chosen so that every latent channel has roughly unit variance
# on smooth natural-looking content (1/f noise with correlated colour channels, pixel std 0.5), like normalised
# Wan latents: the colour-mean rows carry 8 x the patch mean, far more energy than the detail rows, and chroma
# detail is the weakest. Measured stds were rounded, and the chroma ones tempered because real footage has more
# colour contrast than the synthetic content. Order: 3 colour means, 7 luma patterns, 6 chroma patterns (see
# EmbeddedCodec._projection).
_EMBEDDED_ROW_SCALES: tuple[float, ...] = (
    0.35, 0.35, 0.35,
    0.6, 0.6, 0.9, 1.0, 1.0, 1.2, 1.2,
    4.0, 4.0, 6.0, 3.0, 3.0, 4.0,
)
# 2-D DCT frequencies (u along H, v along W) of the luma and chroma patterns, lowest first.
_LUMA_FREQS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1))
_CHROMA_FREQS: tuple[tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1))


class EmbeddedCodec:
    """Deterministic stand-in :class:`VideoCodec` with the Wan VAE's shapes; needs no downloaded file.

    This is NOT a learned VAE: it exists so the daemon, the samplers and the tests can run end to end without the
    Wan weights. Each latent frame averages the pixel frames of its causal group (latent 0 <- frame 0 alone,
    latent j >= 1 <- frames 4j-3..4j), cuts it into 8x8 RGB patches (192 values) and projects each patch onto 16
    fixed orthonormal patterns: the 3 per-channel patch means (so average colour is reproduced exactly) plus 13
    low-frequency cosine patterns (7 luma, 6 chroma). Decoding applies the transpose and repeats each latent over
    its group's frames, so output is blocky and temporally stepped but recognisable. The projection is scaled
    per row so latents of natural-looking video have roughly unit variance.

    ``encode(..., sample=True)`` adds no noise: the codec is deterministic and ``generator`` is ignored.
    """

    latent_channels: int = LATENT_CHANNELS
    temporal_factor: int = TEMPORAL_FACTOR
    spatial_factor: int = SPATIAL_FACTOR

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        """Build the fixed projection on ``device`` in ``dtype`` (16 x 192 values; no other state)."""
        self.device: torch.device = torch.device(device)
        self.dtype: torch.dtype = dtype
        proj = self._projection()  # proj: [16, 192], orthonormal rows
        scales = torch.tensor(_EMBEDDED_ROW_SCALES, dtype=torch.float64).unsqueeze(1)  # scales: [16, 1]
        # Built in float64 then cast once so every instance holds bit-identical matrices.
        self._encode_matrix = (proj * scales).to(device=self.device, dtype=dtype)  # [16, 192]
        self._decode_matrix = (proj / scales).t().contiguous().to(device=self.device, dtype=dtype)  # [192, 16]

    @staticmethod
    def _projection() -> Tensor:
        """The orthonormal patterns, float64 ``[16, 192]``; patch values are flattened as (channel, y, x)."""
        s = SPATIAL_FACTOR
        n = torch.arange(s, dtype=torch.float64)

        def dct(k: int) -> Tensor:
            # Orthonormal 1-D DCT-II basis vector of frequency k: [s]
            vec = torch.cos(math.pi * (n + 0.5) * k / s)
            return vec / vec.norm()

        def pattern(colour: tuple[float, float, float], u: int, v: int) -> Tensor:
            c = torch.tensor(colour, dtype=torch.float64)
            c = c / c.norm()
            # Separable colour x vertical x horizontal pattern: [3, s, s] -> [3*s*s]
            return (c.view(3, 1, 1) * dct(u).view(1, s, 1) * dct(v).view(1, 1, s)).reshape(-1)

        rows = [pattern(colour, 0, 0) for colour in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
        rows += [pattern((1.0, 1.0, 1.0), u, v) for u, v in _LUMA_FREQS]
        # Two opponent-colour axes orthogonal to luma (and to each other): red-green and yellow-blue.
        for colour in ((1.0, -1.0, 0.0), (1.0, 1.0, -2.0)):
            rows += [pattern(colour, u, v) for u, v in _CHROMA_FREQS]
        return torch.stack(rows)

    def encode(self, video: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Encode ``[B, 3, F, H, W]`` pixels to latents ``[B, 16, (F-1)/4+1, H/8, W/8]`` float32 (deterministic).

        ``generator`` and ``sample`` are accepted for protocol compatibility and ignored.
        """
        _check_video(video, self.temporal_factor, self.spatial_factor)
        t, s = self.temporal_factor, self.spatial_factor
        with torch.no_grad():
            x = video.to(device=self.device, dtype=self.dtype)  # x: [B, 3, F, H, W]
            b, c, f, h, w = x.shape
            k = (f - 1) // t
            rest = x[:, :, 1:].reshape(b, c, k, t, h, w).mean(dim=3)  # rest: [B, 3, k, H, W]
            groups = torch.cat([x[:, :, :1], rest], dim=2)  # groups: [B, 3, T, H, W]
            patches = groups.reshape(b, c, k + 1, h // s, s, w // s, s)
            patches = patches.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, k + 1, h // s, w // s, c * s * s)
            # patches: [B, T, h, w, 192] -> z: [B, T, h, w, 16]
            z = patches @ self._encode_matrix.t()
            return z.permute(0, 4, 1, 2, 3).float().contiguous()  # [B, 16, T, h, w]

    def pixel_gains(self) -> Tensor:
        """Squared pixel-space norm of each latent channel's decoding pattern, float32 ``[16]``.

        The decoder is linear with orthogonal patterns, so a latent error ``e`` costs ``sum_c gains[c] * e_c^2`` in
        pixel-space squared error: the colour-mean channels weigh about 300 times more than the chroma details.
        """
        return self._decode_matrix.float().pow(2).sum(dim=0).cpu()  # [192, 16] -> [16]

    def decode(self, latents: Tensor) -> Tensor:
        """Decode latents ``[B, 16, T, h, w]`` to pixels ``[B, 3, 4(T-1)+1, 8h, 8w]`` float32 clamped to [-1, 1]."""
        _check_latents(latents, self.latent_channels)
        t, s = self.temporal_factor, self.spatial_factor
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.dtype)  # z: [B, 16, T, h, w]
            b, _, n, h, w = z.shape
            patches = z.permute(0, 2, 3, 4, 1) @ self._decode_matrix.t()  # patches: [B, T, h, w, 192]
            frames = patches.reshape(b, n, h, w, 3, s, s).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, n, h * s, w * s)
            # Latent 0 stands for frame 0 alone; every later latent for the 4 frames of its group.
            repeats = torch.full((n,), t, dtype=torch.long, device=frames.device)
            repeats[0] = 1
            video = frames.repeat_interleave(repeats, dim=2)  # video: [B, 3, 4(T-1)+1, 8h, 8w]
            return video.float().clamp_(-1.0, 1.0)
