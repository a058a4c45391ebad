"""3D rotary position embedding over the (time, height, width) token grid of a latent video.

The head dimension is split into a temporal section and two spatial sections (44/42/42 for a 128-wide head). Each
section has its own frequency ladder (base 1e4); every frequency rotates one adjacent pair of channels. Positions
are plain integers; the temporal axis can start at an offset so that noise frames sit after cached frames.
"""

from __future__ import annotations

import torch

ROPE_BASE = 10000.0


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (t, h, w): the spatial sections take 2*(head_dim//6) each, time takes the rest."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(positions: torch.Tensor, channels: int) -> torch.Tensor:
    # positions: [P] -> angles [P, channels], each frequency repeated for its (even, odd) channel pair
    freqs = ROPE_BASE ** (-torch.arange(0, channels, 2, dtype=torch.float64, device=positions.device) / channels)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return angles.repeat_interleave(2, dim=-1)


def rope_tables(
    head_dim: int,
    grid: tuple[int, int, int],
    t_offset: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T*H*W, head_dim] (fp32) for a grid whose frames sit at t_offset, t_offset+1, ...

    Tokens are flattened in (T, H, W) order, like the patch embedding.
    """
    t, h, w = grid
    dt, dh, dw = rope_sections(head_dim)
    device = torch.device(device)
    at = _axis_angles(torch.arange(t_offset, t_offset + t, device=device), dt)  # [T, dt]
    ah = _axis_angles(torch.arange(h, device=device), dh)  # [H, dh]
    aw = _axis_angles(torch.arange(w, device=device), dw)  # [W, dw]
    angles = torch.cat(
        [
            at[:, None, None, :].expand(t, h, w, dt),
            ah[None, :, None, :].expand(t, h, w, dh),
            aw[None, None, :, :].expand(t, h, w, dw),
        ],
        dim=-1,
    ).reshape(t * h * w, head_dim)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x: [B, heads, N, D] by the [N, D] tables; computed in fp32."""
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))  # [B, heads, N, D/2, 2]
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (x0, x1) -> (-x1, x0)
    return (xf * cos + rotated * sin).to(x.dtype)
