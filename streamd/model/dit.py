"""The LongCat-Video diffusion transformer (DiT), with its video-continuation KV cache.

The forward is pure: latents, per-frame timesteps and text in, the raw model output out (the sampler negates it).
Parameter names follow the published checkpoint so that its state dict loads strictly.

Video continuation: the first `num_cond_latents` latent frames are clean conditioning frames (timestep 0). Their
tokens attend only to each other and get no cross-attention, so their hidden states never depend on the noise
frames, the text or the guidance branch. `prefill` runs them once and stores each block's K (after the q/k norm,
before RoPE) and V in a `KVCache`; later forwards over the noise frames alone attend to [cache ; own] keys.

Context parallelism (`set_context_parallel`, see parallel.py): each rank embeds only its spatial tiles of every
frame, self-attention runs over all tokens for the rank's share of the heads, the cache holds that share, and
the output is gathered; without it (N = 1) the forward is the one-process code, untouched.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, masked_attention
from .config import DiTConfig
from .kvcache import KVCache
from .parallel import ContextParallel, Shard, check_heads
from .rope import apply_rope, rope_tables

# RoPE tables kept per model instance: one entry per (grid, offset, device) in use. Streams at a handful of
# resolutions need a handful of entries; the bound keeps a client that cycles sizes from growing it.
_ROPE_CACHE_ENTRIES = 16


def _linear_fp32(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a linear layer in fp32 whatever the model dtype (modulation paths are fp32 in the reference)."""
    assert isinstance(layer, nn.Linear)
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def _linear_per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An fp32 linear over per-frame rows (timestep embedding, adaLN), accumulated in fp64 and rounded to fp32.

    Why: these products have one row per latent frame, and the row count differs between paths (the cached path
    has T_n frames, the uncached one T_c + T_n). For so few rows BLAS chooses its reduction order by row count
    and thread count (split-K), so the same frame's modulation came out a few ulps apart in the two paths, and
    between one process (all cores) and a context-parallel rank (its share of the cores). Pixel chaining turns
    such ulps into whole levels after a chunk or two. An fp64 sum rounded to fp32 is the correctly rounded
    product in all but vanishingly rare ties, whatever the row count or threads. The cost is a few rows per block.
    """
    assert isinstance(layer, nn.Linear)
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.weight.double(), bias).float()


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, computed in fp32, with a learned per-channel weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def _layer_norm_fp32(x: torch.Tensor, norm: nn.LayerNorm | None = None, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm in fp32; affine when `norm` is given (its weight/bias), else without weights. Returns fp32."""
    if norm is None:
        return F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """Affine-free LayerNorm, then per-frame scale/shift (fp32). x: [B, N, C]; shift, scale: [B, F, 1, C]."""
    b, n, c = x.shape
    out = _layer_norm_fp32(x).view(b, frames, n // frames, c) * (1 + scale) + shift
    return out.view(b, n, c).to(x.dtype)


def _gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor, frames: int) -> torch.Tensor:
    """x + gate * update with a per-frame gate, in fp32. x, update: [B, N, C]; gate: [B, F, 1, C]."""
    b, n, c = x.shape
    out = x.float() + (gate * update.float().view(b, frames, n // frames, c)).view(b, n, c)
    return out.to(x.dtype)


class PatchEmbed3D(nn.Module):
    """Conv3d patchify: [B, C, T, H, W] -> tokens [B, T*h*w, hidden] in (T, H, W) order."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: every block then sees x [B, N, C] with the same strides (one compiled graph for all blocks)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding ([cos, sin], max period 1e4) of raw t in [0, 1000], then an MLP; fp32."""

    def __init__(self, embed_dim: int, frequency_size: int) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: [N] -> [N, embed_dim] (fp32)
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        hidden = F.silu(_linear_per_frame(self.mlp[0], emb))
        return _linear_per_frame(self.mlp[2], hidden)


class CaptionEmbedder(nn.Module):
    """Projects text-encoder states to the model width: Linear, GELU(tanh), Linear."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.y_proj = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(approximate="tanh"),
                                    nn.Linear(hidden, hidden))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class SelfAttention(nn.Module):
    """Fused-qkv self-attention with per-head RMSNorm on q and k and 3D RoPE."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(hidden, hidden)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, N, C] -> q, k (normed, no RoPE), v: [B, heads, N, head_dim]."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, head_dim] -> projected [B, N, C]."""
        return self.proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Cross-attention from video tokens to text tokens (RMSNorm on q and k, no RoPE)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q_linear = nn.Linear(hidden, hidden)
        self.kv_linear = nn.Linear(hidden, 2 * hidden)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, N, C]; text: [B, L, C]; text_mask: [B, L] or None
        b, n, c = x.shape
        q = self.q_norm(self.q_linear(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k, v = self.kv_linear(text).view(b, text.shape[1], 2, self.heads, self.head_dim).unbind(2)
        k = self.k_norm(k).transpose(1, 2)
        out = masked_attention(q, k, v.transpose(1, 2), text_mask)  # [B, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FeedForwardSwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, inner, bias=False)
        self.w2 = nn.Linear(inner, hidden, bias=False)
        self.w3 = nn.Linear(hidden, inner, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass(frozen=True)
class BlockPaths:
    """One block's per-path callables (`LongCatBlock.forward_cached` and friends, eager or compiled)."""

    cached: Callable[..., torch.Tensor]
    uncached: Callable[..., torch.Tensor]
    prefill: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    prefill_kv: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def eager(cls, block: LongCatBlock) -> BlockPaths:
        """The block's own methods."""
        return cls(block.forward_cached, block.forward_uncached, block.forward_prefill, block.prefill_kv)


class LongCatBlock(nn.Module):
    """One single-stream block: modulated self-attention, cross-attention, modulated SwiGLU.

    Each path has its own method with a fixed signature (`forward_cached`, `forward_uncached`, `forward_prefill`,
    `prefill_kv`), so that a compiled block gets one clean graph per path instead of one per keyword combination
    (see compiled.py). `forward` keeps the general signature for context parallelism, which runs eager.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.adaln_tembed_dim, 6 * hidden))
        self.pre_crs_attn_norm = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=True)
        self.attn = SelfAttention(hidden, config.num_heads)
        self.cross_attn = CrossAttention(hidden, config.num_heads)
        self.ffn = FeedForwardSwiGLU(hidden, config.ffn_hidden)

    def modulation(self, t_emb: torch.Tensor) -> list[torch.Tensor]:
        """t_emb: [B, F, Dt] -> six fp32 tensors [B, F, 1, C]: shift/scale/gate for attention, then for FFN."""
        return list(_linear_per_frame(self.adaLN_modulation[1], F.silu(t_emb)).unsqueeze(2).chunk(6, dim=-1))

    # ------------------------------------------------------------------------------------ pieces of every path
    def _qkv(self, x: torch.Tensor, mods: Sequence[torch.Tensor], frames: int) -> tuple[torch.Tensor, ...]:
        """x: [B, N, C] -> q, k (normed, pre-RoPE), v: [B, heads, N, head_dim]."""
        return self.attn.qkv_heads(_modulate(x, mods[0], mods[1], frames))

    def _finish(self, x: torch.Tensor, attn_out: torch.Tensor, mods: Sequence[torch.Tensor], frames: int,
                text: torch.Tensor | None, text_mask: torch.Tensor | None, nc: int) -> torch.Tensor:
        """After self-attention: gated residual, cross-attention for all but the first `nc` tokens, gated SwiGLU.

        x: [B, N, C]; attn_out: [B, heads, N, head_dim] -> [B, N, C].
        """
        x = _gated_residual(x, mods[2], self.attn.merge(attn_out), frames)
        if text is not None:
            normed = _layer_norm_fp32(x[:, nc:], self.pre_crs_attn_norm).to(x.dtype)
            update = self.cross_attn(normed, text, text_mask)
            # conditioning tokens get a zero cross-attention output
            x = torch.cat([x[:, :nc], x[:, nc:] + update], dim=1) if nc else x + update
        ffn_out = self.ffn(_modulate(x, mods[3], mods[4], frames))
        return _gated_residual(x, mods[5], ffn_out, frames)

    # ------------------------------------------------------------------------------------ one method per path
    def forward_cached(
        self, x: torch.Tensor, t_emb: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
        cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        cos_c: torch.Tensor, sin_c: torch.Tensor,
    ) -> torch.Tensor:
        """Noise tokens x [B, N, C] after cached conditioning K (pre-RoPE), V [1 or B, heads, N_c, head_dim].

        cos, sin: [N, head_dim] RoPE of x's tokens; cos_c, sin_c: [N_c, head_dim] of the cached tokens.
        """
        frames = t_emb.shape[1]
        mods = self.modulation(t_emb)
        q, k, v = self._qkv(x, mods, frames)
        b = q.shape[0]
        # A batch-1 cache serves every guidance branch: expand is a view; cat makes the one copy SDPA needs.
        k_all = torch.cat([apply_rope(k_cache, cos_c, sin_c).expand(b, -1, -1, -1), apply_rope(k, cos, sin)], dim=2)
        v_all = torch.cat([v_cache.expand(b, -1, -1, -1), v], dim=2)
        out = attention(apply_rope(q, cos, sin), k_all, v_all)
        return self._finish(x, out, mods, frames, text, text_mask, 0)

    def forward_uncached(
        self, x: torch.Tensor, t_emb: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
        cos: torch.Tensor, sin: torch.Tensor, num_cond_tokens: int,
    ) -> torch.Tensor:
        """[cond ; noise] tokens x [B, N, C]; the first `num_cond_tokens` attend only among themselves and get no
        cross-attention (block-causal). cos, sin: [N, head_dim]."""
        frames = t_emb.shape[1]
        mods = self.modulation(t_emb)
        q, k, v = self._qkv(x, mods, frames)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self._block_causal_attention(q, k, v, num_cond_tokens)
        return self._finish(x, out, mods, frames, text, text_mask, num_cond_tokens)

    def forward_prefill(
        self, x: torch.Tensor, t_emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conditioning tokens only (no text): x [1, N_c, C] -> (x, K pre-RoPE, V [1, heads, N_c, head_dim])."""
        frames = t_emb.shape[1]
        mods = self.modulation(t_emb)
        q, k, v = self._qkv(x, mods, frames)
        out = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        return self._finish(x, out, mods, frames, None, None, 0), k, v

    def prefill_kv(self, x: torch.Tensor, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block of a prefill needs only its K (pre-RoPE) and V: [1, heads, N_c, head_dim] each."""
        mods = self.modulation(t_emb)
        _, k, v = self._qkv(x, mods, t_emb.shape[1])
        return k, v

    @staticmethod
    def _block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, nc: int) -> torch.Tensor:
        """Conditioning queries (the first nc) see conditioning keys only; the others see every key."""
        if nc <= 0:
            return attention(q, k, v)
        out_cond = attention(q[:, :, :nc], k[:, :, :nc], v[:, :, :nc])
        out_noise = attention(q[:, :, nc:], k, v)
        return torch.cat([out_cond, out_noise], dim=2)

    def forward(
        self,
        x: torch.Tensor,
        t_emb: torch.Tensor,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        num_cond_tokens: int = 0,
        cache: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None,
        kv_only: bool = False,
        return_kv: bool = False,
        shard: Shard | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the block, any path, any keyword combination (the model calls the per-path methods directly
        without context parallelism; this general entry serves `shard` and callers that mix flags).

        x: [B, N, C]; t_emb: [B, F, Dt] with F = frames (or 1 for one timestep per sample);
        rope: cos/sin [N, head_dim] for this block's query tokens.
        num_cond_tokens: leading tokens that are conditioning (uncached path); they attend only among themselves
        and get no cross-attention. cache: (K, V, rope of the cached keys) of conditioning tokens that precede x.
        kv_only: return this block's (K pre-RoPE, V) and stop (prefill of the last block needs nothing more).
        return_kv: return (x, K pre-RoPE, V).
        text None skips cross-attention (conditioning-only forward).
        shard: context parallelism (x holds this rank's tokens; see parallel.py): q, k, v go to [B, heads/N,
        all real tokens, D] before RoPE and attention, and back after; the returned K, V are head-sharded;
        num_cond_tokens then counts this rank's local conditioning tokens.
        """
        cos, sin = rope
        frames = t_emb.shape[1]
        mods = self.modulation(t_emb)
        q, k, v = self._qkv(x, mods, frames)
        nc_attn = num_cond_tokens
        if shard is not None:  # every real token, this rank's heads
            if kv_only:
                return shard.to_heads(k, v)
            q, k, v = shard.to_heads(q, k, v)
            nc_attn = shard.cond_tokens(num_cond_tokens)
        elif kv_only:
            return k, v
        q, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k_cache, v_cache, (cos_c, sin_c) = cache
            b = q.shape[0]
            k_all = torch.cat([apply_rope(k_cache, cos_c, sin_c).expand(b, -1, -1, -1), k_rot], dim=2)
            v_all = torch.cat([v_cache.expand(b, -1, -1, -1), v], dim=2)
            out = attention(q, k_all, v_all)
        else:
            out = self._block_causal_attention(q, k_rot, v, nc_attn)
        if shard is not None:
            out = shard.to_tokens(out)
        x = self._finish(x, out, mods, frames, text, text_mask,
                         0 if cache is not None else num_cond_tokens)
        return (x, k, v) if return_kv else x


class FinalLayer(nn.Module):
    """Per-frame modulated affine-free LayerNorm, then a linear map to one patch of output channels (fp32)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.hidden_size, config.patch_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.adaln_tembed_dim, 2 * config.hidden_size))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        # x: [B, N, C]; t_emb: [B, F, Dt] -> [B, N, patch_channels] fp32
        shift, scale = _linear_per_frame(self.adaLN_modulation[1], F.silu(t_emb)).unsqueeze(2).chunk(2, dim=-1)
        return _linear_fp32(self.linear, _modulate(x.float(), shift, scale, t_emb.shape[1]))


class BlockList(nn.ModuleList):
    """The DiT's blocks (state-dict names `blocks.<i>.*`, as a plain ModuleList). Calling it runs `body(self)`.

    Why a call: every pass over the blocks (forward, prefill) then enters and leaves one module, which gives a
    wrapper one place to act per pass. FSDP2 (model/sharding.py) makes this module the root of the sharded blocks:
    its lazy initialisation, shared communication streams and the prefetch of block i+1 during block i need the
    root to run before any block, in prefill as in forward.

    `inference_only` (set by `shard_dit`): run the blocks under torch.inference_mode whatever the caller's mode.
    FSDP2 allocates its gather buffers once, in the autograd mode of the first pass, and a later pass in another
    mode cannot write into them ("inplace update to inference tensor outside InferenceMode"). The engine runs
    every pass under inference_mode (prefill is always so), hence this mode for every pass of a sharded DiT.
    """

    inference_only: bool = False

    def forward(self, body: Callable[[BlockList], Any]) -> Any:
        if self.inference_only:
            with torch.inference_mode():
                return body(self)
        return body(self)


class LongCatVideoDiT(nn.Module):
    """LongCat-Video's transformer.

    forward(latents [B,C,T,H,W], timestep [B,T] (or [B]), text [B,L,D], text_mask [B,L] or None,
            num_cond_latents=0, kv_cache=None) -> raw model output [B,C_out,T,H,W] in fp32.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.adaln_tembed_dim, config.frequency_embedding_size)
        self.y_embedder = CaptionEmbedder(config.caption_channels, config.hidden_size)
        self.blocks = BlockList(LongCatBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self._rope_cache: OrderedDict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.context_parallel: ContextParallel | None = None  # set by `set_context_parallel`
        # Compiled per-block paths (one entry per block, see compiled.py); used while `compiled` is True.
        self._compiled_paths: list[BlockPaths] | None = None
        self.compiled = False

    def set_compiled_paths(self, paths: Sequence[BlockPaths] | None) -> None:
        """Run each block through `paths[i]` (compiled callables) from now on; None goes back to eager."""
        if paths is not None and len(paths) != len(self.blocks):
            raise ValueError(f"{len(paths)} compiled block paths for {len(self.blocks)} blocks")
        self._compiled_paths = list(paths) if paths is not None else None
        self.compiled = paths is not None

    def block_paths(self, index: int) -> BlockPaths:
        """Block `index`'s per-path callables: compiled ones when `compiled`, else the eager methods."""
        if self.compiled and self._compiled_paths is not None:
            return self._compiled_paths[index]
        return BlockPaths.eager(self.blocks[index])

    def set_context_parallel(self, cp: ContextParallel | None) -> None:
        """Run every later forward and prefill split over `cp`'s ranks (None or size 1: one process).

        Every rank of the group must then run the same calls in the same order; each returns the whole output.
        """
        if cp is not None:
            check_heads(self.config.num_heads, cp.size)
        self.context_parallel = cp if cp is not None and cp.size > 1 else None

    @property
    def kv_heads(self) -> int:
        """Heads of the KV cache this process holds (all, or its share under context parallelism)."""
        cp = self.context_parallel
        return self.config.num_heads // (cp.size if cp is not None else 1)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(
        cls,
        config: DiTConfig | Mapping[str, Any] | str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LongCatVideoDiT:
        """Build with uninitialised weights from a DiTConfig, a config dict or a config.json path.

        `device="meta"` builds the structure without memory (for counting parameters or loading with assign).
        """
        if isinstance(config, (str, Path)):
            config = DiTConfig.from_json(config)
        elif not isinstance(config, DiTConfig):
            config = DiTConfig.from_dict(config)
        with torch.device(device):
            model = cls(config)
        return model.to(dtype=dtype).eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        dit_dir: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        loras: Sequence[tuple[str | Path, float]] = (),
    ) -> LongCatVideoDiT:
        """Load `config.json` and single-file or sharded safetensors strictly, then merge LoRAs (path, multiplier)."""
        from .loading import load_dit  # loading imports this module

        return load_dit(cls, Path(dit_dir), device=device, dtype=dtype, loras=loras)

    # ----------------------------------------------------------------------------------------- helpers
    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (the compute dtype of the matmuls)."""
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.x_embedder.proj.weight.device

    def latent_grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (T, h, w) of latents [B, C, T, H, W], checking the patch size divides H and W."""
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, C, T, H, W], got shape {tuple(latents.shape)}")
        _, c, t, h, w = latents.shape
        if c != self.config.in_channels:
            raise ValueError(f"latents have {c} channels, the model takes {self.config.in_channels}")
        _, ph, pw = self.config.patch_size
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        return t, h // ph, w // pw

    def _rope(self, grid: tuple[int, int, int], t_offset: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, t_offset, str(device))
        tables = self._rope_cache.get(key)
        if tables is None:
            tables = rope_tables(self.config.head_dim, grid, t_offset, device)
            self._rope_cache[key] = tables
            while len(self._rope_cache) > _ROPE_CACHE_ENTRIES:
                self._rope_cache.popitem(last=False)
        else:
            self._rope_cache.move_to_end(key)
        return tables

    def _embed_time(self, timestep: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """timestep [B] or [B, T] -> t_emb [B, 1 or T, Dt] (fp32). Cast to the model dtype first, as published."""
        if timestep.ndim == 1:
            timestep = timestep[:, None]
        if timestep.ndim != 2 or timestep.shape[0] != batch or timestep.shape[1] not in (1, frames):
            raise ValueError(f"timestep must be [B] or [B, T] = [{batch}, {frames}], got {tuple(timestep.shape)}")
        t = timestep.to(self.dtype).float()
        return self.t_embedder(t.flatten()).view(batch, t.shape[1], -1)

    def _embed_text(
        self, text: torch.Tensor, text_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.config.caption_channels:
            raise ValueError(
                f"text must be [B, L, {self.config.caption_channels}] with B = {batch}, got {tuple(text.shape)}"
            )
        y = self.y_embedder(text.to(self.dtype))  # [B, L, C]
        if text_mask is None:
            return y, None
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must be [B, L] = {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
        if self.config.text_tokens_zero_pad:
            # padded rows are zeroed and then attended like the others
            return y * (text_mask != 0)[:, :, None].to(y.dtype), None
        if bool((text_mask.sum(dim=1) == 0).any()):
            raise ValueError("every text_mask row needs at least one valid token")
        return y, text_mask

    def _tokens(self, latents: torch.Tensor) -> torch.Tensor:
        return self.x_embedder(latents.to(self.dtype))  # [B, N, C]

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        # x: [B, N, pt*ph*pw*C_out] -> [B, C_out, T*pt, h*ph, w*pw]
        t, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_channels
        x = x.view(x.shape[0], t, h, w, pt, ph, pw, c)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], c, t * pt, h * ph, w * pw)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        num_cond_latents: int = 0,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Raw model output for `latents`.

        Without a cache the first `num_cond_latents` frames are conditioning (their timesteps should be 0).
        With `kv_cache` (from `prefill`) the latents are the noise frames only and `num_cond_latents` must equal
        the cached frame count; noise frame j then sits at temporal position T_c + j.
        """
        b = latents.shape[0]
        grid = self.latent_grid(latents)
        t_emb = self._embed_time(timestep.to(latents.device), b, grid[0])
        y, y_mask = self._embed_text(text, text_mask, b)
        cp = self.context_parallel
        shard = None if cp is None else cp.shard(grid, latents.device)
        if shard is None:
            x = self._tokens(latents)
            tokens_per_frame = grid[1] * grid[2]
        else:  # this rank's tile of every frame
            x = self._tokens(shard.local_latents(latents, self.config.patch_size))
            tokens_per_frame = shard.layout.local_tokens_per_frame

        if kv_cache is not None:
            if kv_cache.num_latents != num_cond_latents:
                raise ValueError(
                    f"num_cond_latents={num_cond_latents} but the cache holds {kv_cache.num_latents} latent frames"
                )
            if kv_cache.grid is None or kv_cache.grid[1:] != grid[1:]:
                raise ValueError(f"the cache was built for grid {kv_cache.grid}, the latents have {grid}")
            if kv_cache.batch not in (1, b):
                raise ValueError(f"a cache of batch {kv_cache.batch} cannot serve a batch of {b}")
            if kv_cache.heads != self.kv_heads:
                raise ValueError(f"the cache holds {kv_cache.heads} heads, this process needs {self.kv_heads}")
            rope = self._rope(grid, num_cond_latents, x.device)
            rope_cache = self._rope(kv_cache.grid, 0, x.device)

            def cached(blocks: BlockList) -> torch.Tensor:
                h = x
                for i, block in enumerate(blocks):
                    k_c, v_c = kv_cache.layer(i)
                    if shard is None:
                        h = self.block_paths(i).cached(h, t_emb, y, y_mask, *rope, k_c, v_c, *rope_cache)
                    else:
                        h = block(h, t_emb, y, y_mask, rope, cache=(k_c, v_c, rope_cache), shard=shard)
                return h

            x = self.blocks(cached)
        else:
            if not 0 <= num_cond_latents <= grid[0]:
                raise ValueError(f"num_cond_latents={num_cond_latents} is outside 0..{grid[0]}")
            rope = self._rope(grid, 0, x.device)
            nc = num_cond_latents * tokens_per_frame

            def uncached(blocks: BlockList) -> torch.Tensor:
                h = x
                for i, block in enumerate(blocks):
                    if shard is None:
                        h = self.block_paths(i).uncached(h, t_emb, y, y_mask, *rope, nc)
                    else:
                        h = block(h, t_emb, y, y_mask, rope, num_cond_tokens=nc, shard=shard)
                return h

            x = self.blocks(uncached)

        out = self.final_layer(x, t_emb)
        if shard is not None:
            out = shard.gather_tokens(out)
        return self._unpatchify(out, grid).float()

    @torch.inference_mode()
    def prefill(self, cond_latents: torch.Tensor, cache: KVCache | None = None) -> KVCache:
        """Build the conditioning K/V cache: one forward over `cond_latents` [1, C, T_c, H, W] at t = 0, no text.

        With `cache` given, its buffers are refilled in place (no allocation); otherwise a cache sized exactly
        for this window is allocated. Under context parallelism the cache holds this rank's heads only.
        """
        if cond_latents.ndim != 5 or cond_latents.shape[0] != 1:
            raise ValueError(f"cond_latents must be [1, C, T_c, H, W], got {tuple(cond_latents.shape)}")
        grid = self.latent_grid(cond_latents)
        t, h, w = grid
        if cache is None:
            cache = KVCache(self.config, t * h * w, batch=1, device=self.device, dtype=self.dtype,
                            heads=self.kv_heads)
        elif cache.heads != self.kv_heads:
            raise ValueError(f"the cache holds {cache.heads} heads, this process needs {self.kv_heads}")
        cache.begin_fill(grid)
        t_emb = self._embed_time(torch.zeros(1, t, device=cond_latents.device), 1, t)
        cp = self.context_parallel
        shard = None if cp is None else cp.shard(grid, cond_latents.device)
        x = self._tokens(cond_latents if shard is None else shard.local_latents(cond_latents, self.config.patch_size))
        rope = self._rope(grid, 0, x.device)
        last = len(self.blocks) - 1

        def fill(blocks: BlockList) -> None:
            h = x
            for i, block in enumerate(blocks):
                if shard is None:
                    paths = self.block_paths(i)
                    if i < last:
                        h, k, v = paths.prefill(h, t_emb, *rope)
                    else:
                        k, v = paths.prefill_kv(h, t_emb)
                elif i < last:
                    h, k, v = block(h, t_emb, None, None, rope, return_kv=True, shard=shard)
                else:
                    k, v = block(h, t_emb, None, None, rope, kv_only=True, shard=shard)
                cache.write(i, k, v)

        self.blocks(fill)
        return cache
