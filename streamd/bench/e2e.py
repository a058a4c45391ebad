"""`streamd bench e2e`: the daemon end to end (WHIP in, ZeroMQ out) beside the bare engine, in one run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..e2e import E2EConfig, run_e2e
from ..engine.core import EngineCore
from ..engine.params import EngineConfig, StreamParams
from ..media import synthetic_clip
from ..pipeline import ContinuationPipeline


def bare_engine_fps(cfg: E2EConfig, chunks: int = 30) -> float:
    """Frames/s of the engine alone on the same model and settings (one stream, unpaced, no transport)."""
    pipeline = ContinuationPipeline.from_spec(cfg.model, device=None)
    core = EngineCore(pipeline, EngineConfig(realtime=False, max_streams=1))
    core.add_stream("bench", StreamParams(steps=cfg.steps, guidance=cfg.guidance, seed=0))
    for frame in synthetic_clip(13, pipeline.bundle.height, pipeline.bundle.width).frames:
        core.push_frame("bench", frame)
    core.run_chunk()  # warm-up
    started = time.perf_counter()
    frames = 0
    for _ in range(chunks):
        out = core.run_chunk()
        assert out is not None
        frames += len(out.frames)
    return frames / (time.perf_counter() - started)


def run_e2e_bench(cfg: E2EConfig) -> dict[str, Any]:
    """Bare engine first, then the unpaced daemon flow; fps_out / engine_fps is the overlap."""
    engine_fps = bare_engine_fps(cfg)
    result, _ = run_e2e(replace(cfg, paced=False, out_dir=cfg.out_dir or Path("out/bench-e2e")))
    result.update({
        "bench": "e2e",
        "model": cfg.model,
        "engine_fps": engine_fps,
        "overlap": result["fps_out"] / engine_fps if engine_fps else None,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
    })
    return result
