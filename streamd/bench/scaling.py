"""A scaling model of context parallelism: predicted step time and real-time factor from FLOPs and collective bytes.

Per denoising step on N ranks (Ulysses, streamd/model/parallel.py):
  compute  = FLOPs / N / (peak * efficiency) * padding  (the FLOPs of bench/flops.py; every rank does 1/N, plus
             the padding of its tile when the patch grid does not divide)
  traffic  = bytes each rank sends (all-to-all of q, k, v and of the attention output in every block, the
             all-gather of the prediction at the end), exactly what `ContextParallel.traffic` counts
  comm     = traffic / link bandwidth + collectives * latency  (not overlapped with compute: streamd runs them
             in line, so this is the conservative sum)
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


def predict(config: DiTConfig, height: int, width: int, n: int, hw: Hardware = Hardware(), cond_latents: int = 4,
            noise_latents: int = 20, steps: int = 16, batch: int = 1, text_tokens: int = 512, fps: float = 15.0,
            temporal_factor: int = 4, spatial_factor: int = 8) -> dict[str, Any]:
    """Predicted per-step and per-chunk figures on n ranks (cached path: prefill once, then `steps` steps)."""
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
    step_s = compute_s + comm_s
    chunk_s = prefill_s + steps * step_s
    video_s = noise_latents * temporal_factor / fps
    kv_bytes = 2 * config.depth * config.num_heads * cond_latents * tpf * config.head_dim * 2 // n
    return {
        "ranks": n, "height": height, "width": width, "tokens_per_frame": tpf,
        "split": [lay.rows, lay.cols], "padding": padding,
        "step_pflop": step_flops / 1e15, "compute_s": compute_s, "comm_s": comm_s, "step_s": step_s,
        "bytes_per_step_per_rank": traffic["total"], "prefill_s": prefill_s, "chunk_s": chunk_s,
        "video_s": video_s, "realtime_factor": video_s / chunk_s, "kv_cache_bytes_per_rank": kv_bytes,
        "comm_fraction": comm_s / step_s,
    }
