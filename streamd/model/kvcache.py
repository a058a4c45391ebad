"""Preallocated per-layer K/V buffers holding a conditioning window's keys and values.

K is stored after the per-head RMSNorm and BEFORE RoPE, V as projected. Because RoPE is applied when the cache is
used, with the cached frames always at temporal positions 0..T_c-1, positions never grow however long a stream
runs. Buffers are allocated once, sized for the largest window they must hold, and refilled in place.
"""

from __future__ import annotations

import torch

from .config import DiTConfig


class KVCache:
    """K/V of the conditioning tokens for every transformer block, in fixed buffers.

    Bound: `capacity_tokens` tokens per layer, fixed at construction; `fill` refuses more.
    Buffers: k[i], v[i]: [batch, heads, capacity_tokens, head_dim] for block i. `heads` defaults to the model's;
    under context parallelism each rank holds its share (num_heads / N) for every token.
    """

    def __init__(
        self,
        config: DiTConfig,
        capacity_tokens: int,
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        heads: int | None = None,
    ) -> None:
        if capacity_tokens < 1 or batch < 1:
            raise ValueError("a KV cache needs at least one token and one batch entry")
        heads = config.num_heads if heads is None else heads
        if heads < 1 or config.num_heads % heads:
            raise ValueError(f"a KV cache of {heads} heads cannot hold a share of {config.num_heads} heads")
        self.config = config
        self.capacity_tokens = capacity_tokens
        self.batch = batch
        self.heads = heads
        shape = (batch, heads, capacity_tokens, config.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.depth)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.depth)]
        self.grid: tuple[int, int, int] | None = None  # (T_c, h, w) of the tokens currently held

    @staticmethod
    def bytes_needed(config: DiTConfig, tokens: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16,
                     heads: int | None = None) -> int:
        """Bytes the buffers of a cache for `tokens` conditioning tokens take (K and V, every layer)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        heads = config.num_heads if heads is None else heads
        return 2 * config.depth * batch * heads * tokens * config.head_dim * itemsize

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def device(self) -> torch.device:
        """Where the buffers live."""
        return self.k[0].device

    @property
    def dtype(self) -> torch.dtype:
        """Element type of the buffers."""
        return self.k[0].dtype

    @property
    def tokens(self) -> int:
        """Number of valid tokens per layer (0 before the first fill)."""
        if self.grid is None:
            return 0
        t, h, w = self.grid
        return t * h * w

    @property
    def num_latents(self) -> int:
        """Conditioning latent frames held (T_c)."""
        return 0 if self.grid is None else self.grid[0]

    def begin_fill(self, grid: tuple[int, int, int]) -> None:
        """Start refilling the cache for a new conditioning grid (T_c, h, w)."""
        t, h, w = grid
        if t * h * w > self.capacity_tokens:
            raise ValueError(
                f"conditioning window of {t}x{h}x{w} = {t * h * w} tokens exceeds the cache capacity "
                f"of {self.capacity_tokens} tokens"
            )
        self.grid = (t, h, w)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy one block's K/V ([batch, heads, tokens, head_dim]) into its buffers, in place."""
        n = k.shape[2]
        if n != self.tokens:
            raise ValueError(f"layer {layer}: got {n} tokens, the window has {self.tokens}")
        self.k[layer][:, :, :n].copy_(k)
        self.v[layer][:, :, :n].copy_(v)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of block `index`'s valid K and V: [batch, heads, tokens, head_dim] each."""
        if self.grid is None:
            raise RuntimeError("the KV cache is empty: prefill it first")
        n = self.tokens
        return self.k[index][:, :, :n], self.v[index][:, :, :n]
