"""Sampling schedules: exact tables, the enhance_hf tail, shift from a scheduler config, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamd.sampling import (
    DEFAULT_SHIFT,
    DISTILLED_SIGMAS,
    SCHEDULE_NAMES,
    Schedule,
    default_guidance,
    make_schedule,
    read_shift,
)


def shifted(s: np.ndarray, shift: float = 12.0) -> np.ndarray:
    """The shift, written out again here so the tests do not trust the module's own helper."""
    s = np.asarray(s, dtype=np.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)


def base_table(steps: int, shift: float = 12.0) -> np.ndarray:
    return shifted(np.linspace(1.0, 0.001, steps, dtype=np.float32), shift)


def strictly_decreasing(values: tuple[float, ...]) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("steps", [1, 2, 3, 17, 50])
def test_base_table_matches_an_independent_computation(steps: int) -> None:
    sched = make_schedule("base", steps)
    assert sched.name == "base" and sched.steps == steps and len(sched.sigmas) == steps + 1
    assert sched.sigmas[-1] == 0.0
    np.testing.assert_allclose(sched.sigmas[:-1], base_table(steps), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sched.timesteps, 1000.0 * np.array(sched.sigmas[:-1]), rtol=0, atol=1e-9)


def test_base_by_hand() -> None:
    sched = make_schedule("base", 50)
    assert sched.sigmas[0] == pytest.approx(1.0, abs=1e-7)  # the shift fixes 1
    s1 = 1.0 - 0.999 / 49
    assert sched.sigmas[1] == pytest.approx(12 * s1 / (1 + 11 * s1), abs=1e-6)
    assert sched.sigmas[49] == pytest.approx(0.012 / 1.011, abs=1e-6)  # 0.001 shifted
    assert sched.timesteps[0] == pytest.approx(1000.0, abs=1e-4)


def test_shift_changes_base_but_not_refine() -> None:
    three = make_schedule("base", 3, shift=7.0)
    assert three.sigmas[1] == pytest.approx(7 * 0.5005 / (1 + 6 * 0.5005), abs=1e-6)
    assert make_schedule("base", 3, shift=1.0).sigmas[1] == pytest.approx(0.5005, abs=1e-6)
    assert make_schedule("refine", 5, shift=3.0) == make_schedule("refine", 5)


def test_enhance_hf_is_56_steps_at_50() -> None:
    sched = make_schedule("enhance_hf", 50)
    base_t = 1000.0 * base_table(50)
    kept = base_t[base_t > 500.0]
    assert len(kept) == 46
    expected_t = np.concatenate([kept, np.arange(500.0, 0.0, -50.0)])
    assert sched.steps == 56 and len(sched.sigmas) == 57 and sched.sigmas[-1] == 0.0
    np.testing.assert_allclose(sched.timesteps, expected_t, rtol=0, atol=1e-3)  # 1e-6 in sigma
    np.testing.assert_allclose(sched.sigmas[:-1], expected_t / 1000.0, rtol=0, atol=1e-6)
    assert sched.timesteps[46:] == pytest.approx((500, 450, 400, 350, 300, 250, 200, 150, 100, 50), abs=1e-9)
    assert min(sched.timesteps[:46]) > 500.0
    np.testing.assert_allclose(sched.sigmas[:46], make_schedule("base", 50).sigmas[:46], rtol=0, atol=1e-12)


def test_distilled_full_table() -> None:
    sched = make_schedule("distilled", 16)
    assert sched.steps == 16 and sched.sigmas[0] == 1.0 and sched.sigmas[-1] == 0.0
    raw = np.array([1, .94, .88, .82, .76, .70, .64, .58, .50, .44, .38, .32, .26, .20, .14, .08])
    np.testing.assert_allclose(DISTILLED_SIGMAS, raw, rtol=0, atol=0)
    np.testing.assert_allclose(sched.sigmas[:-1], shifted(raw), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("steps", "indices"),
    [(1, [0]), (4, [0, 4, 8, 12]), (5, [0, 3, 6, 9, 12]), (7, [0, 2, 4, 6, 9, 11, 13]), (8, list(range(0, 16, 2)))],
)
def test_distilled_subsets(steps: int, indices: list[int]) -> None:
    sched = make_schedule("distilled", steps)
    assert sched.steps == steps
    np.testing.assert_allclose(sched.sigmas[:-1], shifted(np.array(DISTILLED_SIGMAS)[indices]), rtol=0, atol=1e-6)


def test_refine_table() -> None:
    sched = make_schedule("refine", 5)
    assert sched.timesteps == pytest.approx((500.0, 443.0, 344.0, 208.0, 12.0), abs=1e-9)
    assert sched.sigmas == pytest.approx((0.5, 0.443, 0.344, 0.208, 0.012, 0.0), abs=1e-12)
    assert sched.sigmas[-1] == 0.0


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_every_schedule_decreases_to_zero(name: str) -> None:
    for steps in ((5,) if name == "refine" else (1, 2, 9, 16)):
        sched = make_schedule(name, steps)
        assert sched.sigmas[-1] == 0.0 and strictly_decreasing(sched.sigmas)
        assert all(0.0 < s <= 1.0 + 1e-7 for s in sched.sigmas[:-1])
        assert len(sched.timesteps) == sched.steps


def test_default_guidance() -> None:
    assert {n: default_guidance(n) for n in SCHEDULE_NAMES} == {
        "base": 4.0, "enhance_hf": 4.0, "distilled": 1.0, "refine": 1.0,
    }
    with pytest.raises(ValueError, match="unknown schedule"):
        default_guidance("euler")


@pytest.mark.parametrize(
    ("name", "steps", "match"),
    [
        ("nope", 4, "unknown schedule"),
        ("base", 0, "steps"),
        ("base", -3, "steps"),
        ("base", 2.0, "steps"),
        ("base", True, "steps"),
        ("enhance_hf", 0, "steps"),
        ("distilled", 17, "at most 16"),
        ("refine", 4, "exactly 5"),
        ("refine", 6, "exactly 5"),
    ],
)
def test_schedule_errors(name: str, steps: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_schedule(name, steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_shift_argument(shift: float) -> None:
    with pytest.raises(ValueError, match="shift"):
        make_schedule("base", 4, shift=shift)


def test_schedule_validates_its_table() -> None:
    with pytest.raises(ValueError):
        Schedule("x", (1.0, 0.5))  # does not end at 0
    with pytest.raises(ValueError):
        Schedule("x", (0.5, 0.7, 0.0))  # not decreasing
    with pytest.raises(ValueError):
        Schedule("x", (0.0,))  # no step


def test_read_shift_defaults(tmp_path: Path) -> None:
    assert DEFAULT_SHIFT == 12.0
    assert read_shift(None) == 12.0
    assert read_shift(tmp_path / "absent.json") == 12.0
    assert read_shift(tmp_path) == 12.0  # a checkpoint directory without a scheduler config
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(json.dumps({"num_train_timesteps": 1000}))
    assert read_shift(cfg) == 12.0


def test_read_shift_from_file_and_checkpoint_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "scheduler" / "scheduler_config.json"
    cfg.parent.mkdir()
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7, "num_train_timesteps": 1000}
    cfg.write_text(json.dumps(config))
    assert read_shift(cfg) == 7.0 and isinstance(read_shift(cfg), float)
    assert read_shift(tmp_path) == 7.0
    assert read_shift(str(cfg)) == 7.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{broken", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"shift": -1}', "positive"),
        ('{"shift": 0}', "positive"),
        ('{"shift": "12"}', "positive"),
        ('{"shift": true}', "positive"),
        ('{"shift": null}', "positive"),
        ('{"shift": NaN}', "finite"),
    ],
)
def test_read_shift_rejects_malformed_files(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_shift(cfg)
