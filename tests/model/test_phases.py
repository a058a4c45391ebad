"""Where a chunk's time goes: the executor's per-phase seconds and their Prometheus histogram family."""

from __future__ import annotations

import time

import pytest

from streamd.edges.metrics import CHUNK_PHASES, Metrics
from streamd.engine.core import EngineCore
from streamd.engine.params import EngineConfig, StreamParams
from streamd.media import synthetic_clip
from streamd.pipeline import ContinuationPipeline

H, W = 32, 48


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    return ContinuationPipeline.from_spec("tiny-random")


def test_a_chunks_last_step_reports_its_phases(pipe: ContinuationPipeline) -> None:
    core = EngineCore(pipe, EngineConfig(realtime=False, memory_budget_bytes=2**30, step_delay_s=0.05))
    core.add_stream("a", StreamParams(steps=3, guidance=1.0, seed=1), H, W)
    for frame in synthetic_clip(13, H, W).frames:
        core.push_frame("a", frame)
    started = time.perf_counter()
    outcomes = [core.step() for _ in range(3)]
    wall = time.perf_counter() - started
    assert [o.result.phases is None for o in outcomes] == [True, True, False]  # only the chunk's last step
    phases = outcomes[-1].result.phases
    assert tuple(phases) == ("encode", "prefill", "denoise", "decode")
    assert all(v > 0 for v in phases.values())
    assert phases["denoise"] >= 3 * 0.05  # every step of the chunk, the rehearsal delay included
    assert sum(phases.values()) <= wall


def test_the_phase_histogram_family_is_exported() -> None:
    metrics = Metrics(lambda: {"dropped": {}, "generated": 0, "chunks": 0, "published": 0, "subscribers": 0,
                               "streams": 0, "ready": 0, "steps": 0, "publish_errors": 0, "progress": [],
                               "http": {}})
    metrics.chunk_phase_seconds.labels("decode").observe(0.02)
    text = metrics.render().decode()
    for phase in CHUNK_PHASES:  # every series exists before its first observation
        assert f'streamd_chunk_phase_seconds_count{{phase="{phase}"}}' in text
    assert 'streamd_chunk_phase_seconds_sum{phase="decode"} 0.02' in text
