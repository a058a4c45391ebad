"""A scaling model of context parallelism: predicted step time and real-time factor from FLOPs and collective bytes.

Per denoising step on N ranks (Ulysses, streamd/model/parallel.py):
  compute  = FLOPs / N / (peak * efficiency) * padding  (the FLOPs of bench/flops.py; every rank does 1/N, plus
             the padding of its tile when the patch grid does not divide)
  traffic  = bytes each rank sends (all-to-all of q, k, v and of the attention output in every block, the
             all-gather of the prediction at the end), exactly what `ContextParallel.traffic` counts
  comm     = traffic / link bandwidth + collectives * latency  (not overlapped with compute: streamd runs them
             in line, so this is the conservative sum)
  gather   = with sharded weights (model/sharding.py), every forward all-gathers every block once: each rank
             receives (N-1)/N of the block weights (bf16: 2 bytes a parameter; int8: 1 + 5 per row, the adaLN
             modulation kept in bf16) per step and per prefill. FSDP prefetches block i+1 while block i computes,
             so the gather runs beside compute on its own stream; only what exceeds the compute shows:
             exposed = max(0, gather / link bandwidth - compute)  (optimistic where the all-to-alls share the link)
A chunk is one prefill (the conditioning window, context-parallel too) plus `steps` steps; the real-time factor is
the chunk's video seconds over its compute time. VAE encode/decode (rank 0 only) and the text encoder are not in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model.config import DiTConfig
from ..model.parallel import Layout
from .flops import dit_forward_flops


@dataclass(frozen=True)
class Hardware:
    """One accelerator and its links (defaults: H100 SXM with NVLink 4 through NVSwitch)."""

    name: str = "H100 SXM"
    peak_flops: float = 989e12  # dense bf16 tensor-core peak
    efficiency: float = 0.5  # achieved fraction of peak over a whole DiT step (GEMMs + flash attention)
    link_bytes_per_s: float = 300e9  # achievable all-to-all bandwidth per GPU and direction (450 GB/s nominal)
    latency_s: float = 15e-6  # per collective call


def step_traffic(config: DiTConfig, batch: int, grid: tuple[int, int, int], n: int, itemsize: int = 2,
                 out_itemsize: int = 4, kv_only_last: bool = False) -> dict[str, int]:
    """Bytes one rank sends in one forward over the query grid (T, h, w) on n ranks, by collective.

    Matches `ContextParallel.traffic`: an all-to-all sends (n-1)/n of its buffer; the all-gather sends the local
    part to n-1 ranks. kv_only_last: a prefill, whose last block sends only K and V and which gathers nothing.
    """
    if n == 1:
        return {"all_to_all": 0, "all_gather": 0, "total": 0, "calls": 0}
    lay = Layout.of(grid, n)
    local = batch * config.num_heads * lay.local_tokens * config.head_dim * itemsize  # one of q/k/v/out
    sent = lambda parts: parts * local * (n - 1) // n  # noqa: E731 - one all-to-all of `parts` tensors
    a2a = config.depth * (sent(3) + sent(1))  # q, k, v to the heads; the attention output back
    calls = 2 * config.depth
    gather = 0
    if kv_only_last:  # the last block of a prefill: K and V to the heads, nothing back
        a2a += sent(2) - sent(3) - sent(1)
        calls -= 1
    else:
        gather = batch * lay.local_tokens * config.patch_channels * out_itemsize * (n - 1)
        calls += 1
    return {"all_to_all": a2a, "all_gather": gather, "total": a2a + gather, "calls": calls}


def block_weight_bytes(config: DiTConfig, weights: str = "bf16") -> int:
    """Bytes of every block's parameters in a weight format: bf16, or int8 / fp8 (model/quant.py: the compute
    Linears at 1 byte a weight + 5 bytes a row for int8's scale and zero point, 4 for fp8's scale; the adaLN
    modulation, biases and norm weights in bf16)."""
    c, f, d = config.hidden_size, config.ffn_hidden, config.adaln_tembed_dim
    hd = config.head_dim
    # (out, in) of the compute Linears of one block, and whether they carry a bias
    linears = [(3 * c, c, True), (c, c, True), (c, c, True), (2 * c, c, True), (c, c, True),
               (f, c, False), (c, f, False), (f, c, False)]
    small = 6 * c * d + 6 * c + 2 * c + 4 * hd  # adaLN Linear (+bias), pre-cross-attention LayerNorm, q/k norms
    biases = sum(o for o, _, b in linears if b)
    if weights == "bf16":
        per_block = 2 * (sum(o * i for o, i, _ in linears) + biases + small)
    else:
        per_row = 5 if weights == "int8" else 4
        per_block = sum(o * i + per_row * o for o, i, _ in linears) + 2 * (biases + small)
    return config.depth * per_block


def weight_gather_bytes(config: DiTConfig, n: int, weights: str = "bf16") -> int:
    """Bytes one rank receives per forward with sharded block weights: (N-1)/N of the block weights."""
    return block_weight_bytes(config, weights) * (n - 1) // n


def predict(config: DiTConfig, height: int, width: int, n: int, hw: Hardware = Hardware(), cond_latents: int = 4,
            noise_latents: int = 20, steps: int = 16, batch: int = 1, text_tokens: int = 512, fps: float = 15.0,
            temporal_factor: int = 4, spatial_factor: int = 8, shard_weights: bool = False,
            weights: str = "bf16") -> dict[str, Any]:
    """Predicted per-step and per-chunk figures on n ranks (cached path: prefill once, then `steps` steps).

    shard_weights: the blocks are sharded over the n ranks (FSDP2): each forward gathers them (see the module
    docstring); weights: bf16 | int8 | fp8, the bytes of the block weights.
    """
    h = height // spatial_factor // config.patch_size[1]
    w = width // spatial_factor // config.patch_size[2]
    tpf = h * w
    step_flops = dit_forward_flops(config, batch, tpf, cond_latents, noise_latents, text_tokens, cached=True)
    # the prefill: conditioning tokens alone, attending among themselves, no text
    prefill_flops = dit_forward_flops(config, 1, tpf, 0, cond_latents, 0, cached=False)
    rate = hw.peak_flops * hw.efficiency
    traffic = step_traffic(config, batch, (noise_latents, h, w), n)
    prefill_traffic = step_traffic(config, 1, (cond_latents, h, w), n, kv_only_last=True)
    lay = Layout.of((1, h, w), n)
    padding = n * lay.local_tokens / tpf  # padded tiles compute their padding too (charged to every FLOP)
    compute_s = step_flops / n / rate * padding
    comm_s = traffic["total"] / hw.link_bytes_per_s + traffic["calls"] * hw.latency_s
    prefill_s = prefill_flops / n / rate * padding + (prefill_traffic["total"] / hw.link_bytes_per_s
                                            + prefill_traffic["calls"] * hw.latency_s)
    blocks = block_weight_bytes(config, weights)
    gather = weight_gather_bytes(config, n, weights) if shard_weights and n > 1 else 0
    gather_s = gather / hw.link_bytes_per_s
    exposed_s = max(0.0, gather_s - compute_s)  # prefetch hides the gather behind the compute it overlaps
    prefill_compute_s = prefill_flops / n / rate * padding
    prefill_s += max(0.0, gather_s - prefill_compute_s)
    step_s = compute_s + comm_s + exposed_s
    chunk_s = prefill_s + steps * step_s
    video_s = noise_latents * temporal_factor / fps
    kv_bytes = 2 * config.depth * config.num_heads * cond_latents * tpf * config.head_dim * 2 // n
    return {
        "ranks": n, "height": height, "width": width, "tokens_per_frame": tpf,
        "split": [lay.rows, lay.cols], "padding": padding,
        "step_pflop": step_flops / 1e15, "compute_s": compute_s, "comm_s": comm_s, "step_s": step_s,
        "bytes_per_step_per_rank": traffic["total"], "prefill_s": prefill_s, "chunk_s": chunk_s,
        "video_s": video_s, "realtime_factor": video_s / chunk_s, "kv_cache_bytes_per_rank": kv_bytes,
        "comm_fraction": comm_s / step_s, "weights": weights, "shard_weights": shard_weights and n > 1,
        "block_weight_bytes_per_rank": -(-blocks // n) if shard_weights else blocks,
        "weight_gather_bytes_per_step": gather, "weight_gather_s": gather_s, "weight_gather_exposed_s": exposed_s,
    }
