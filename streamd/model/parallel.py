"""Context parallelism for the DiT: one forward spread over N ranks (Ulysses, as in LongCat-Video).

The tokens of every latent frame are split spatially across the ranks, never in time: N is factored into an
H x W grid of tiles (1 -> 1x1, 2 -> 1x2, 4 -> 2x2, 8 -> 2x4) and rank r holds tile divmod(r, W). When the patch
grid does not divide, tiles are padded to equal size; padded tokens are computed like the others but are dropped
before self-attention (they are neither queries nor keys there) and from the output, and every other operation of
a block is per token, so they never touch a real token's result.

Around self-attention an all-to-all turns each rank's [B, heads, S/N, D] (all heads, its tokens) into
[B, heads/N, S, D] (its heads, every real token, in the global (T, H, W) order), so attention, RoPE (global
positions) and the block-causal split run exactly as in one process; a second all-to-all brings the output back.
Cross-attention, the FFN and the modulation stay local. The conditioning KV cache is kept head-sharded: each rank
holds K (pre-RoPE) and V of its heads for every conditioning token, 1/N of the cache, and reads it without moving
it. After the last block an all-gather rejoins the output tokens, so every rank has the whole prediction.

`Layout` and `split_factors` are pure; `ContextParallel` holds the process group and counts the bytes it sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


def split_factors(n: int) -> tuple[int, int]:
    """(rows, cols) of the spatial split of N ranks: the most nearly square, rows <= cols (2 -> 1x2, 8 -> 2x4)."""
    if n < 1:
        raise ValueError(f"context parallel size must be at least 1, got {n}")
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return rows, n // rows


@dataclass(frozen=True)
class Layout:
    """How a token grid (T, h, w) is tiled over `size` ranks.

    Each rank holds T * tile_h * tile_w tokens, frame-major, (row, col) within its tile. `perm[g]` is the index,
    in the rank-major concatenation of every rank's tokens, of real token g of the global (T, h, w) order.
    """

    grid: tuple[int, int, int]
    size: int
    rows: int
    cols: int
    tile_h: int
    tile_w: int

    @classmethod
    def of(cls, grid: tuple[int, int, int], size: int) -> Layout:
        rows, cols = split_factors(size)
        _, h, w = grid
        return cls(grid, size, rows, cols, -(-h // rows), -(-w // cols))

    @property
    def local_tokens_per_frame(self) -> int:
        return self.tile_h * self.tile_w

    @property
    def local_tokens(self) -> int:
        return self.grid[0] * self.local_tokens_per_frame

    @property
    def real_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def padded(self) -> bool:
        """Whether some tiles hold padding."""
        _, h, w = self.grid
        return self.tile_h * self.rows != h or self.tile_w * self.cols != w

    def tile(self, rank: int) -> tuple[int, int]:
        """(row, col) of the tile of `rank`."""
        return divmod(rank, self.cols)

    def perm(self) -> torch.Tensor:
        """[T*h*w] int64: gathered index of every real token, in global (T, h, w) order."""
        t, h, w = self.grid
        y = torch.arange(h)[:, None].expand(h, w)
        x = torch.arange(w)[None, :].expand(h, w)
        rank = (y // self.tile_h) * self.cols + x // self.tile_w
        local = (y % self.tile_h) * self.tile_w + x % self.tile_w  # within one frame of the tile
        frame = torch.arange(t)[:, None, None] * self.local_tokens_per_frame
        return (rank[None] * self.local_tokens + frame + local[None]).reshape(-1)


@dataclass
class Traffic:
    """Bytes this rank sent through the collectives, by kind (all_to_all, all_gather)."""

    sent: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + nbytes
        self.calls[kind] = self.calls.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def reset(self) -> None:
        self.sent.clear()
        self.calls.clear()


class ContextParallel:
    """This rank's part of a context-parallel group: the collectives the DiT calls.

    group: a torch.distributed process group (None: the default group). All ranks of the group must run the same
    forwards in the same order.
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.traffic = Traffic()
        self._perms: dict[tuple[Any, ...], torch.Tensor] = {}

    def layout(self, grid: tuple[int, int, int]) -> Layout:
        return Layout.of(grid, self.size)

    def shard(self, grid: tuple[int, int, int], device: torch.device) -> Shard:
        """The per-forward helper for a query grid (T, h, w) of patch tokens."""
        layout = self.layout(grid)
        key = (layout, str(device))
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) >= 16:
                self._perms.clear()
            perm = self._perms[key] = layout.perm().to(device)
        return Shard(self, layout, perm)

    # ------------------------------------------------------------------------------------------ collectives
    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, ...] contiguous; chunk j goes to rank j; returns [N, ...] with chunk j from rank j."""
        out = torch.empty_like(x)
        self._dist.all_to_all_single(out, x, group=self.group)
        self.traffic.add("all_to_all", x.numel() * x.element_size() * (self.size - 1) // self.size)
        return out

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x: [...] contiguous on every rank -> [N, ...] in rank order."""
        out = torch.empty((self.size, *x.shape), dtype=x.dtype, device=x.device)
        if x.is_cuda:  # NCCL gathers into one buffer
            self._dist.all_gather_into_tensor(out, x, group=self.group)
        else:  # gloo takes a list of views of it
            self._dist.all_gather(list(out.unbind(0)), x, group=self.group)
        self.traffic.add("all_gather", x.numel() * x.element_size() * (self.size - 1))
        return out


@dataclass
class Shard:
    """One forward's view of the split: the layout of its query tokens and the collectives around attention."""

    cp: ContextParallel
    layout: Layout
    perm: torch.Tensor

    @property
    def size(self) -> int:
        return self.cp.size

    def local_latents(self, latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
        """This rank's tile of latents [B, C, T, H, W] (zero-padded where the grid does not divide)."""
        _, ph, pw = patch
        lay = self.layout
        row, col = lay.tile(self.cp.rank)
        th, tw = lay.tile_h * ph, lay.tile_w * pw
        pad_h, pad_w = lay.rows * th - latents.shape[3], lay.cols * tw - latents.shape[4]
        if pad_h or pad_w:
            latents = F.pad(latents, (0, pad_w, 0, pad_h))
        return latents[:, :, :, row * th:(row + 1) * th, col * tw:(col + 1) * tw]

    def cond_tokens(self, local_cond_tokens: int) -> int:
        """Global count of conditioning tokens given this rank's local count (both frame-major)."""
        t, h, w = self.layout.grid
        return local_cond_tokens // self.layout.local_tokens_per_frame * h * w

    def to_heads(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each [B, heads, S_local, D] (all heads, local tokens) -> [B, heads/N, S_real, D] (global order)."""
        n = self.size
        b, heads, s, d = xs[0].shape
        stacked = torch.stack(xs)  # [k, B, H, S_l, D]
        send = stacked.view(len(xs), b, n, heads // n, s, d).permute(2, 0, 1, 3, 4, 5).contiguous()
        recv = self.cp.all_to_all(send)  # [N(src), k, B, H/N, S_l, D]
        joined = recv.permute(1, 2, 3, 0, 4, 5).reshape(len(xs), b, heads // n, n * s, d)
        return tuple(joined.index_select(3, self.perm).unbind(0))

    def to_tokens(self, out: torch.Tensor) -> torch.Tensor:
        """[B, heads/N, S_real, D] (global order) -> [B, heads, S_local, D]; padded tokens get zeros."""
        n, lay = self.size, self.layout
        b, hn, _, d = out.shape
        full = out.new_zeros(b, hn, n * lay.local_tokens, d)
        full.index_copy_(2, self.perm, out)
        send = full.view(b, hn, n, lay.local_tokens, d).permute(2, 0, 1, 3, 4).contiguous()
        recv = self.cp.all_to_all(send)  # [N(src head group), B, H/N, S_l, D]
        return recv.permute(1, 0, 2, 3, 4).reshape(b, n * hn, lay.local_tokens, d)

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S_local, P] on every rank -> [B, S_real, P] in global order, on every rank."""
        b, _, p = x.shape
        parts = self.cp.all_gather(x.contiguous())  # [N, B, S_l, P]
        return parts.permute(1, 0, 2, 3).reshape(b, -1, p).index_select(1, self.perm)


def check_heads(num_heads: int, size: int) -> None:
    """Raise ValueError unless `size` ranks can share `num_heads` heads."""
    if size < 1 or num_heads % size:
        raise ValueError(f"context parallel size {size} must divide the model's {num_heads} attention heads")
