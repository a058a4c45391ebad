"""The torch-free scheduler with a fake clock and a fake executor: exact step order, mailboxes, resets, removal,
pacing, admission, and the property the design rests on: a stream's expensive parameters slow only itself."""

from __future__ import annotations

from typing import Any

import pytest

from streamd.engine.memory import AdmissionError, MemoryBudget
from streamd.engine.params import EngineConfig, StreamParams
from streamd.engine.scheduler import Scheduler, StepPlan, StepResult

FPS = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw: Any) -> Scheduler[int]:
    # windows of 1 latent (1 frame) and chunks of 1 latent (4 frames) keep the arithmetic small
    cfg = EngineConfig(cond_latents=1, chunk_latents=1, fps=FPS, **{"realtime": False, **kw})
    return Scheduler(cfg, MemoryBudget(10_000), spatial_multiple=16, clock=clock)


def add(s: Scheduler[int], sid: str, steps: int = 2, **params: Any) -> None:
    s.add_stream(sid, 100, 16, 16, StreamParams(steps=steps, **params))
    s.push_frame(sid, 0)


def run_step(s: Scheduler[int], clock: Clock, seconds: float = 0.0):
    """Plan, 'execute' (the chunk has params.steps steps; frames after the last), commit."""
    plan = s.next_step()
    if plan is None:
        return None, None
    steps = plan.params.steps or 1
    clock.now += seconds
    frames = [plan.chunk.chunk] * 4 if plan.step + 1 == steps else None
    return plan, s.commit(plan, StepResult(steps, seconds, frames))


def test_steps_interleave_and_chunks_commit_after_their_last_step() -> None:
    clock = Clock()
    s = make(clock)
    add(s, "a", steps=3)
    clock.now += 0.01
    add(s, "b", steps=3)
    clock.now += 5  # both far behind their first deadline: equally late, so they take turns
    order = []
    for _ in range(6):
        plan, done = run_step(s, clock)
        order.append((plan.stream_id, plan.step, done is not None))
    assert order == [("a", 0, False), ("b", 0, False), ("a", 1, False), ("b", 1, False), ("a", 2, True),
                     ("b", 2, True)]


def test_the_stream_furthest_behind_runs_first() -> None:
    clock = Clock()
    s = make(clock, lateness_cap_s=10.0)
    add(s, "late", steps=1)
    clock.now += 1.0
    add(s, "fresh", steps=1)
    clock.now += 0.1
    plan, _ = run_step(s, clock)
    assert plan.stream_id == "late"
    snap = {x.stream_id: x for x in s.snapshot()}
    assert snap["fresh"].lateness_s == pytest.approx(0.1)


def test_an_expensive_stream_slows_only_itself() -> None:
    """B keeps real time (>= 90% of 15 frames/s) while A runs 1000-step chunks, with live pacing on."""
    clock = Clock()
    s = make(clock, realtime=True)
    add(s, "a", steps=1000)
    add(s, "b", steps=8)
    start = clock.now
    frames = {"a": 0, "b": 0}
    while clock.now - start < 60.0:
        plan, done = run_step(s, clock, seconds=0.01)  # a step takes 10 ms, whoever runs it
        if plan is None:
            clock.now += 0.005
            continue
        if done is not None:
            frames[done.stream_id] += len(done.frames)
            s.push_frame(done.stream_id, 0)  # fresh live input keeps both windows ready
    assert frames["b"] >= 0.97 * 60.0 * FPS  # B keeps real time
    assert frames["a"] > 0  # and A still progresses, on the engine time B leaves


def test_streams_that_cannot_keep_up_take_turns() -> None:
    clock = Clock()
    s = make(clock, realtime=True)
    add(s, "a", steps=100)
    add(s, "b", steps=100)
    order = []
    for _ in range(4000):
        plan, _ = run_step(s, clock, seconds=0.01)
        order.append(plan.stream_id)
    # earliest deadline first within the lateness cap, turns beyond it: over time an equal share
    assert abs(order.count("a") - order.count("b")) <= 0.05 * len(order)


def test_parameters_wait_for_the_next_chunk_and_the_reply_says_which() -> None:
    clock = Clock()
    s = make(clock)
    add(s, "a", steps=2, prompt="old")
    plan, _ = run_step(s, clock)  # chunk 0, step 0 of 2
    queued = s.update_params(["a"], {"prompt": "new"})
    assert queued["a"][0].prompt == "new" and queued["a"][1] == 1  # chunk 0 is running: chunk 1 applies it
    plan, done = run_step(s, clock)
    assert plan.params.prompt == "old" and done is not None and done.params.prompt == "old"
    s.push_frame("a", 1)
    plan, _ = run_step(s, clock)
    assert plan.chunk.chunk == 1 and plan.params.prompt == "new"
    assert s.update_params(["a"], {"steps": 5})["a"][1] == 2


def test_a_star_update_is_one_update_for_all_or_none() -> None:
    clock = Clock()
    s = make(clock)
    for sid in ("a", "b"):
        add(s, sid)
    with pytest.raises(ValueError, match="steps"):
        s.update_params(["a", "b"], {"steps": 0})
    with pytest.raises(KeyError):
        s.update_params(["a", "gone"], {"steps": 3})
    assert s.params("a").steps == 2 and s.params("b").steps == 2  # nothing changed
    assert set(s.update_params(["a", "gone", "b"], {"steps": 3}, skip_missing=True)) == {"a", "b"}
    assert s.params("a").steps == 3 and s.params("b").steps == 3


def test_reset_abandons_the_chunk_in_progress() -> None:
    clock = Clock()
    s = make(clock)
    add(s, "a", steps=3)
    plan, _ = run_step(s, clock)
    assert s.reset("a") == 1
    assert s.commit(plan, StepResult(3, 0.0, None)) is None  # a result of the old generation is discarded
    assert s.next_step() is None  # the window was emptied: nothing to condition on
    s.push_frame("a", 7)
    plan = s.next_step()
    assert plan is not None and (plan.generation, plan.chunk.chunk, plan.step) == (1, 0, 0)
    assert plan.chunk.cond[0].payload == 7


def test_removal_releases_the_stream_once_and_discards_its_results() -> None:
    clock = Clock()
    s = make(clock)
    add(s, "a", steps=3)
    plan, _ = run_step(s, clock)
    assert s.remove_stream("a") and not s.remove_stream("a")
    assert s.commit(plan, StepResult(3, 0.0, [0] * 4)) is None
    assert s.take_released() == ["a"] and s.take_released() == []
    assert s.budget.used == 0


def test_pacing_holds_a_stream_that_is_ahead() -> None:
    clock = Clock()
    s = make(clock, realtime=True, max_lead_s=0.5)
    add(s, "a", steps=1)
    for _ in range(3):  # each chunk is 4 frames = 0.267 s; the clock starts with the first frame out
        s.push_frame("a", 0)
        plan, _ = run_step(s, clock)
        if plan is None:
            break
    # output is now ahead of real time by more than max_lead_s: wait
    s.push_frame("a", 0)
    assert s.next_step() is None
    clock.now += 0.3
    assert s.next_step() is not None


def test_admission_refusals_change_nothing() -> None:
    clock = Clock()
    s = Scheduler(EngineConfig(max_streams=2), MemoryBudget(250), spatial_multiple=16, clock=clock)
    s.add_stream("a", 100, 16, 16)
    with pytest.raises(AdmissionError, match="exists already"):
        s.add_stream("a", 100, 16, 16)
    with pytest.raises(AdmissionError, match="needs"):
        s.add_stream("b", 200, 16, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        s.add_stream("b", 100, 17, 16)
    s.add_stream("b", 100, 16, 16)
    with pytest.raises(AdmissionError, match="at most 2"):
        s.add_stream("c", 10, 16, 16)
    assert s.stream_ids() == ["a", "b"] and s.budget.used == 200


def test_seeded_chunks_get_reproducible_seeds() -> None:
    clock = Clock()
    seeds = []
    for _ in range(2):
        s = make(clock)
        add(s, "a", steps=1, seed=5)
        plan: StepPlan[int] | None = s.next_step()
        assert plan is not None
        seeds.append(plan.seed)
    assert seeds[0] == seeds[1]
