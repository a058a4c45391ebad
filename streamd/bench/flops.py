"""Analytic FLOP counts of one DiT forward, for predicted speedups and achieved-FLOP/s figures.

Counts multiply-adds as 2 FLOPs, for the matmuls and attention products only (norms, RoPE and activations are
memory-bound and left out). torch's FlopCounterMode does not see SDPA on every backend, hence this count.
"""

from __future__ import annotations

import math

from ..model.config import DiTConfig


def dit_forward_flops(
    config: DiTConfig,
    batch: int,
    tokens_per_frame: int,
    cond_frames: int,
    noise_frames: int,
    text_tokens: int,
    cached: bool,
) -> int:
    """FLOPs of one forward over `noise_frames` new frames after `cond_frames` conditioning frames.

    cached=True: only noise tokens run; they attend to [cache ; own] keys.
    cached=False: all tokens run; conditioning tokens attend among themselves, noise tokens to everything.
    Cross-attention runs for noise tokens only in both paths.
    """
    c, f = config.hidden_size, config.ffn_hidden
    n_c = cond_frames * tokens_per_frame
    n_n = noise_frames * tokens_per_frame
    n_run = n_n if cached else n_c + n_n
    frames_run = noise_frames if cached else cond_frames + noise_frames
    attn_pairs = n_n * (n_c + n_n) + (0 if cached else n_c * n_c)
    per_block = (
        2 * n_run * c * 3 * c  # qkv
        + 4 * attn_pairs * c  # QK^T and AV over all heads
        + 2 * n_run * c * c  # attention output projection
        + 2 * n_n * c * c * 2  # cross-attention q and output projections
        + 2 * text_tokens * c * 2 * c  # cross-attention k, v of the text
        + 4 * n_n * text_tokens * c  # cross-attention products
        + 2 * n_run * c * f * 3  # SwiGLU
        + 2 * frames_run * config.adaln_tembed_dim * 6 * c  # per-frame modulation
    )
    embed = 2 * n_run * c * config.in_channels * math.prod(config.patch_size) + 2 * n_run * c * config.patch_channels
    text = 2 * text_tokens * (config.caption_channels * c + c * c)
    return batch * (config.depth * per_block + embed + text)
