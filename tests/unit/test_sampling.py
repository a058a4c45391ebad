"""Schedules, the Euler step and CFG-zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamd.sampling import (
    DISTILLED_SIGMAS,
    cfg_zero,
    default_guidance,
    euler_step,
    guided_velocity,
    make_schedule,
    read_shift,
)


def shifted(s: np.ndarray, shift: float = 12.0) -> np.ndarray:
    return shift * s / (1 + (shift - 1) * s)


def test_base_schedule_table() -> None:
    sched = make_schedule("base", 50)
    expected = shifted(np.linspace(1, 0.001, 50, dtype=np.float32).astype(np.float64))
    assert sched.steps == 50 and sched.sigmas[-1] == 0.0
    np.testing.assert_allclose(sched.sigmas[:-1], expected, atol=1e-6)
    assert all(a > b for a, b in zip(sched.sigmas, sched.sigmas[1:]))
    assert sched.timesteps[0] == pytest.approx(1000.0)


def test_enhance_hf_has_56_steps_with_a_uniform_tail() -> None:
    sched = make_schedule("enhance_hf", 50)
    assert sched.steps == 56
    t = np.array(sched.timesteps)
    assert (t[:46] > 500).all()
    np.testing.assert_allclose(t[46:], np.arange(500, 0, -50), atol=1e-9)
    assert all(a > b for a, b in zip(sched.sigmas, sched.sigmas[1:]))


def test_distilled_and_refine_tables() -> None:
    d = make_schedule("distilled", 16)
    np.testing.assert_allclose(d.sigmas[:-1], shifted(np.array(DISTILLED_SIGMAS)), atol=1e-12)
    assert d.sigmas[0] == 1.0 and d.steps == 16 and d.sigmas[-1] == 0.0
    assert DISTILLED_SIGMAS[7:9] == (0.58, 0.50)
    four = make_schedule("distilled", 4)
    np.testing.assert_allclose(four.sigmas[:-1], shifted(np.array(DISTILLED_SIGMAS)[[0, 4, 8, 12]]))
    r = make_schedule("refine", 5)
    assert r.timesteps == pytest.approx((500, 443, 344, 208, 12)) and r.sigmas[-1] == 0.0
    assert default_guidance("distilled") == 1.0 and default_guidance("base") == 4.0


def test_schedule_errors() -> None:
    for name, steps in (("nope", 4), ("base", 0), ("distilled", 17), ("refine", 4)):
        with pytest.raises(ValueError):
            make_schedule(name, steps)


def test_shift_from_scheduler_config(tmp_path: Path) -> None:
    assert read_shift(None) == 12.0 and read_shift(tmp_path / "absent.json") == 12.0
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(json.dumps({"shift": 7.0, "num_train_timesteps": 1000}))
    assert read_shift(cfg) == 7.0
    assert make_schedule("base", 3, shift=7.0).sigmas[1] == pytest.approx(shifted(np.array([0.5005]), 7.0)[0], abs=1e-6)
    cfg.write_text(json.dumps({"num_train_timesteps": 1000}))
    assert read_shift(cfg) == 12.0
    cfg.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_shift(cfg)
    cfg.write_text(json.dumps({"shift": -1}))
    with pytest.raises(ValueError, match="positive"):
        read_shift(cfg)


def test_euler_step_negates_the_model_output() -> None:
    x = torch.tensor([1.0, 2.0])
    v = torch.tensor([0.5, -1.0], dtype=torch.bfloat16)
    out = euler_step(x, v, 0.8, 0.6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([1.0 + 0.2 * 0.5, 2.0 - 0.2 * 1.0]))


def test_cfg_zero_per_sample_on_5d() -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 2, 4, 4, generator=gen)
    c = torch.randn(2, 3, 2, 4, 4, generator=gen) + 0.5 * u
    c[1] = 3.0 * u[1]  # sample 1: s* = 3
    out = cfg_zero(u, c, 4.0)
    for b in range(2):
        s = float((c[b] * u[b]).sum() / (u[b].pow(2).sum() + 1e-8))
        torch.testing.assert_close(out[b], s * u[b] + 4.0 * (c[b] - s * u[b]))
    torch.testing.assert_close(out[1], c[1])  # c = s* u: guidance has nothing to add
    torch.testing.assert_close(cfg_zero(u, c, 1.0), c)
    assert torch.isfinite(cfg_zero(torch.zeros_like(u), c, 4.0)).all()
    torch.testing.assert_close(guided_velocity(torch.cat([u, c]), 4.0), out)
    with pytest.raises(ValueError):
        guided_velocity(u[:1], 4.0)
