"""`streamd bench denoise`: one denoising step with and without the KV cache, side by side in one run.

With `context_parallel` N > 1 every rank runs the same measurement on its share of the tokens (rank 0 starts the
others on this host); the result adds, per rank, the step times, the bytes the collectives sent per step, the KV
cache bytes and the peak memory. `shard_weights` shards the DiT blocks over those ranks (FSDP2, model/sharding.py)
and adds the bytes the weight all-gathers bring in per step; `weights` quantizes the DiT (bf16 | int8 | fp8,
model/quant.py). Every result has the DiT's parameter bytes held by the rank (`dit_weight_bytes`).

CLI: `streamd bench denoise` takes these as `--shard-weights` and `--weights` once cli.py passes them to
`DenoiseBenchConfig` (its argparse lives in cli.py).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.attention import attention_backend
from ..model.bundle import default_dtype
from ..model.dit import LongCatVideoDiT
from ..model.presets import LONGCAT_PRESET, PRESETS, build_dit, get_preset
from .flops import dit_forward_flops

# Dense bf16 tensor-core peaks (FLOP/s) used for the "fraction of peak" figure; keyed by a device-name fragment.
_BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


@dataclass(frozen=True)
class DenoiseBenchConfig:
    """What to measure."""

    model: str = "tiny"
    cond_latents: int = 4
    noise_latents: int = 4
    height: int | None = None
    width: int | None = None
    repeats: int = 5
    device: str | None = None
    context_parallel: int = 1
    shard_weights: bool = False  # shard the DiT blocks over the context-parallel ranks (needs context_parallel > 1)
    weights: str = "bf16"  # bf16 (the model dtype), int8 or fp8: see model/quant.py
    compile: bool = False  # also time compiled blocks, alternating with eager in the same run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _load(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[LongCatVideoDiT, int, int, int]:
    """The DiT, native height, width and text length of an embedded preset or a checkpoint's dit/ folder."""
    if spec in PRESETS or spec == LONGCAT_PRESET.name:
        preset = get_preset(spec)
        return build_dit(preset, device=device, dtype=dtype), preset.height, preset.width, preset.text_max_length
    root = Path(spec)
    dit_dir = root / "dit" if (root / "dit").is_dir() else root
    return LongCatVideoDiT.from_pretrained(dit_dir, device=device, dtype=dtype), 480, 832, 512


MATMUL_SIDE = 2048  # the machine's own figure: an fp32 (bf16 on CUDA) matmul of this side, best of MATMUL_REPEATS
MATMUL_REPEATS = 5


def matmul_flops(device: torch.device, dtype: torch.dtype, side: int = MATMUL_SIDE) -> float:
    """FLOP/s of a large square matmul on this device, now: what the DiT's own matmuls could reach at best."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=gen).to(device, dtype)
    b = torch.randn(side, side, generator=gen).to(device, dtype)
    a @ b  # warm-up (BLAS threads, cuBLAS handles)
    best = min(_time(lambda: a @ b, device) for _ in range(MATMUL_REPEATS))
    return 2 * side**3 / best


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _BF16_PEAKS.items() if k in name), None)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (fp32)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def run_denoise_bench(cfg: DenoiseBenchConfig) -> dict[str, Any]:
    """Time one cached and one uncached denoising step (guidance 1, batch 1), alternating, and compare outputs."""
    if cfg.context_parallel <= 1:
        return _measure(cfg)
    import torch.distributed as dist

    from ..engine.ranks import RankGroup

    group = RankGroup.launch(cfg.context_parallel, cfg.model, cfg.device, role="bench",
                             extra=dataclasses.asdict(cfg))
    try:
        result = _measure(cfg, group.join(), str(group.device))
        ranks: list[Any] = [None] * cfg.context_parallel
        dist.gather_object(_rank_figures(result), ranks, dst=0)
        result["ranks"] = ranks
        return result
    finally:
        group.close()


def bench_rank(cfg: dict[str, Any], group: Any, device: str) -> None:
    """A worker rank's part of the benchmark: the same measurement, its figures gathered to rank 0."""
    import torch.distributed as dist

    result = _measure(DenoiseBenchConfig(**{**cfg, "device": device}), group, device)
    dist.gather_object(_rank_figures(result), None, dst=0)


_RANK_KEYS = ("rank", "prefill_s", "cached_step_s", "uncached_step_s", "collective_bytes_per_step",
              "weight_gather_bytes_per_step", "dit_weight_bytes", "kv_cache_bytes", "peak_rss_bytes", "rss_bytes",
              "peak_cuda_bytes")


def _rss_bytes() -> int:
    """This process's resident set now (Linux /proc; 0 elsewhere). Peak RSS alone would hide freed weights.

    glibc keeps freed heap memory mapped until trimmed (and its mmap threshold rises up to 32 MiB as big blocks
    are freed, so freed tensors land in the heap), so the heap is trimmed first: the figure is what is in use.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def _rank_figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in _RANK_KEYS if k in result}


@torch.inference_mode()
def _measure(cfg: DenoiseBenchConfig, group: Any = None, device_name: str | None = None) -> dict[str, Any]:
    """This rank's measurement (group: the context-parallel process group, None for one process)."""
    device = torch.device(device_name or cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = default_dtype(device)
    dit, height, width, text_len = _load(cfg.model, device, dtype)
    from ..model.quant import quantize_dit, weight_bytes

    quantize_dit(dit, cfg.weights)
    cp = None
    shards = None
    if group is not None:
        from ..model.parallel import ContextParallel

        cp = ContextParallel(group)
        dit.set_context_parallel(cp)
        if cfg.shard_weights:
            import gc

            from ..model.sharding import shard_dit

            shards = shard_dit(dit, group)
            gc.collect()  # the whole blocks' storage goes now, not at some later collection
    elif cfg.shard_weights:
        raise ValueError("shard_weights needs context_parallel > 1 (one rank holds every weight)")
    height, width = cfg.height or height, cfg.width or width
    if height % 16 or width % 16:
        raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
    c = dit.config
    h, w = height // 8, width // 8
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, c.in_channels, cfg.cond_latents, h, w, generator=gen).to(device)
    noise = torch.randn(1, c.in_channels, cfg.noise_latents, h, w, generator=gen).to(device)
    text = torch.randn(1, text_len, c.caption_channels, generator=gen).to(device, dtype)
    mask = torch.ones(1, text_len, dtype=torch.int64, device=device)
    t_noise = torch.full((1, cfg.noise_latents), 500.0, device=device)
    t_full = torch.cat([torch.zeros(1, cfg.cond_latents, device=device), t_noise], dim=1)
    full = torch.cat([cond, noise], dim=2)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill_s = [_time(lambda: dit.prefill(cond), device) for _ in range(2)][-1]
    cache = dit.prefill(cond)

    def cached() -> torch.Tensor:
        return dit(noise, t_noise, text, mask, num_cond_latents=cfg.cond_latents, kv_cache=cache)

    def uncached() -> torch.Tensor:
        return dit(full, t_full, text, mask, num_cond_latents=cfg.cond_latents)[:, :, cfg.cond_latents:]

    out_cached, out_uncached = cached(), uncached()  # warm-up, and the outputs compared below
    compile_s: float | None = None
    if cfg.compile:  # builds the graphs now (timed), so the loop below times only steady steps
        from ..model.compiled import compile_blocks

        compile_blocks(dit)
        started = time.perf_counter()
        dit.prefill(cond, cache=cache)
        comp_cached, comp_uncached = cached(), uncached()
        compile_s = time.perf_counter() - started
        dit.compiled = False
    moved: dict[str, dict[str, int]] = {}
    gathered: dict[str, int] = {}
    if cp is not None:  # what one step of each kind sends (the same every step)
        for name, fn in (("prefill", lambda: dit.prefill(cond, cache=cache)), ("cached", cached),
                         ("uncached", uncached)):
            cp.traffic.reset()
            if shards is not None:
                shards.reset()
            fn()
            moved[name] = {**cp.traffic.sent, "total": cp.traffic.total}
            if shards is not None:  # received by this rank: (N-1)/N of every block's weights
                gathered[name] = shards.gathered_bytes
    cached_s, uncached_s = [], []
    compiled_s: dict[str, list[float]] = {"cached": [], "uncached": []}
    for _ in range(cfg.repeats):  # alternate so drifting machine load hits both paths (and both modes) alike
        cached_s.append(_time(cached, device))
        uncached_s.append(_time(uncached, device))
        if cfg.compile:
            dit.compiled = True
            compiled_s["cached"].append(_time(cached, device))
            compiled_s["uncached"].append(_time(uncached, device))
            dit.compiled = False
    step_cached, step_uncached = statistics.median(cached_s), statistics.median(uncached_s)
    machine = matmul_flops(device, dtype)

    tokens_per_frame = (h // c.patch_size[1]) * (w // c.patch_size[2])
    flops = {
        kind: dit_forward_flops(c, 1, tokens_per_frame, cfg.cond_latents, cfg.noise_latents, text_len, kind)
        for kind in (True, False)
    }
    diff = (out_cached.float() - out_uncached.float()).abs().max().item()
    result: dict[str, Any] = {
        "bench": "denoise",
        "model": cfg.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attention_backend(device, dtype),
        "threads": torch.get_num_threads(),
        "height": height,
        "width": width,
        "cond_latents": cfg.cond_latents,
        "noise_latents": cfg.noise_latents,
        "tokens_cached": cfg.noise_latents * tokens_per_frame,
        "tokens_uncached": (cfg.cond_latents + cfg.noise_latents) * tokens_per_frame,
        "repeats": cfg.repeats,
        "prefill_s": prefill_s,
        "cached_step_s": step_cached,
        "uncached_step_s": step_uncached,
        "speedup": step_uncached / step_cached,
        "flop_speedup": flops[False] / flops[True],
        "cached_step_flops": flops[True],
        "uncached_step_flops": flops[False],
        "cached_tflops_per_s": flops[True] / step_cached / 1e12,
        "uncached_tflops_per_s": flops[False] / step_uncached / 1e12,
        "max_abs_diff": diff,
        "output_rms": out_uncached.float().pow(2).mean().sqrt().item(),
        "kv_cache_bytes": cache.nbytes,
        "weights": cfg.weights,
        "shard_weights": shards is not None,
        # DiT parameters this rank holds between blocks (sharded: its block shards + the unsharded parts)
        "dit_weight_bytes": shards.bytes_per_rank if shards is not None else weight_bytes(dit),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_bytes": _rss_bytes(),
        "context_parallel": cp.size if cp is not None else 1,
    }
    if shards is not None:
        result["weight_gather_bytes_per_step"] = gathered
        result["sharding"] = shards.as_dict()
    if cp is not None:
        result["rank"] = cp.rank
        result["split"] = list(cp.layout((1, h // c.patch_size[1], w // c.patch_size[2])).__dict__[k]
                               for k in ("rows", "cols"))
        result["collective_bytes_per_step"] = moved  # sent by this rank
        result["kv_cache_heads"] = cache.heads
    result["matmul_flops_per_s"] = machine  # this machine's large-matmul figure, measured in this run
    result["cached_fraction_of_matmul"] = flops[True] / step_cached / machine
    result["uncached_fraction_of_matmul"] = flops[False] / step_uncached / machine
    if cfg.compile:
        assert compile_s is not None
        comp = {k: statistics.median(v) for k, v in compiled_s.items()}
        result["compiled"] = {
            "compile_s": compile_s,
            "cached_step_s": comp["cached"],
            "uncached_step_s": comp["uncached"],
            "cached_speedup": step_cached / comp["cached"],  # compiled vs eager, same run
            "uncached_speedup": step_uncached / comp["uncached"],
            "cached_fraction_of_matmul": flops[True] / comp["cached"] / machine,
            "uncached_fraction_of_matmul": flops[False] / comp["uncached"] / machine,
            "max_rel_diff": max(rel_diff(comp_cached, out_cached), rel_diff(comp_uncached, out_uncached)),
        }
    peak = _peak_flops(device)
    if peak:
        result["peak_bf16_flops"] = peak
        result["cached_fraction_of_peak"] = flops[True] / step_cached / peak
        result["uncached_fraction_of_peak"] = flops[False] / step_uncached / peak
    if device.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    return result
