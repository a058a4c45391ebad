"""`streamd bench gpu`: a one-shot check of the 13.6B model on one GPU (a few minutes on an H100 or H200).

Reports, as one JSON object, for the `longcat-13.6b-random` preset (the published shape, random weights):
- bf16 cached step time and fraction of the bf16 peak (bench/flops.py) at 480x832 and 240x416;
- peak GPU memory (torch.cuda.max_memory_allocated) against a minimal plan: weights + KV cache + an activation
  estimate (`plan_bytes`; the proper planner is another module's job);
- FlashAttention against SDPA, where flash-attn is installed (model/attention.py);
- int8 and fp8 weights (model/quant.py): step time and memory.

Each section runs in its own try block: a failure (out of memory, a kernel missing) is reported in the JSON under
`errors` and the next section still runs. Without CUDA it exits 2 with a message, having measured nothing.

Run: `python -m streamd.bench.gpu --json` or `make gpu-check`; `streamd bench gpu` once cli.py calls
`add_gpu_check_parser` and `run_gpu_check`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from .flops import dit_forward_flops

RESOLUTIONS = ((480, 832), (240, 416))  # the native size and its half
COND_LATENTS = 4  # 13 frames of conditioning, as published
NOISE_LATENTS = 20  # 80 new frames: the long-video chunk (bench/scaling.py's)
TEXT_TOKENS = 512


class NoCudaError(RuntimeError):
    """No CUDA device: the check measures nothing."""


def plan_bytes(params: int, weight_bytes_per_param: float, kv_cache_bytes: int, tokens: int, kv_tokens: int,
               hidden: int, ffn_hidden: int, text_tokens: int, itemsize: int = 2) -> dict[str, int]:
    """A minimal memory plan of one cached step: weights + KV cache + activations (an estimate, kept here alone).

    Activations of one block at a time (the blocks run one after another and free what they made): the residual
    stream in fp32 and its modulated copy, q/k/v and the attention output, the SwiGLU's two hidden projections and
    their product, and the [cache ; own] K and V that attention concatenates (one copy of the whole key set);
    then the text tokens' K and V. Allocator slack is not in it: the measured peak should sit above, by a margin.
    """
    weights = int(params * weight_bytes_per_param)
    per_token = hidden * (4 + 4 + 4 * itemsize) + 3 * ffn_hidden * itemsize
    activations = tokens * per_token + 2 * kv_tokens * hidden * itemsize + 2 * text_tokens * hidden * itemsize
    return {"weights": weights, "kv_cache": kv_cache_bytes, "activations": activations,
            "total": weights + kv_cache_bytes + activations}


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up, synchronised."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step(dit: Any, height: int, width: int, repeats: int, noise_latents: int) -> dict[str, Any]:
    """One resolution: prefill, then the cached step timed; peak memory against the plan."""
    from ..model.quant import weight_bytes
    from .denoise import _peak_flops

    device = dit.device
    c = dit.config
    h, w = height // 8, width // 8
    gen = torch.Generator(device=device).manual_seed(0)
    cond = torch.randn(1, c.in_channels, COND_LATENTS, h, w, generator=gen, device=device)
    noise = torch.randn(1, c.in_channels, noise_latents, h, w, generator=gen, device=device)
    text = torch.randn(1, TEXT_TOKENS, c.caption_channels, generator=gen, device=device).to(dit.dtype)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.int64, device=device)
    t = torch.full((1, noise_latents), 500.0, device=device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        cache = dit.prefill(cond)
        step_s = _timed(lambda kv=cache: dit(noise, t, text, mask, num_cond_latents=COND_LATENTS, kv_cache=kv), repeats)
    peak = torch.cuda.max_memory_allocated(device)
    tpf = (h // c.patch_size[1]) * (w // c.patch_size[2])
    flops = dit_forward_flops(c, 1, tpf, COND_LATENTS, noise_latents, TEXT_TOKENS, cached=True)
    params = sum(p.numel() for p in dit.parameters())
    plan = plan_bytes(params, weight_bytes(dit) / params, cache.nbytes, noise_latents * tpf,
                      (COND_LATENTS + noise_latents) * tpf, c.hidden_size, c.ffn_hidden, TEXT_TOKENS)
    result: dict[str, Any] = {"height": height, "width": width, "tokens": noise_latents * tpf,
                              "cached_step_s": step_s, "step_tflops_per_s": flops / step_s / 1e12,
                              "peak_bytes": peak, "plan_bytes": plan, "peak_over_plan": peak / plan["total"]}
    peak_flops = _peak_flops(device)
    if peak_flops:
        result["fraction_of_bf16_peak"] = flops / step_s / peak_flops
    del cache
    return result


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one section; on failure record the error under report['errors'][name] and go on."""
    try:
        value = fn()
        report[name] = value
        return value
    except Exception as exc:  # one failing section (OOM, missing kernel) must not lose the others
        report.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        report.setdefault("tracebacks", {})[name] = traceback.format_exc(limit=4)
        return None
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def run_gpu_check(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check (args from `add_gpu_check_parser`): one JSON-able dict. Raises NoCudaError without CUDA."""
    if not torch.cuda.is_available():
        raise NoCudaError("streamd bench gpu needs a CUDA GPU (torch.cuda.is_available() is False: a CPU-only "
                          "torch build, no driver, or no GPU); nothing was measured")
    from ..model.attention import _flash_kernel, attention_backend
    from ..model.presets import LONGCAT_PRESET, build_dit
    from ..model.quant import FP8_MIN_CAPABILITY, quantize_dit, weight_bytes

    device = torch.device(args.device)
    torch.cuda.set_device(device)
    cap = torch.cuda.get_device_capability(device)
    resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions]
    report: dict[str, Any] = {
        "bench": "gpu", "model": LONGCAT_PRESET.name, "device": torch.cuda.get_device_name(device),
        "capability": f"{cap[0]}.{cap[1]}", "torch": torch.__version__, "cuda": torch.version.cuda,
        "memory_bytes": torch.cuda.get_device_properties(device).total_memory,
        "attention": attention_backend(device, torch.bfloat16), "cond_latents": COND_LATENTS,
        "noise_latents": args.noise_latents, "repeats": args.repeats,
    }
    started = time.perf_counter()

    def build() -> Any:
        return build_dit(LONGCAT_PRESET, device=device, dtype=torch.bfloat16)

    def run_all(label: str, dit: Any) -> dict[str, Any]:
        """Every resolution with `dit`; a failing resolution is reported as `<label>.<size>` and skipped."""
        out: dict[str, Any] = {"weight_bytes": weight_bytes(dit)}
        for height, width in resolutions:
            key = f"{height}x{width}"
            value = _section(report, f"{label}.{key}", lambda h=height, w=width: _step(dit, h, w, args.repeats,
                                                                                       args.noise_latents))
            report.pop(f"{label}.{key}", None)
            out[key] = value
        return out

    model = _Holder()

    def build_bf16() -> dict[str, Any]:
        start = time.perf_counter()
        model.dit = build()
        torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start, "weight_bytes": weight_bytes(model.dit),
                "params": sum(p.numel() for p in model.dit.parameters())}

    _section(report, "build", build_bf16)
    if model.dit is not None:
        _section(report, "bf16", lambda: run_all("bf16", model.dit))
        if _flash_kernel() is not None:  # the same steps with SDPA forced, against the flash kernel above
            _section(report, "bf16_sdpa", lambda: _with_sdpa(lambda: run_all("bf16_sdpa", model.dit)))
        else:
            report["bf16_sdpa"] = "flash-attn not installed: the bf16 figures are SDPA's"
        _section(report, "int8", lambda: (quantize_dit(model.dit, "int8"), run_all("int8", model.dit))[1])
    model.dit = None  # drop the 27 GB before fp8 builds its own
    gc.collect()
    torch.cuda.empty_cache()
    if cap >= FP8_MIN_CAPABILITY:
        def fp8() -> dict[str, Any]:
            model.dit = build()
            quantize_dit(model.dit, "fp8")
            try:
                return run_all("fp8", model.dit)
            finally:
                model.dit = None
        _section(report, "fp8", fp8)
    else:
        report["fp8"] = f"skipped: compute capability {cap[0]}.{cap[1]} < 8.9"
    report["seconds"] = time.perf_counter() - started
    return report


class _Holder:
    """The model under test, so that a section can drop it (and its 27 GB) before the next builds another."""

    dit: Any = None


def _with_sdpa(fn: Callable[[], Any]) -> Any:
    """Run `fn` with model/attention.py's flash kernel hidden, so `attention` takes SDPA."""
    from ..model import attention as attn

    cached = attn._flash_kernel
    attn._flash_kernel = lambda: None  # type: ignore[assignment]
    try:
        return fn()
    finally:
        attn._flash_kernel = cached  # type: ignore[assignment]


def add_gpu_check_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `gpu` to a subparsers object (`streamd bench gpu`); the same options as `python -m streamd.bench.gpu`."""
    p = subparsers.add_parser("gpu", help="one-shot check of the 13.6B model on one GPU: step time, fraction of "
                                          "peak, memory against plan, flash vs SDPA, int8 and fp8")
    _add_options(p)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda:0", help="the GPU (default cuda:0)")
    p.add_argument("--resolutions", nargs="+", default=[f"{h}x{w}" for h, w in RESOLUTIONS],
                   help="HEIGHTxWIDTH sizes (multiples of 16; default 480x832 240x416)")
    p.add_argument("--noise-latents", type=int, default=NOISE_LATENTS, help="new latent frames per step (20)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per figure (median), after a warm-up")
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")


def main(argv: list[str] | None = None) -> int:
    """`python -m streamd.bench.gpu`: print the report; exit 2 (and say why) without CUDA, 1 if a section failed."""
    p = argparse.ArgumentParser(prog="python -m streamd.bench.gpu", description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    try:
        report = run_gpu_check(args)
    except NoCudaError as exc:
        print(f"streamd bench gpu: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
