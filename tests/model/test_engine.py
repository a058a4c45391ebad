"""EngineCore and EngineRunner on the tiny model at small sizes (CPU)."""

from __future__ import annotations

import asyncio
import resource
import threading

import numpy as np
import pytest

from streamd.engine.core import EngineConfig, EngineCore, FrameError, StreamParams
from streamd.engine.kvcache import AdmissionError
from streamd.engine.runner import EngineRunner
from streamd.engine.window import Source
from streamd.media import synthetic_clip
from streamd.pipeline import ContinuationPipeline

H, W = 32, 48  # small working size: 2x3 tokens per latent frame


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    return ContinuationPipeline.from_spec("tiny")


def fast(**kw) -> StreamParams:
    return StreamParams(steps=1, guidance=1.0, seed=1, **kw)


def make_core(pipe: ContinuationPipeline, **kw) -> EngineCore:
    kw.setdefault("realtime", False)
    return EngineCore(pipe, EngineConfig(memory_budget_bytes=kw.pop("budget", 2**30), **kw))


def feed(core: EngineCore, sid: str, n: int, seed: int = 0) -> None:
    for frame in synthetic_clip(n, H, W, seed=seed).frames:
        core.push_frame(sid, frame)


def test_chunks_carry_numbers_timestamps_and_sources(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    assert core.step() is None  # nothing to condition on yet
    feed(core, "a", 13)
    first = core.step()
    assert first is not None and first.source is Source.LIVE and first.first_frame == 0
    assert first.frames.shape == (16, H, W, 3) and first.pts_ns[1] == round(1e9 / 15)
    second = core.step()  # no new input: the stream continues from its own output
    assert second.source is Source.SELF and second.first_frame == 16 and second.chunk == 1
    feed(core, "a", 13, seed=1)
    third = core.step()
    assert third.source is Source.LIVE and third.first_frame == 32


def test_kv_buffers_keep_their_storage(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    state = core.add_stream("a", fast(), H, W)
    pointers = [t.data_ptr() for t in state.cache.k + state.cache.v]
    feed(core, "a", 13)
    for i in range(6):
        if i == 3:
            feed(core, "a", 13, seed=2)
        assert core.step() is not None
    assert [t.data_ptr() for t in state.cache.k + state.cache.v] == pointers


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def test_thousand_chunks_keep_memory_flat(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    frames = synthetic_clip(13, H, W, seed=4).frames
    for i in range(1000):
        if i % 50 == 0:  # live input now and then, so both sources run
            for f in frames:
                core.push_frame("a", f)
        assert core.step() is not None
        if i == 99:
            baseline = rss()
    growth = rss() - baseline
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 900 chunks"
    state = core.streams["a"]
    assert len(state.window.own) == 13 and len(state.window.live) == 13 and len(state.arrivals) <= 13


def test_parameters_apply_at_the_next_chunk_boundary(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(prompt="one"), H, W)
    feed(core, "a", 13)
    core.update_params("a", prompt="two")
    core.update_params("a", guidance=2.0)
    out = core.step()
    assert out.params.prompt == "two" and out.params.guidance == 2.0
    with pytest.raises(ValueError, match="guidance"):
        core.update_params("a", guidance=-3)
    with pytest.raises(ValueError, match="unknown parameter"):
        core.update_params("a", colour="red")
    with pytest.raises(KeyError):
        core.update_params("zzz", prompt="x")
    assert core.step().params.prompt == "two"  # the failed updates changed nothing


def test_two_streams_interleave_fairly(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    for sid in ("a", "b", "c"):
        core.add_stream(sid, fast(), H, W)
        feed(core, sid, 13)
    order = [core.step().stream_id for _ in range(9)]
    assert order == ["a", "b", "c"] * 3


def test_stream_that_does_not_fit_is_refused_while_others_continue(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe, budget=300_000)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    with pytest.raises(AdmissionError, match="MiB"):
        core.add_stream("big", fast(), 256, 448)
    with pytest.raises(AdmissionError, match="exists"):
        core.add_stream("a", fast(), H, W)
    assert "big" not in core.streams
    assert core.step().stream_id == "a"
    core.remove_stream("a")
    core.add_stream("b", fast(), H, W)  # the memory came back


def test_odd_and_changing_frame_sizes(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    rng = np.random.default_rng(0)
    for i in range(13):
        size = (37, 53) if i < 6 else (301, 199)  # odd sizes, then a resolution change mid-stream
        core.push_frame("a", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    with pytest.raises(FrameError, match="uint8"):
        core.push_frame("a", np.zeros((H, W, 3), dtype=np.float32))
    with pytest.raises(FrameError, match=r"\[H, W, 3\]"):
        core.push_frame("a", np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(FrameError, match="outside"):
        core.push_frame("a", np.zeros((1, 1, 3), dtype=np.uint8))
    out = core.step()
    assert out is not None and out.frames.shape == (16, H, W, 3)


def test_runner_reset_emits_nothing_stale_and_params_wait_for_the_boundary(pipe: ContinuationPipeline) -> None:
    async def scenario() -> None:
        core = make_core(pipe)
        runner = EngineRunner(core, output_capacity=4)
        core.add_stream("a", StreamParams(steps=6, guidance=1.0, seed=1, prompt="p0"), H, W)
        runner.open_slot("a")
        started = threading.Event()
        runner.on_chunk = lambda out: started.set()
        runner.start()
        try:
            for frame in synthetic_clip(13, H, W).frames:
                runner.push_frame("a", frame)
            outputs = runner.outputs()
            first = await anext(outputs)
            assert first.params.prompt == "p0"
            await runner.call(lambda c: c.update_params("a", prompt="p1"))
            # every chunk that starts after the update carries it; none carries a mix
            later = [await anext(outputs) for _ in range(3)]
            prompts = [o.params.prompt for o in later]
            assert prompts[-1] == "p1" and prompts == sorted(prompts)
            generation = await runner.call(lambda c: c.reset("a"))
            for frame in synthetic_clip(13, H, W, seed=9).frames:
                runner.push_frame("a", frame)
            after = [await anext(outputs) for _ in range(3)]
            assert all(o.generation == generation for o in after)
            assert after[0].source is Source.LIVE and after[0].chunk == 0
            with pytest.raises(KeyError):
                await runner.call(lambda c: c.reset("nope"))
        finally:
            assert runner.stop(timeout=30)
        assert runner.error is None

    asyncio.run(scenario())


def test_live_pacing_keeps_output_near_real_time(pipe: ContinuationPipeline) -> None:
    import time

    core = make_core(pipe, realtime=True, max_lead_s=0.5)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    started = time.monotonic()
    assert core.step() is not None  # the first chunk starts the stream's clock
    assert core.step() is None  # 16 frames = 1.07 s ahead of the clock: not due yet
    while core.step() is None:
        time.sleep(0.01)
    # the second chunk waited until its frames were no more than 0.5 s ahead of real time
    assert time.monotonic() - started >= 16 / 15 - 0.5 - 0.05


def test_runner_drops_the_oldest_chunk_when_the_network_falls_behind(pipe: ContinuationPipeline) -> None:
    async def scenario() -> None:
        core = make_core(pipe)
        runner = EngineRunner(core, output_capacity=2)
        dropped: list[tuple[str, int]] = []
        runner.on_output_drop = lambda sid, n: dropped.append((sid, n))
        core.add_stream("a", fast(), H, W)
        runner.open_slot("a")
        runner.start()
        try:
            for frame in synthetic_clip(13, H, W).frames:
                runner.push_frame("a", frame)
            while runner.chunks < 6:  # nobody consumes: the queue keeps the 2 newest chunks
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            assert runner.stop(timeout=30)
        first = runner.get_nowait()
        assert first is not None and first.chunk >= 4
        assert runner.drops["output-full"] == 16 * (runner.chunks - 2)
        assert dropped and all(sid == "a" and n == 16 for sid, n in dropped)

    asyncio.run(scenario())
