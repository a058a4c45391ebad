"""Shared fixtures for model tests: tiny LongCat-architecture DiTs with non-degenerate weights, on CPU in fp32."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from streamd.model.dit import LongCatVideoDiT
from streamd.model.presets import get_preset, init_deterministic


def make_dit(zero_pad: bool = False, seed: int = 0) -> LongCatVideoDiT:
    """The tiny-random preset's architecture (optionally with text_tokens_zero_pad) with deterministic weights.

    Equivalence tests need arbitrary, non-degenerate weights (trained weights could hide a bug behind a small
    gate), hence the random-weight preset rather than the trained `tiny`.
    """
    config = dataclasses.replace(get_preset("tiny-random").config, text_tokens_zero_pad=zero_pad)
    model = LongCatVideoDiT.from_config(config)
    return init_deterministic(model, seed)


@pytest.fixture(scope="session")
def dit() -> LongCatVideoDiT:
    return make_dit()


def make_inputs(dit: LongCatVideoDiT, t_c: int, t_n: int, batch: int = 2, h: int = 8, w: int = 12, seed: int = 1):
    """Latents whose conditioning frames are shared by the batch, per-frame timesteps (0 on conditioning),
    text for an [uncond ; cond] batch with different padding per row."""
    gen = torch.Generator().manual_seed(seed)
    cfg = dit.config
    cond = torch.randn(1, cfg.in_channels, t_c, h, w, generator=gen)
    noise = torch.randn(batch, cfg.in_channels, t_n, h, w, generator=gen)
    latents = torch.cat([cond.expand(batch, -1, -1, -1, -1), noise], dim=2)
    timestep = torch.full((batch, t_c + t_n), 640.0)
    timestep[:, :t_c] = 0.0
    text = torch.randn(batch, 9, cfg.caption_channels, generator=gen)
    mask = torch.ones(batch, 9, dtype=torch.int64)
    mask[0, 3:] = 0
    if batch > 1:
        mask[1, 7:] = 0
    return cond, latents, timestep, text, mask
