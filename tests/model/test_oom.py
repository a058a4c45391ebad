"""Running out of memory is one stream's problem: the stream ends (out-of-memory), its buffers go, others go on.

The failure is injected through the executor's interface (its KV allocation and its step), as a GPU would raise
it; on CPU nothing else can make one stream's step run out of memory on purpose.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from streamd.engine.core import OUT_OF_MEMORY, EngineCore
from streamd.engine.memory import is_out_of_memory
from streamd.engine.params import EngineConfig, StreamParams
from streamd.engine.runner import EngineRunner
from streamd.media import synthetic_clip
from streamd.pipeline import ContinuationPipeline

H, W = 32, 48


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    return ContinuationPipeline.from_spec("tiny-random")


def make_core(pipe: ContinuationPipeline) -> EngineCore:
    return EngineCore(pipe, EngineConfig(realtime=False, memory_budget_bytes=2**30))


def add(core: EngineCore, sid: str, seed: int = 0) -> None:
    core.add_stream(sid, StreamParams(steps=2, guidance=1.0, seed=1), H, W)
    for frame in synthetic_clip(13, H, W, seed=seed).frames:
        core.push_frame(sid, frame)


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.57 GiB (injected)")


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(oom()) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                                         "memory: you tried to allocate 1 bytes. Buy new RAM! out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("out of memory"))


def run_until_failure(core: EngineCore):
    for _ in range(100):
        outcome = core.step()
        if outcome is not None and outcome.failure is not None:
            return outcome
    raise AssertionError("no failure")


def test_a_step_that_runs_out_of_memory_ends_its_stream_only(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    add(core, "a")
    add(core, "b", seed=1)
    assert core.run_chunk() is not None and core.run_chunk() is not None  # both hold their buffers now
    assert core.executor.holds("a") and core.executor.holds("b") and core.executor.cache("b") is not None
    used = core.scheduler.budget.used
    step = core.executor._step

    def failing(stream_id, state):  # noqa: ANN001 - the executor's own signature
        if stream_id == "b":
            raise oom()
        return step(stream_id, state)

    core.executor._step = failing
    outcome = run_until_failure(core)
    assert outcome.failure.stream_id == "b" and outcome.failure.reason == OUT_OF_MEMORY
    assert "out of memory" in outcome.failure.message and outcome.chunk is None
    assert not core.executor.holds("b") and core.executor.cache("b") is None  # its buffers are freed
    assert core.scheduler.stream_ids() == ["a"] and core.scheduler.budget.used < used
    for _ in range(2):  # the other stream goes on
        out = core.run_chunk()
        assert out is not None and out.stream_id == "a"


def test_a_kv_allocation_that_runs_out_of_memory_ends_the_new_stream_only(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    add(core, "a")
    assert core.run_chunk() is not None
    new_cache = core.executor._new_cache

    def failing(tokens: int):
        raise oom()

    core.executor._new_cache = failing
    add(core, "c", seed=2)
    outcome = run_until_failure(core)
    assert outcome.failure.stream_id == "c" and outcome.failure.reason == OUT_OF_MEMORY
    assert not core.executor.holds("c") and core.scheduler.stream_ids() == ["a"]
    core.executor._new_cache = new_cache
    assert core.run_chunk().stream_id == "a"


def test_other_errors_still_fail_the_engine(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    add(core, "a")

    def broken(stream_id, state):  # noqa: ANN001
        raise RuntimeError("a bug, not memory")

    core.executor._step = broken
    with pytest.raises(RuntimeError, match="a bug"):
        core.step()


class FakeRanks:
    """The part of RankGroup the executor calls, recording a group failure."""

    world = 2

    def __init__(self) -> None:
        self.failed: str | None = None

    def begin(self, *args) -> None: ...
    def step(self, *args) -> None: ...
    def release(self, *args) -> None: ...
    def heartbeat(self) -> None: ...

    def fail(self, reason: str) -> None:
        self.failed = reason


def test_under_context_parallelism_the_group_fails(pipe: ContinuationPipeline) -> None:
    core = make_core(pipe)
    ranks = FakeRanks()
    core.executor.ranks = ranks  # as if a group were connected: an OOM on one rank cannot be contained
    add(core, "a")
    core.executor._new_cache = lambda tokens: (_ for _ in ()).throw(oom())
    with pytest.raises(torch.OutOfMemoryError):
        core.step()
    assert ranks.failed is not None and "out of memory" in ranks.failed


def test_the_runner_reports_the_failure_and_keeps_running(pipe: ContinuationPipeline) -> None:
    async def scenario() -> None:
        core = make_core(pipe)
        add(core, "a")
        add(core, "b", seed=1)
        step = core.executor._step

        def failing(stream_id, state):  # noqa: ANN001
            if stream_id == "b":
                raise oom()
            return step(stream_id, state)

        core.executor._step = failing
        runner = EngineRunner(core)
        failed = []
        runner.on_stream_failed = failed.append
        runner.start()
        chunks = []
        async for out in runner.outputs():
            chunks.append(out.stream_id)
            if len(chunks) == 3:
                break
        runner.stop()
        assert runner.alive is False and runner.error is None
        assert [(f.stream_id, f.reason) for f in failed] == [("b", OUT_OF_MEMORY)]
        assert chunks == ["a", "a", "a"] and runner.failures[OUT_OF_MEMORY] == 1

    asyncio.run(scenario())


def test_the_daemon_ends_the_failed_stream_s_session_with_the_reason() -> None:
    from streamd.app import Daemon
    from streamd.config import ServeConfig
    from streamd.engine.core import StreamFailure

    closed: list[tuple[str, str]] = []

    class Session:
        def __init__(self, sid: str) -> None:
            self.sid = sid

        async def close(self, reason: str) -> None:  # the WHIP session's close publishes session-ended(reason)
            closed.append((self.sid, reason))

    class Whip:
        def session_for(self, sid: str) -> Session | None:
            return Session(sid) if sid == "b" else None

    async def scenario() -> None:
        daemon = Daemon(ServeConfig())
        daemon.whip = Whip()  # type: ignore[assignment]
        daemon._stream_failed(StreamFailure("b", OUT_OF_MEMORY, "injected"))
        daemon._stream_failed(StreamFailure("gone", OUT_OF_MEMORY, "injected"))  # its session ended meanwhile
        await asyncio.sleep(0.05)
        assert not daemon._closing

    asyncio.run(scenario())
    assert closed == [("b", OUT_OF_MEMORY)]
