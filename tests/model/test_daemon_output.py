"""Output never stops silently: a publishing failure is logged, counted, turns readiness red, and the next chunk
still goes out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import numpy as np
import pytest

from streamd.app import Daemon
from streamd.config import ServeConfig
from streamd.engine.core import ChunkOutput
from streamd.engine.params import StreamParams
from streamd.engine.window import Source


def chunk(n: int) -> ChunkOutput:
    now = time.monotonic()
    return ChunkOutput(stream_id="a", generation=0, chunk=n, source=Source.SELF, first_frame=16 * n,
                       frames=np.zeros((16, 16, 16, 3), np.uint8), pts_ns=list(range(16)), params=StreamParams(),
                       cond_arrival=None, cond_frame=None, started=now, finished=now, steps=1)


class Runner:
    """The runner's output side and health, with two chunks to hand out."""

    alive = True
    error = None
    steps = chunks = frames_generated = 0
    drops: dict[str, int] = {}
    core = SimpleNamespace(scheduler=SimpleNamespace(snapshot=lambda: []))

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChunkOutput] = asyncio.Queue()

    async def outputs(self) -> AsyncIterator[ChunkOutput]:
        while True:
            yield await self.queue.get()

    def is_current(self, out: ChunkOutput) -> bool:
        return True

    def step_running_for(self) -> float:
        return 0.0


class Publisher:
    published = subscribers = 0

    def __init__(self) -> None:
        self.sent: list[int] = []

    def publish_chunk(self, out: ChunkOutput) -> None:
        if out.chunk == 0:
            raise OSError("socket gone")
        self.sent.append(out.chunk)


def test_a_failing_publish_is_counted_and_turns_readiness_red(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        daemon = Daemon(ServeConfig.load(env={"STREAMD_ENGINE_STALL_TIMEOUT_S": "0.5"}))
        runner, publisher = Runner(), Publisher()
        daemon.runner, daemon.publisher, daemon.state = runner, publisher, "online"  # type: ignore[assignment]
        daemon._publish_task = asyncio.create_task(daemon._fan_out(runner))  # type: ignore[arg-type]
        assert daemon.readiness() == (True, "")
        await runner.queue.put(chunk(0))
        await asyncio.sleep(0.05)
        assert daemon.publish_errors == 1 and daemon.readiness() == (False, "output-failing")
        assert b"streamd_publish_errors_total 1.0" in daemon.metrics.render()
        await runner.queue.put(chunk(1))  # the next chunk still goes out, and readiness recovers
        await asyncio.sleep(0.05)
        assert publisher.sent == [1] and daemon.readiness() == (True, "")
        daemon._publish_task.cancel()
        await asyncio.gather(daemon._publish_task, return_exceptions=True)
        assert daemon.readiness() == (False, "output-stopped")

    with caplog.at_level(logging.ERROR, logger="streamd"):
        asyncio.run(scenario())
    assert any("publishing chunk 0 failed" in r.getMessage() for r in caplog.records)
