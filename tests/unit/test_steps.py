"""The Euler step, CFG-zero guidance and the [uncond ; cond] batch helper."""

from __future__ import annotations

import pytest
import torch

from streamd.sampling import cfg_zero, euler_step, guided_velocity, make_schedule


def loop_cfg_zero(u: torch.Tensor, c: torch.Tensor, g: float) -> torch.Tensor:
    """CFG-zero written sample by sample, in float64, as the reference to compare with."""
    out = []
    for ub, cb in zip(u.double(), c.double()):
        s = (ub * cb).sum() / (ub.square().sum() + 1e-8)
        out.append(s * ub + g * (cb - s * ub))
    return torch.stack(out).float()


def test_euler_step_by_hand() -> None:
    x = torch.tensor([1.0, 2.0, -3.0])
    v = torch.tensor([0.5, -1.0, 2.0], dtype=torch.bfloat16)
    out = euler_step(x, v, 0.8, 0.6)
    assert out.dtype == torch.float32
    # x + (0.6 - 0.8) * (-v) = x + 0.2 v
    torch.testing.assert_close(out, torch.tensor([1.1, 1.8, -2.6]), rtol=0, atol=1e-6)


def test_euler_step_returns_float32_from_half_inputs() -> None:
    x = torch.ones(1, 2, 3, 4, 4, dtype=torch.bfloat16)
    v = torch.full((1, 2, 3, 4, 4), 2.0, dtype=torch.bfloat16)
    out = euler_step(x, v, 1.0, 0.0)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_euler_step_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        euler_step(torch.zeros(1, 4), torch.zeros(2, 4), 1.0, 0.5)


def test_an_exact_model_lands_on_x0() -> None:
    # On the straight flow-matching path x_sigma = (1 - sigma) x0 + sigma noise the true output is x0 - noise at
    # every sigma, so Euler integration is exact: from pure noise the sampler must land on x0 for any schedule.
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 3, 6, 8, generator=gen), torch.randn(1, 4, 3, 6, 8, generator=gen)
    for name, steps in (("base", 10), ("distilled", 4)):
        sched = make_schedule(name, steps)
        x = sched.sigmas[0] * noise + (1 - sched.sigmas[0]) * x0
        for sigma, sigma_next in zip(sched.sigmas[:-1], sched.sigmas[1:]):
            x = euler_step(x, x0 - noise, sigma, sigma_next)
        torch.testing.assert_close(x, x0, rtol=0, atol=1e-5)


def test_cfg_zero_at_guidance_one_is_cond_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    u, c = torch.randn(2, 3, 2, 4, 4, generator=gen), torch.randn(2, 3, 2, 4, 4, generator=gen)
    assert torch.equal(cfg_zero(u, c, 1.0), c)
    assert torch.equal(cfg_zero(u.bfloat16(), c.bfloat16(), 1.0), c.bfloat16().float())
    # and the formula agrees with the shortcut just off 1.0
    torch.testing.assert_close(cfg_zero(u, c, 1.0 + 1e-7), c, rtol=0, atol=1e-5)


def test_cfg_zero_per_sample_scale_on_5d() -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 2, 4, 4, generator=gen)  # [B, C, T, H, W]
    c = torch.randn(2, 3, 2, 4, 4, generator=gen)
    c[0] = c[0] + 0.5 * u[0]
    c[1] = 3.0 * u[1]  # sample 1: s* = 3 exactly, so guidance has nothing to add
    s0 = float((c[0] * u[0]).sum() / u[0].square().sum())
    assert abs(s0 - 3.0) > 1.0  # the two samples really have different s*
    out = cfg_zero(u, c, 4.0)
    assert out.shape == u.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, loop_cfg_zero(u, c, 4.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], c[1], rtol=1e-5, atol=1e-5)
    # a single s* for the whole batch would get at least one sample wrong
    s_batch = float((c * u).sum() / u.square().sum())
    assert not torch.allclose(out, s_batch * u + 4.0 * (c - s_batch * u), atol=1e-3)


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 6), (2, 4, 3, 3), (2, 1, 2, 3, 3), (2, 2, 1, 2, 2, 3)])
def test_cfg_zero_any_rank(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(shape))
    u, c = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    torch.testing.assert_close(cfg_zero(u, c, 2.5), loop_cfg_zero(u, c, 2.5), rtol=1e-5, atol=1e-5)


def test_cfg_zero_zero_uncond_is_finite() -> None:
    c = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    out = cfg_zero(torch.zeros_like(c), c, 4.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 4.0 * c)  # s* = 0: plain scaling of the conditional prediction


def test_cfg_zero_computes_in_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    u, c = torch.randn(2, 4, 2, 8, 8, generator=gen), torch.randn(2, 4, 2, 8, 8, generator=gen)
    out = cfg_zero(u.bfloat16(), c.bfloat16(), 5.0)
    assert out.dtype == torch.float32
    expected = loop_cfg_zero(u.bfloat16().float(), c.bfloat16().float(), 5.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cfg_zero_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        cfg_zero(torch.zeros(2, 3), torch.zeros(2, 4), 4.0)


def test_s_star_over_noise_frames_only() -> None:
    # streamd guides the noise frames only; including the conditioning frames in s* (the reference's uncached
    # path) gives a different answer, which is why the uncached path slices them off before guiding.
    gen = torch.Generator().manual_seed(4)
    u, c = torch.randn(1, 2, 5, 3, 3, generator=gen), torch.randn(1, 2, 5, 3, 3, generator=gen)
    t_cond = 2
    noise_only = cfg_zero(u[:, :, t_cond:], c[:, :, t_cond:], 4.0)
    whole_then_sliced = cfg_zero(u, c, 4.0)[:, :, t_cond:]
    torch.testing.assert_close(noise_only, loop_cfg_zero(u[:, :, t_cond:], c[:, :, t_cond:], 4.0))
    assert not torch.allclose(noise_only, whole_then_sliced, atol=1e-4)


def test_guided_velocity_splits_uncond_then_cond() -> None:
    gen = torch.Generator().manual_seed(5)
    u, c = torch.randn(2, 3, 2, 4, 4, generator=gen), torch.randn(2, 3, 2, 4, 4, generator=gen)
    out = guided_velocity(torch.cat([u, c]), 4.0)
    assert out.shape == u.shape
    torch.testing.assert_close(out, cfg_zero(u, c, 4.0), rtol=0, atol=0)
    assert not torch.allclose(out, cfg_zero(c, u, 4.0))
    torch.testing.assert_close(guided_velocity(torch.cat([u, c]), 4.0, batch_size=2), out, rtol=0, atol=0)


def test_guided_velocity_at_guidance_one_passes_cond_through() -> None:
    v = torch.randn(1, 3, 2, 4, 4, dtype=torch.bfloat16)
    assert guided_velocity(v, 1.0) is v
    assert guided_velocity(v, 1.0, batch_size=1) is v
    both = torch.randn(2, 3, 2, 4, 4)
    assert torch.equal(guided_velocity(both, 1.0, batch_size=1), both[1:])


def test_guided_velocity_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        guided_velocity(torch.zeros(3, 2), 4.0)
    with pytest.raises(ValueError, match="uncond"):
        guided_velocity(torch.zeros(1, 2), 4.0, batch_size=1)
    with pytest.raises(ValueError, match="uncond"):
        guided_velocity(torch.zeros(6, 2), 4.0, batch_size=2)
