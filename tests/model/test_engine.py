"""EngineCore (scheduler + executor) and EngineRunner on the random-weight tiny model at small sizes (CPU)."""

from __future__ import annotations

import asyncio
import resource
import time

import numpy as np
import pytest

from streamd.engine.core import EngineCore, FrameError
from streamd.engine.memory import AdmissionError
from streamd.engine.params import EngineConfig, StreamParams
from streamd.engine.runner import EngineRunner
from streamd.engine.window import Source
from streamd.media import synthetic_clip
from streamd.pipeline import ContinuationPipeline

H, W = 32, 48  # small working size: 2x3 tokens per latent frame


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    return ContinuationPipeline.from_spec("tiny-random")


def fast(**kw) -> StreamParams:
    return StreamParams(**{"steps": 1, "guidance": 1.0, "seed": 1, **kw})


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
    first = core.run_chunk()
    assert first is not None and first.source is Source.LIVE and first.first_frame == 0
    assert first.frames.shape == (16, H, W, 3) and first.pts_ns[1] == round(1e9 / 15)
    second = core.run_chunk()  # no new input: the stream continues from its own output
    assert second.source is Source.SELF and second.first_frame == 16 and second.chunk == 1
    feed(core, "a", 13, seed=1)
    third = core.run_chunk()
    assert third.source is Source.LIVE and third.first_frame == 32


def test_a_chunk_runs_one_denoising_step_per_engine_step(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(steps=4), H, W)
    feed(core, "a", 13)
    outcomes = [core.step() for _ in range(4)]
    assert [(o.plan.step, o.result.steps) for o in outcomes] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [o.chunk is not None for o in outcomes] == [False, False, False, True]
    snap = core.scheduler.snapshot()[0]
    assert snap.chunk is None and snap.chunks_out == 1


def test_step_by_step_equals_the_pipeline_in_one_go(pipe: ContinuationPipeline) -> None:
    """Interleaving two streams step by step changes neither's result."""
    alone = make_core(pipe)
    alone.add_stream("a", StreamParams(steps=3, guidance=3.0, seed=5, prompt="red"), H, W)
    feed(alone, "a", 13)
    reference = alone.run_chunk()
    mixed = make_core(pipe, lateness_cap_s=0.0)  # both streams are late from the start: they take turns
    mixed.add_stream("a", StreamParams(steps=3, guidance=3.0, seed=5, prompt="red"), H, W)
    mixed.add_stream("b", StreamParams(steps=3, guidance=2.0, seed=6, prompt="blue"), H, W)
    feed(mixed, "a", 13)
    feed(mixed, "b", 13, seed=3)
    done = {}
    order = []
    while len(done) < 2:
        outcome = mixed.step()
        order.append(outcome.plan.stream_id)
        if outcome.chunk is not None:
            done[outcome.chunk.stream_id] = outcome.chunk
    assert order.count("a") == 3 and order != sorted(order)  # the streams' steps were interleaved
    assert np.array_equal(done["a"].frames, reference.frames)


def test_kv_buffers_keep_their_storage(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    assert core.run_chunk() is not None
    cache = core.executor.cache("a")
    pointers = [t.data_ptr() for t in cache.k + cache.v]
    for i in range(6):
        if i == 3:
            feed(core, "a", 13, seed=2)
        assert core.run_chunk() is not None
    assert core.executor.cache("a") is cache and [t.data_ptr() for t in cache.k + cache.v] == pointers


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def test_thousand_chunks_keep_memory_flat(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    frames = synthetic_clip(13, H, W, seed=4).frames
    baseline = 0
    for i in range(1000):
        if i % 50 == 0:  # live input now and then, so both sources run
            for f in frames:
                core.push_frame("a", f)
        assert core.run_chunk() is not None
        if i == 99:
            baseline = rss()
    growth = rss() - baseline
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 900 chunks"
    state = core.scheduler._streams["a"]
    assert len(state.window.own) == 13 and len(state.window.live) == 13 and len(state.arrivals) <= 13


def test_parameters_apply_at_the_next_chunk_boundary(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(prompt="one", steps=2), H, W)
    feed(core, "a", 13)
    core.update_params("a", prompt="two")
    core.update_params("a", guidance=2.0)
    assert core.step().plan.params.prompt == "two"  # chunk 0 starts with the queued changes
    core.update_params("a", prompt="three")  # while chunk 0 runs: it keeps "two"
    out = core.run_chunk()
    assert out.params.prompt == "two" and out.params.guidance == 2.0
    with pytest.raises(ValueError, match="guidance"):
        core.update_params("a", guidance=-3)
    with pytest.raises(ValueError, match="unknown parameter"):
        core.update_params("a", colour="red")
    with pytest.raises(KeyError):
        core.update_params("zzz", prompt="x")
    assert core.run_chunk().params.prompt == "three"  # the failed updates changed nothing


def test_stream_that_does_not_fit_is_refused_while_others_continue(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe, budget=300_000)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    with pytest.raises(AdmissionError, match="MiB"):
        core.add_stream("big", fast(), 256, 448)
    with pytest.raises(AdmissionError, match="exists"):
        core.add_stream("a", fast(), H, W)
    assert core.scheduler.stream_ids() == ["a"]
    assert core.run_chunk().stream_id == "a"
    core.remove_stream("a")
    core.add_stream("b", fast(), H, W)  # the memory came back
    assert core.step() is None and not core.executor.holds("a")  # the first step freed a's buffers


def test_frames_must_come_resized_and_well_formed(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    core.add_stream("a", fast(), H, W)
    with pytest.raises(FrameError, match="uint8"):
        core.push_frame("a", np.zeros((H, W, 3), dtype=np.float32))
    with pytest.raises(FrameError, match=r"\[H, W, 3\]"):
        core.push_frame("a", np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(FrameError, match="resized at ingest"):
        core.push_frame("a", np.zeros((37, 53, 3), dtype=np.uint8))
    with pytest.raises(KeyError):
        core.push_frame("nope", np.zeros((H, W, 3), dtype=np.uint8))
    feed(core, "a", 13)
    out = core.run_chunk()
    assert out is not None and out.frames.shape == (16, H, W, 3)


def test_runner_reset_emits_nothing_stale_and_commands_do_not_wait(pipe: ContinuationPipeline) -> None:
    async def scenario() -> None:
        core = make_core(pipe, step_delay_s=0.05)
        runner = EngineRunner(core, output_capacity=4)
        core.add_stream("a", StreamParams(steps=6, guidance=1.0, seed=1, prompt="p0"), H, W)
        runner.start()
        try:
            for frame in synthetic_clip(13, H, W).frames:
                runner.push_frame("a", frame)
            outputs = runner.outputs()
            first = await anext(outputs)
            assert first.params.prompt == "p0"
            while core.scheduler.snapshot()[0].chunk is None:  # wait until a chunk is in progress
                await asyncio.sleep(0.005)
            started = time.monotonic()
            core.update_params("a", prompt="p1")
            assert time.monotonic() - started < 0.05  # queued, not waited for
            later = [await anext(outputs) for _ in range(3)]
            prompts = [o.params.prompt for o in later]
            assert prompts[-1] == "p1" and prompts == sorted(prompts)  # never a mix, never back
            generation = core.reset("a")
            for frame in synthetic_clip(13, H, W, seed=9).frames:
                runner.push_frame("a", frame)
            after = [await anext(outputs) for _ in range(3)]
            assert all(o.generation == generation for o in after)
            assert after[0].source is Source.LIVE and after[0].chunk == 0
            with pytest.raises(KeyError):
                core.reset("nope")
        finally:
            assert runner.stop(timeout=30)
        assert runner.error is None and runner.steps >= 6 * 5

    asyncio.run(scenario())


def test_runner_stops_between_steps_of_a_long_chunk(pipe: ContinuationPipeline) -> None:
    async def scenario() -> None:
        core = make_core(pipe, step_delay_s=0.05)
        runner = EngineRunner(core)
        core.add_stream("a", fast(steps=1000), H, W)  # a 50 s chunk
        runner.start()
        for frame in synthetic_clip(13, H, W).frames:
            runner.push_frame("a", frame)
        while runner.steps < 3:
            await asyncio.sleep(0.01)
        assert 0 <= runner.step_running_for() < 1.0
        started = time.monotonic()
        assert runner.stop(timeout=5)
        assert time.monotonic() - started < 1.0 and runner.chunks == 0

    asyncio.run(scenario())


def test_live_pacing_keeps_output_near_real_time(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe, realtime=True, max_lead_s=0.5)
    core.add_stream("a", fast(), H, W)
    feed(core, "a", 13)
    started = time.monotonic()
    assert core.run_chunk() is not None  # the first chunk starts the stream's clock
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
