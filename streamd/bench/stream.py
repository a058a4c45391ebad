"""`streamd bench stream`: N live streams fed by a synthetic real-time source through the engine runner."""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..edges.zmq import FramePublisher
from ..engine.core import EngineCore, StepOutcome
from ..engine.params import EngineConfig, StreamParams
from ..engine.runner import EngineRunner
from ..media import synthetic_clip
from ..pipeline import ContinuationPipeline

MEMORY_BASELINE_CHUNK = 10  # rss growth is measured from this chunk on, after warm-up allocations settle


@dataclass(frozen=True)
class StreamBenchConfig:
    """What to run."""

    model: str = "tiny"
    streams: int = 1
    chunks: int = 40  # chunks in all, over every stream
    steps: int | None = None
    guidance: float | None = None
    device: str | None = None
    source_fps: float = 15.0
    compile: bool = False  # compiled DiT blocks (built in the warm-up, reported as warm_up_s)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


async def _feed(runner: EngineRunner, stream_id: str, frames: np.ndarray, fps: float, stop: asyncio.Event) -> None:
    """Push frames at `fps` in real time, looping over the clip."""
    start = time.monotonic()
    i = 0
    while not stop.is_set():
        runner.push_frame(stream_id, frames[i % len(frames)])
        i += 1
        delay = start + i / fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _run(cfg: StreamBenchConfig, pipeline: ContinuationPipeline) -> dict[str, Any]:
    # unpaced: the benchmark measures capacity, not the real-time regime the daemon runs in
    core = EngineCore(pipeline, EngineConfig(max_streams=max(cfg.streams, 1), realtime=False))
    warm_up_s = core.executor.warm_up()  # as the daemon does before READY (builds the graphs when compiled)
    runner = EngineRunner(core)
    phases: list[Mapping[str, float]] = []  # per chunk, in the engine thread (a list append is atomic)

    def observe(outcome: StepOutcome) -> None:
        if outcome.result.phases is not None:
            phases.append(outcome.result.phases)

    runner.on_step = observe
    # publish as the daemon does: every chunk onto a ZeroMQ XPUB socket (in-process endpoint, no subscriber)
    publisher = FramePublisher(f"inproc://streamd-bench-{id(core)}", fps=core.config.fps)
    publisher.start()
    publish_s: list[float] = []
    params = StreamParams(steps=cfg.steps, guidance=cfg.guidance, seed=0)
    clip = synthetic_clip(64, pipeline.bundle.height, pipeline.bundle.width, seed=1).frames
    for i in range(cfg.streams):
        core.add_stream(f"s{i}", params)
    stop = asyncio.Event()
    runner.start()
    feeders = [asyncio.create_task(_feed(runner, f"s{i}", clip, cfg.source_fps, stop)) for i in range(cfg.streams)]
    cuda = pipeline.device.type == "cuda"
    latencies: list[float] = []
    sources: dict[str, int] = {"live": 0, "self": 0}
    frames_out = 0
    rss_base = cuda_base = 0
    started = time.monotonic()
    try:
        async for out in runner.outputs():
            published = time.perf_counter()
            publisher.publish_chunk(out)
            publish_s.append(time.perf_counter() - published)
            latencies.append(out.seconds)
            sources[out.source.value] += 1
            frames_out += len(out.frames)
            if len(latencies) == MEMORY_BASELINE_CHUNK:
                rss_base = _rss()
                cuda_base = torch.cuda.memory_allocated() if cuda else 0
            if len(latencies) >= cfg.chunks:
                break
        wall = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*feeders)
        runner.stop()
        publisher.close()
    if runner.error is not None:
        raise RuntimeError(f"the engine failed: {runner.error}")
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    result: dict[str, Any] = {
        "bench": "stream",
        "model": cfg.model,
        "device": str(pipeline.device),
        "streams": cfg.streams,
        "chunks": len(latencies),
        "frames_out": frames_out,
        "wall_s": wall,
        "fps_out": frames_out / wall,
        "rtf": frames_out / core.config.fps / wall,
        "chunk_latency_p50_s": statistics.median(latencies),
        "chunk_latency_p95_s": q[18],
        "chunks_live": sources["live"],
        "chunks_self": sources["self"],
        "frames_dropped": sum(runner.drops.values()),
        "drops_by_reason": dict(runner.drops),
        "rss_growth_bytes": _rss() - rss_base if len(latencies) > MEMORY_BASELINE_CHUNK else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "steps": core.executor.chunk_params(params).steps,
        "height": pipeline.bundle.height,
        "width": pipeline.bundle.width,
        "compiled": pipeline.dit.compiled,
        "warm_up_s": warm_up_s,
        **_breakdown(phases, publish_s),
    }
    if cuda:
        result["cuda_mem_growth_bytes"] = torch.cuda.memory_allocated() - cuda_base
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _breakdown(phases: list[Mapping[str, float]], publish_s: list[float]) -> dict[str, Any]:
    """Mean seconds per chunk in each phase, and each phase's share of their sum."""
    if not phases:
        return {}
    mean = {name: statistics.fmean(p[name] for p in phases) for name in phases[0]}
    mean["publish"] = statistics.fmean(publish_s) if publish_s else 0.0
    total = sum(mean.values())
    return {"chunk_phase_s": mean, "chunk_phase_fraction": {k: v / total for k, v in mean.items()},
            "chunk_phase_total_s": total}


def run_stream_bench(cfg: StreamBenchConfig) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result."""
    if cfg.streams < 1 or cfg.chunks < 1:
        raise ValueError("streams and chunks must be at least 1")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = ContinuationPipeline.from_spec(cfg.model, device=device)
    if cfg.compile:
        from ..model.compiled import compile_blocks

        compile_blocks(pipeline.dit)
    return asyncio.run(_run(cfg, pipeline))
