"""Stateless sampler steps: the flow-matching Euler step and CFG-zero guidance.

The LongCat-Video model output v approximates (x0 - noise), the opposite sign of the usual flow velocity, so the
sampler negates it: x <- x + (sigma_next - sigma) * (-v). Everything here computes and returns float32 whatever
the model's dtype, because the latent state accumulates ~50 small updates and bf16 would drift.

CFG-zero ("optimized scale") replaces plain classifier-free guidance. Per sample, over the flattened predictions,

    s* = <c, u> / (|u|^2 + 1e-8)
    v  = s* u + g (c - s* u)

with u the unconditional and c the conditional prediction and g the guidance scale. s* is one scalar per sample,
broadcast over every other dimension of the prediction, whatever its rank (a known reference bug reshapes it to
4 dims, which breaks on 5-D video latents [B, C, T, H, W]).

Which frames s* is taken over: streamd computes s* over the NOISE frames only, i.e. the frames being generated,
in both the KV-cached path (where the model only ever returns noise frames) and the uncached path (where the
caller slices the conditioning frames off the model output before guiding). The two paths therefore give
identical guided results. The reference's uncached path would include the conditioning frames in the flatten,
which changes s* and makes cached and uncached sampling disagree.

At guidance 1.0 CFG-zero reduces to the conditional prediction exactly, so callers skip the unconditional branch
altogether and pass the conditional-only batch through `guided_velocity` unchanged (or do not call it).
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step from noise level `sigma` to `sigma_next` given the raw model output `v` (x0 - noise).

    Returns float32: x + (sigma_next - sigma) * (-v).
    """
    if x.shape != v.shape:
        raise ValueError(f"latent {tuple(x.shape)} and model output {tuple(v.shape)} differ in shape")
    # x, v: [B, C, T, H, W] (any shape works, the step is elementwise)
    return x.float() - (sigma_next - sigma) * v.float()


def cfg_zero(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG-zero guidance of an unconditional and a conditional prediction, both [B, ...] of any rank.

    s* is computed per sample over all non-batch elements of the inputs, so pass noise frames only (see the
    module docstring). Computed and returned in float32. At guidance 1.0 the result is `v_cond` exactly.
    """
    if v_uncond.shape != v_cond.shape:
        raise ValueError(f"uncond {tuple(v_uncond.shape)} and cond {tuple(v_cond.shape)} differ in shape")
    if v_cond.ndim < 1 or v_cond.shape[0] == 0:
        raise ValueError(f"predictions need a non-empty batch dimension, got {tuple(v_cond.shape)}")
    # u, c: [B, C, T, H, W] (or any [B, ...])
    u, c = v_uncond.float(), v_cond.float()
    if guidance == 1.0:
        # s* u + 1 * (c - s* u) is c in exact arithmetic but not in floating point: return c itself
        return c
    batch = u.shape[0]
    u_flat, c_flat = u.reshape(batch, -1), c.reshape(batch, -1)  # [B, N]
    # Summed in fp64 and rounded to fp32: a parallel fp32 sum splits its order by thread count, so one process and
    # a context-parallel rank (its share of the cores) would get s* a few ulps apart, which chunks amplify.
    u64, c64 = u_flat.double(), c_flat.double()
    s_star = ((c64 * u64).sum(dim=1) / (u64.square().sum(dim=1) + _EPS)).float()  # [B]
    s_star = s_star.reshape(batch, *([1] * (u.ndim - 1)))  # [B, 1, 1, ...]: one scalar per sample, any rank
    return s_star * u + guidance * (c - s_star * u)


def guided_velocity(v: torch.Tensor, guidance: float, batch_size: int | None = None) -> torch.Tensor:
    """Guide a batched model output laid out [uncond ; cond]: [2B, ...] -> [B, ...] float32.

    At guidance 1.0 the caller is expected to skip the unconditional branch, so `v` is the conditional
    prediction [B, ...] alone and is returned unchanged. `batch_size` (B), when given, makes the layout explicit:
    a [2B] batch is then guided even at 1.0 (giving its cond half), and a [B] batch with guidance != 1.0 is an
    error because there is no unconditional branch to guide with.
    """
    n = v.shape[0]
    if batch_size is not None:
        if n == batch_size and guidance == 1.0:
            return v
        if n != 2 * batch_size:
            raise ValueError(f"guidance {guidance} needs a [uncond ; cond] batch of {2 * batch_size}, got {n}")
    elif guidance == 1.0:
        return v
    if n % 2:
        raise ValueError(f"a guided batch is [uncond ; cond] and must be even, got {n}")
    uncond, cond = v.chunk(2)  # each [B, ...]
    return cfg_zero(uncond, cond, guidance)
