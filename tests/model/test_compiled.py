"""Compiled DiT blocks (model/compiled.py): equal to eager, and no recompile after the warm-up in a long stream.

One compiled tiny-random pipeline serves the module (inductor on CPU: the graphs take minutes to build cold on a
small machine, so they are built once). The compile cache goes to a temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from streamd.engine.core import EngineCore
from streamd.engine.params import EngineConfig, StreamParams
from streamd.media import synthetic_clip
from streamd.model.compiled import CompileOptions, check_device, compile_blocks, default_cache_dir
from streamd.model.kvcache import KVCache
from streamd.pipeline import ContinuationPipeline

from .conftest import make_inputs

H, W = 32, 48  # the streams' working size (the warm-up runs at the model's 128x224: token counts are dynamic)
CHUNKS = 200


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContinuationPipeline]:
    pipeline = ContinuationPipeline.from_spec("tiny-random", device="cpu")
    compile_blocks(pipeline.dit, CompileOptions(cache_dir=tmp_path_factory.mktemp("compile")))
    yield pipeline
    pipeline.dit.set_compiled_paths(None)


@torch.inference_mode()
def test_compile_is_off_by_default_and_leaves_eager_bitwise_unchanged(pipe: ContinuationPipeline) -> None:
    fresh = ContinuationPipeline.from_spec("tiny-random", device="cpu")  # deterministic random weights
    assert not fresh.dit.compiled
    cond, latents, t, text, mask = make_inputs(fresh.dit, 2, 2)
    pipe.dit.compiled = False
    try:
        assert torch.equal(pipe.dit(latents, t, text, mask, num_cond_latents=2),
                           fresh.dit(latents, t, text, mask, num_cond_latents=2))
    finally:
        pipe.dit.compiled = True


@torch.inference_mode()
def test_compiled_equals_eager(pipe: ContinuationPipeline) -> None:
    """Every path, every window fill 1..4, guidance batch 2 and 1: within fp32 rounding of eager (1e-5)."""
    dit = pipe.dit
    for batch in (2, 1):
        for t_c in (4, 1, 2, 3):
            cond, latents, t, text, mask = make_inputs(dit, t_c, 3, batch=batch)
            results = {}
            for compiled in (False, True):
                dit.compiled = compiled
                uncached = dit(latents, t, text, mask, num_cond_latents=t_c)[:, :, t_c:]
                cache = dit.prefill(cond)
                cached = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=cache)
                results[compiled] = (uncached, cached, cache.layer(dit.config.depth - 1)[0])
            dit.compiled = True
            for eager, comp in zip(results[False], results[True]):
                assert rel_err(comp, eager) < 1e-5, (batch, t_c)


def _feed(core: EngineCore, sid: str, frames: np.ndarray, i: int) -> None:
    core.push_frame(sid, frames[i % len(frames)])


@torch.inference_mode()
def test_no_recompile_after_warm_up(pipe: ContinuationPipeline) -> None:
    """200 chunks of two interleaved streams through prompt changes, guidance off and on, and a reset; then
    every window fill 1..4 of the cached path with and without guidance: nothing compiles after the warm-up.

    The engine's window is always full (a stream waits for `cond_latents` latents), so the fill sweep runs the
    pipeline's building blocks directly.
    """
    pipe.dit.compiled = True
    core = EngineCore(pipe, EngineConfig(max_streams=2, realtime=False, steps=1, guidance=1.0,
                                         memory_budget_bytes=2**30))
    core.executor.warm_up()
    warmed = graphs()
    assert warmed > 0 and not counters["graph_break"]
    clips = {sid: synthetic_clip(40, H, W, seed=n).frames for n, sid in enumerate(("a", "b"))}
    for sid in clips:
        core.add_stream(sid, StreamParams(steps=1, guidance=1.0, seed=3), H, W)
    chunks: dict[str, int] = {"a": 0, "b": 0}
    sources: set[str] = set()
    guidance_seen: set[float] = set()
    i = 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        while sum(chunks.values()) < CHUNKS:
            for sid, frames in clips.items():
                _feed(core, sid, frames, i)
            i += 1
            outcome = core.step()
            if outcome is None or outcome.chunk is None:
                continue
            done = outcome.chunk
            chunks[done.stream_id] += 1
            sources.add(done.source.value)
            guidance_seen.add(outcome.plan.params.guidance or 1.0)
            n = sum(chunks.values())
            if n % 40 == 10:
                core.update_params("a", prompt=f"prompt {n}")
            if n % 40 == 20:
                core.update_params(done.stream_id, guidance=4.0)  # guidance on: batch 2
            if n % 40 == 30:
                core.update_params(done.stream_id, guidance=1.0)  # off again: batch 1
            if n == 100:
                core.reset("b")
        # window fill 1..4 (the cache sized for 4 latents, as a stream's is), guidance off and on
        h, w = H // 8, W // 8
        cache = KVCache(pipe.dit.config, 4 * (h // 2) * (w // 2))
        gen = torch.Generator().manual_seed(0)
        for t_c in (1, 2, 3, 4):
            cond = torch.randn(1, pipe.dit.config.in_channels, t_c, h, w, generator=gen)
            for guidance in (1.0, 4.0):
                params = pipe.default_params(steps=1, guidance=guidance, noise_latents=4)
                state = pipe.begin_denoise(cond, "fill", params, cache=cache, generator=gen)
                pipe.prefill(cond, cache=cache)
                pipe.denoise_step(state)
    assert min(chunks.values()) >= CHUNKS // 4  # both streams ran throughout
    assert guidance_seen == {1.0, 4.0} and sources == {"live", "self"}
    assert graphs() == warmed, "a graph was compiled after the warm-up"
    assert not counters["graph_break"]


def test_cache_dir_defaults_to_the_state_directory(tmp_path: Path) -> None:
    assert default_cache_dir({"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}) == tmp_path / "a" / "compile"
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "streamd" / "compile"


def test_cuda_graphs_are_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="reduce-overhead.*CUDA"):
        check_device(CompileOptions(mode="reduce-overhead"), torch.device("cpu"))
    with pytest.raises(ValueError, match="compile mode"):
        CompileOptions(mode="fast")
