"""Embedded model presets: the LongCat-Video architecture at sizes that run on a laptop CPU.

`tiny` is the embedded default: the real DiT class at 3.1 M parameters, trained by `streamd train` on procedural
video and shipped in the package (`streamd/model/weights/tiny/`, loaded through the strict checkpoint loader),
with the embedded text encoder and codec. `tiny-random` (the earlier tiny config with deterministic random
weights) serves the equivalence tests that need arbitrary weights; `small` is a compute-bound random-weight
config for CPU benchmarks; `longcat-13.6b-random` is the published shape for meta-device checks and GPU benches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LONGCAT_13B, DiTConfig
from .dit import LongCatVideoDiT


@dataclass(frozen=True)
class Preset:
    """An embedded model: its DiT config, native resolution and sampling defaults."""

    name: str
    config: DiTConfig
    height: int
    width: int
    text_max_length: int
    steps: int
    schedule: str
    guidance: float
    description: str
    shift: float = 12.0  # flow-matching time shift of the sampler (and of training)
    weights: str | None = None  # folder under streamd/model/weights/ holding a trained checkpoint, or None


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        config=DiTConfig(hidden_size=192, depth=4, num_heads=4, caption_channels=64, adaln_tembed_dim=128),
        height=64,
        width=112,
        text_max_length=32,
        steps=2,
        schedule="base",
        guidance=1.0,
        weights="tiny",
        description="embedded LongCat-architecture model trained by `streamd train` on procedural video "
                    "(moving shapes, pans, zooms, rotation, brightness drift over textures), 64x112",
    ),
    "tiny-random": Preset(
        name="tiny-random",
        config=DiTConfig(hidden_size=96, depth=2, num_heads=4, caption_channels=64, adaln_tembed_dim=64),
        height=128,
        width=224,
        text_max_length=32,
        steps=8,
        schedule="base",
        guidance=4.0,
        description="embedded untrained LongCat-architecture model (96 wide, 2 blocks, random weights; "
                    "for equivalence tests)",
    ),
    "small": Preset(
        name="small",
        config=DiTConfig(hidden_size=512, depth=6, num_heads=8, caption_channels=512, adaln_tembed_dim=256),
        height=128,
        width=224,
        text_max_length=32,
        steps=8,
        schedule="base",
        guidance=4.0,
        description="embedded untrained LongCat-architecture model for CPU benchmarks (512 wide, 6 blocks)",
    ),
}

# Published 13.6B shape, for meta-device checks and GPU benchmarks with random weights.
LONGCAT_PRESET = Preset(
    name="longcat-13.6b-random",
    config=LONGCAT_13B,
    height=480,
    width=832,
    text_max_length=512,
    steps=16,
    schedule="distilled",
    guidance=1.0,
    description="the published 13.6B architecture with random weights (benchmarks only)",
)


def get_preset(name: str) -> Preset:
    """Look up an embedded preset by name ('tiny', 'small', 'longcat-13.6b-random')."""
    if name == LONGCAT_PRESET.name:
        return LONGCAT_PRESET
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join([*PRESETS, LONGCAT_PRESET.name])
        raise ValueError(f"unknown embedded model {name!r} (known: {known}, or a checkpoint folder)") from None


@torch.no_grad()
def init_training(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The usual DiT start for training, seeded: Xavier-uniform matrices, zero biases, unit norm weights, and
    zeroed adaLN modulations and output layer, so every block starts as the identity and the output as zero."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "adaLN_modulation" in name or name.startswith("final_layer.linear"):
            param.zero_()
        elif param.ndim >= 2:
            fan_out, fan_in = param.shape[0], param[0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            param.copy_((torch.rand(param.shape, generator=gen) * 2 - 1) * bound)
        elif name.endswith("norm.weight") or "_norm." in name:
            param.fill_(1.0)
        else:
            param.zero_()
    return model


@torch.no_grad()
def init_deterministic(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter from a seeded CPU generator, the same on every machine.

    Unlike the usual DiT initialisation (zero gates and a zero output layer, which make the model output zeros and
    every equivalence test vacuous), every weight here is non-zero: matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2),
    norm weights ~ 1 + N(0, 0.1^2).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if param.ndim >= 2:
            fan_in = param[0].numel()
            value = noise / fan_in**0.5
        elif name.endswith("norm.weight") or "_norm." in name:
            value = 1.0 + 0.1 * noise
        else:
            value = 0.02 * noise
        param.copy_(value.to(param.dtype))
    return model


def build_dit(
    preset: str | Preset, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> LongCatVideoDiT:
    """The preset's DiT with deterministic weights, on `device` in `dtype`."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    device = torch.device(device)
    if device.type == "cuda" and preset.config.hidden_size >= 2048:
        # a 13.6B model does not fit in host RAM twice: initialise in place on the GPU (seeded, not CPU-identical)
        model = LongCatVideoDiT.from_config(preset.config, device=device, dtype=dtype)
        torch.manual_seed(seed)
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
            elif name.endswith("norm.weight") or "_norm." in name:
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 0.02)
        return model
    model = LongCatVideoDiT.from_config(preset.config, device="cpu", dtype=torch.float32)
    init_deterministic(model, seed)
    return model.to(device=device, dtype=dtype)
