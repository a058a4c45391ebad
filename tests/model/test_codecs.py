"""Video codecs: frame arithmetic, the embedded stand-in codec, and WanVAECodec over a tiny random Wan VAE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from streamd.model.vae import (
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    EmbeddedCodec,
    VideoCodec,
    WanVAECodec,
    latent_frames,
    pixel_frames,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing here may reach the Hugging Face hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- frame arithmetic -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "latents"), [(1, 1), (5, 2), (9, 3), (13, 4), (93, 24)])
def test_frame_arithmetic_table(frames: int, latents: int) -> None:
    assert latent_frames(frames) == latents
    assert pixel_frames(latents) == frames


@pytest.mark.parametrize("frames", [0, -3, 2, 4, 12, 92])
def test_latent_frames_rejects_bad_counts(frames: int) -> None:
    with pytest.raises(ValueError, match="4k\\+1"):
        latent_frames(frames)


def test_pixel_frames_rejects_nonpositive() -> None:
    with pytest.raises(ValueError):
        pixel_frames(0)


def test_other_temporal_factor() -> None:
    assert latent_frames(9, temporal_factor=8) == 2
    assert pixel_frames(3, temporal_factor=2) == 5


# --- EmbeddedCodec ----------------------------------------------------------------------------------------------


def _smooth_video(frames: int, height: int, width: int) -> torch.Tensor:
    """A slowly panning colour gradient: [1, 3, F, H, W] in [-1, 1], smooth in space and time."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.linspace(0, 1, height).view(1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width)
    red = 0.6 * torch.sin(2 * math.pi * (x + 0.01 * t)) * torch.ones_like(y)
    green = 0.5 * torch.cos(math.pi * y + 0.02 * t) * torch.ones_like(x)
    blue = 0.4 * (x + y - 1.0) + 0.0 * t
    return torch.stack([red, green, blue]).unsqueeze(0)  # [1, 3, F, H, W]


def test_embedded_codec_satisfies_protocol() -> None:
    codec = EmbeddedCodec()
    assert isinstance(codec, VideoCodec)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (16, 4, 8)
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32


def test_embedded_codec_shapes() -> None:
    codec = EmbeddedCodec()
    video = torch.rand(2, 3, 13, 64, 96) * 2 - 1
    z = codec.encode(video)
    assert z.shape == (2, 16, 4, 8, 12) and z.dtype == torch.float32
    out = codec.decode(z)
    assert out.shape == (2, 3, 13, 64, 96) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


@pytest.mark.parametrize("latents", [1, 2, 4, 6])
def test_embedded_decode_frame_counts(latents: int) -> None:
    out = EmbeddedCodec().decode(torch.zeros(1, 16, latents, 2, 3))
    assert out.shape == (1, 3, 4 * (latents - 1) + 1, 16, 24)


def test_embedded_projection_is_orthonormal() -> None:
    proj = EmbeddedCodec._projection()
    assert proj.shape == (16, 192)
    torch.testing.assert_close(proj @ proj.t(), torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)


def test_embedded_round_trip_constant_colour_is_exact() -> None:
    codec = EmbeddedCodec()
    colour = torch.tensor([0.3, -0.55, 0.9]).view(1, 3, 1, 1, 1)
    video = colour.expand(1, 3, 13, 64, 96).clone()
    out = codec.decode(codec.encode(video))
    torch.testing.assert_close(out, video, atol=1e-5, rtol=0)


def test_embedded_round_trip_smooth_video_is_close() -> None:
    codec = EmbeddedCodec()
    video = _smooth_video(13, 64, 96)
    out = codec.decode(codec.encode(video))
    assert out.shape == video.shape
    err = (out - video).abs()
    assert err.mean() < 0.02, err.mean()
    assert err.max() < 0.15, err.max()
    # The detail patterns matter: a mean-colour-only reconstruction is clearly worse.
    z = codec.encode(video)
    z[:, 3:] = 0
    assert (codec.decode(z) - video).abs().mean() > 2 * err.mean()


def test_embedded_temporal_grouping_is_causal() -> None:
    codec = EmbeddedCodec()
    video = torch.zeros(1, 3, 9, 16, 16)
    video[:, :, 5:] = 0.8  # frames 5..8 are exactly latent 2's group
    z = codec.encode(video)
    out = codec.decode(z)
    # Latent 0 is frame 0 alone, latent 1 averages frames 1..4, latent 2 frames 5..8.
    torch.testing.assert_close(out[:, :, :5], torch.zeros(1, 3, 5, 16, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :, 5:], torch.full((1, 3, 4, 16, 16), 0.8), atol=1e-5, rtol=0)
    video2 = torch.zeros(1, 3, 5, 16, 16)
    video2[:, :, 1:3] = 0.5  # half the group lit -> group average 0.25
    out2 = codec.decode(codec.encode(video2))
    torch.testing.assert_close(out2[:, :, 1:], torch.full((1, 3, 4, 16, 16), 0.25), atol=1e-5, rtol=0)


def test_embedded_codec_is_deterministic_across_instances() -> None:
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    a = EmbeddedCodec().encode(video, generator=torch.Generator().manual_seed(1), sample=True)
    b = EmbeddedCodec().encode(video, sample=False)
    assert torch.equal(a, b)


def test_embedded_latents_roughly_unit_variance() -> None:
    # Smooth-ish random content: upsampled noise, so latents are neither tiny nor huge.
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 9, 8, 12, generator=gen) * 1.6 - 0.8
    video = torch.nn.functional.interpolate(coarse, size=(9, 64, 96), mode="trilinear", align_corners=False)
    std = EmbeddedCodec().encode(video).std()
    assert 0.2 < std < 5.0, std


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 13, 64, 96), r"\[B, 3, F, H, W\], got \(3, 13, 64, 96\)"),
        ((1, 4, 13, 64, 96), r"\[B, 3, F, H, W\], got \(1, 4, 13, 64, 96\)"),
        ((1, 3, 12, 64, 96), r"4k\+1"),
        ((1, 3, 13, 60, 96), r"multiples of 8"),
        ((1, 3, 13, 64, 100), r"multiples of 8"),
    ],
)
def test_embedded_encode_rejects_bad_shapes(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EmbeddedCodec().encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(16, 4, 8, 12), (1, 8, 4, 8, 12), (1, 16, 0, 8, 12)])
def test_embedded_decode_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"latents of shape|dimension"):
        EmbeddedCodec().decode(torch.zeros(shape))


# --- WanVAECodec ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random AutoencoderKLWan saved as a diffusers folder (8x spatial, 4x temporal, 16 channels)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    path = tmp_path_factory.mktemp("wan") / "vae"
    vae.save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wan_codec_loads_without_a_warning(wan_dir: Path, dtype: torch.dtype, capfd: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture,
                                           recwarn: pytest.WarningsRecorder) -> None:
    """A normal load says nothing: diffusers finds accelerate (low host memory) and no needless dtype cast."""
    import diffusers

    diffusers.utils.logging.set_verbosity_warning()
    capfd.readouterr()
    codec = WanVAECodec.from_pretrained(wan_dir, "cpu", dtype)
    assert codec.vae.dtype == dtype
    err = capfd.readouterr().err
    assert "accelerate" not in err and "float32" not in err, err
    assert not [r for r in caplog.records if r.name.startswith("diffusers") and r.levelno >= 30], caplog.text
    assert not [w for w in recwarn if "diffusers" in str(w.filename)], [str(w.message) for w in recwarn]


def test_wan_codec_shapes(wan_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(wan_dir, "cpu", torch.float32)
    assert isinstance(codec, VideoCodec)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (16, 4, 8)
    video = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = codec.encode(video, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 16, 4, 4, 4) and z.dtype == torch.float32
    out = codec.decode(z)
    assert out.shape == (1, 3, 13, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_wan_codec_normalises_latents(wan_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(wan_dir, "cpu", torch.float32)
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = codec.encode(video, sample=False)
    with torch.no_grad():
        raw = codec.vae.encode(video).latent_dist.mode()  # raw: [1, 16, 2, 4, 4]
    mean = torch.tensor(WAN_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENTS_STD).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    # decode undoes the normalisation before the VAE sees the latents.
    with torch.no_grad():
        expected = codec.vae.decode(raw).sample.clamp(-1, 1)
    torch.testing.assert_close(codec.decode(z), expected, atol=1e-5, rtol=1e-4)


def test_wan_codec_sampling_uses_generator(wan_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(wan_dir, "cpu", torch.float32)
    video = torch.zeros(1, 3, 1, 16, 16)
    a = codec.encode(video, generator=torch.Generator().manual_seed(5))
    b = codec.encode(video, generator=torch.Generator().manual_seed(5))
    c = codec.encode(video, generator=torch.Generator().manual_seed(6))
    assert a.shape == (1, 16, 1, 2, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_wan_codec_uses_config_statistics(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan

    mean, std = [0.5] * 16, [2.0] * 16
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=mean, latents_std=std)
    codec = WanVAECodec(vae, "cpu", torch.float32)
    video = torch.zeros(1, 3, 1, 16, 16)
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(codec.encode(video, sample=False), (raw - 0.5) / 2.0)


def test_wan_codec_rejects_bad_shapes(wan_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(wan_dir)
    with pytest.raises(ValueError, match="4k\\+1"):
        codec.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        codec.decode(torch.zeros(1, 4, 2, 4, 4))


def test_wan_codec_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        WanVAECodec.from_pretrained(missing)


def test_wan_codec_missing_config_or_weights(tmp_path: Path, wan_dir: Path) -> None:
    empty = tmp_path / "vae"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        WanVAECodec.from_pretrained(empty)
    (empty / "config.json").write_text((wan_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        WanVAECodec.from_pretrained(empty)
