"""Conditioning-window bookkeeping with exact frame numbers (no torch)."""

from __future__ import annotations

import pytest

from streamd.engine.window import ConditioningWindow, Policy, Ring, Source, cond_frames_for


def feed(window: ConditioningWindow[str], n: int) -> None:
    for _ in range(n):
        window.push_live(f"in{window.live_received}")


def run_chunk(window: ConditioningWindow[str]):
    plan = window.plan()
    window.commit(plan, [f"out{n}" for n in plan.output_numbers()])
    return plan


def test_frame_arithmetic() -> None:
    assert [cond_frames_for(n) for n in (1, 2, 4, 24)] == [1, 5, 13, 93]
    w: ConditioningWindow[str] = ConditioningWindow(4, 4)
    assert (w.cond_frames, w.chunk_frames) == (13, 16)


def test_ring_bound_and_eviction_count() -> None:
    ring: Ring[int] = Ring(3)
    assert [ring.push(i) for i in range(5)] == [None, None, None, 0, 1]
    assert ring.items() == [2, 3, 4] and ring.evicted == 2 and len(ring) == 3
    with pytest.raises(ValueError):
        Ring(0)


def test_not_ready_until_a_full_live_window() -> None:
    w: ConditioningWindow[str] = ConditioningWindow()
    feed(w, 12)
    assert not w.ready()
    with pytest.raises(RuntimeError):
        w.plan()
    feed(w, 1)
    assert w.ready()


def test_exact_numbers_through_many_wraparounds() -> None:
    """Live input for 3 chunks, then 200 self-conditioned chunks: every number and timestamp is exact."""
    w: ConditioningWindow[str] = ConditioningWindow(4, 4, fps=15.0)
    feed(w, 13)
    p0 = run_chunk(w)
    assert p0.source is Source.LIVE and [f.number for f in p0.cond] == list(range(13))
    assert list(p0.output_numbers()) == list(range(16)) and p0.live_fresh == 13
    feed(w, 20)  # frames 13..32 arrive; the live ring keeps the newest 13: 20..32
    p1 = run_chunk(w)
    assert p1.source is Source.LIVE and [f.number for f in p1.cond] == list(range(20, 33))
    assert p1.evicted == tuple(range(13)) and p1.first_output == 16
    feed(w, 13)
    p2 = run_chunk(w)
    assert [f.number for f in p2.cond] == list(range(33, 46))
    for k in range(3, 203):
        plan = run_chunk(w)  # no new live frames: own output conditions the chunk
        assert plan.source is Source.SELF and plan.chunk == k
        first = 16 * k
        assert plan.first_output == first
        # the window is the last 13 frames of the previous chunk
        assert [f.number for f in plan.cond] == list(range(first - 13, first))
        assert [f.payload for f in plan.cond] == [f"out{n}" for n in range(first - 13, first)]
        assert all(f.source is Source.SELF for f in plan.cond)
    assert w.output_pts_ns(15) == 1_000_000_000 and w.output_pts_ns(16 * 203) == round(16 * 203 * 1e9 / 15)
    assert len(w.own) == 13 and len(w.live) == 13  # bounded however long it runs


def test_live_comes_back_when_input_resumes() -> None:
    w: ConditioningWindow[str] = ConditioningWindow()
    feed(w, 13)
    assert run_chunk(w).source is Source.LIVE
    assert run_chunk(w).source is Source.SELF
    feed(w, 12)  # not yet a full window of fresh frames
    assert run_chunk(w).source is Source.SELF
    feed(w, 1)
    plan = run_chunk(w)
    assert plan.source is Source.LIVE and plan.live_fresh == 13 and plan.cond[-1].number == 25


def test_min_fresh_and_policies() -> None:
    w: ConditioningWindow[str] = ConditioningWindow(min_fresh=4)
    feed(w, 13)
    run_chunk(w)
    feed(w, 4)
    assert run_chunk(w).source is Source.LIVE  # 4 fresh frames are enough; 9 older ones fill the window
    s: ConditioningWindow[str] = ConditioningWindow(policy=Policy.SELF)
    feed(s, 13)
    assert run_chunk(s).source is Source.LIVE  # nothing of its own yet
    feed(s, 13)
    assert run_chunk(s).source is Source.SELF
    live: ConditioningWindow[str] = ConditioningWindow(policy=Policy.LIVE)
    feed(live, 13)
    run_chunk(live)
    assert run_chunk(live).source is Source.LIVE  # stale live frames still win
    with pytest.raises(ValueError):
        ConditioningWindow(min_fresh=14)


def test_reset_starts_over_and_keeps_output_numbering() -> None:
    w: ConditioningWindow[str] = ConditioningWindow()
    feed(w, 13)
    run_chunk(w)
    w.reset()
    assert not w.ready() and w.live_received == 0 and len(w.own) == 0
    feed(w, 13)
    plan = run_chunk(w)
    assert plan.chunk == 0 and plan.first_output == 16 and plan.source is Source.LIVE


def test_frames_pushed_out_unused_are_counted() -> None:
    w: ConditioningWindow[str] = ConditioningWindow()
    feed(w, 13)
    assert w.unused_evicted == 0
    run_chunk(w)  # uses frames 0..12
    feed(w, 13)  # pushes out 0..12: all were used
    assert w.unused_evicted == 0
    feed(w, 5)  # pushes out 13..17, which no chunk used
    assert w.unused_evicted == 5
    assert w.push_live("x") is False
