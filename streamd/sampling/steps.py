"""Stateless sampler steps: the flow-matching Euler step and CFG-zero guidance.

The model output v approximates (x0 - noise); the sampler negates it: x <- x + (sigma_next - sigma) * (-v).

CFG-zero ("optimized scale"): per sample, s* = <c, u> / (|u|^2 + 1e-8) over the flattened predictions, then
v = s* u + g (c - s* u). streamd computes s* over the NOISE frames only (the frames being generated), in both
the cached and the uncached path, so the two give identical guided samples. (The reference's uncached path would
include the conditioning frames in the flatten.) s* is broadcast over every dimension of the prediction.
"""

from __future__ import annotations

import torch


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step from sigma to sigma_next with raw model output v; float32 in, float32 out."""
    return x.float() + (sigma_next - sigma) * (-v.float())


def cfg_zero(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """CFG-zero guidance of two predictions [B, ...] (any rank), computed in float32."""
    u, c = v_uncond.float(), v_cond.float()
    b = u.shape[0]
    u_flat, c_flat = u.reshape(b, -1), c.reshape(b, -1)
    s_star = (c_flat * u_flat).sum(dim=1) / (u_flat.pow(2).sum(dim=1) + 1e-8)  # [B]
    s_star = s_star.view(b, *([1] * (u.ndim - 1)))  # broadcast over every dim, whatever the rank
    return s_star * u + guidance * (c - s_star * u)


def guided_velocity(v: torch.Tensor, guidance: float) -> torch.Tensor:
    """Guide a batched prediction laid out [uncond ; cond]: [2B, ...] -> [B, ...].

    At guidance 1 callers run only the conditional branch and use its prediction as is.
    """
    if v.shape[0] % 2:
        raise ValueError(f"a guided batch is [uncond ; cond] and must be even, got {v.shape[0]}")
    uncond, cond = v.chunk(2)
    return cfg_zero(uncond, cond, guidance)
