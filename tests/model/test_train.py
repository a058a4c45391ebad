"""`streamd train`: deterministic by seed, resumable to the same weights, exported in the published layout that
the strict loader reads, and its recipe and data checked for the mistakes that would quietly spoil training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from streamd.model.dit import LongCatVideoDiT
from streamd.train.data import make_scene, render_scene
from streamd.train.loop import STATE_FILE, TrainConfig, Trainer, train

# a run small enough for a test: 4 steps, 2 clips a batch, one whole-frame batch (step 0) and crops after it
SMALL = TrainConfig(steps=4, batch=2, full_frame_batch=1, full_frame_every=4, warmup=2, checkpoint_every=2)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_and_another_seed_differs(tmp_path: Path) -> None:
    a = train(SMALL, tmp_path / "a")
    b = train(SMALL, tmp_path / "b")
    c = train(replace(SMALL, seed=1), tmp_path / "c")
    wa, wb, wc = _weights(a.ema), _weights(b.ema), _weights(c.ema)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


class _Interrupt(Exception):
    pass


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    whole = train(SMALL, tmp_path / "whole")

    def stop_at_3(step: int, steps: int, loss: float) -> None:
        if step == 3:  # one step after the step-2 state file: that step is lost and redone
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(SMALL, tmp_path / "split", progress=stop_at_3)
    assert (tmp_path / "split" / STATE_FILE).exists() and not (tmp_path / "split" / "dit").exists()
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        train(replace(SMALL, lr=1e-3), tmp_path / "split")
    seen: list[int] = []
    resumed = train(SMALL, tmp_path / "split", progress=lambda step, steps, loss: seen.append(step))
    assert seen == [3, 4] and resumed.samples == whole.samples
    ww, wr = _weights(whole.ema), _weights(resumed.ema)
    assert all(torch.equal(ww[k], wr[k]) for k in ww)
    assert all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), resumed.model.parameters()))


def test_the_export_loads_through_the_strict_loader(tmp_path: Path) -> None:
    trainer = train(SMALL, tmp_path)
    loaded = LongCatVideoDiT.from_pretrained(tmp_path / "dit", dtype=torch.float32)
    for name, value in trainer.ema.state_dict().items():
        # shipped in float16: equal to the EMA within fp16 rounding
        assert torch.allclose(loaded.state_dict()[name], value.to(torch.float16).float()), name
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["steps_done"] == 4 and record["samples_seen"] == trainer.samples == 1 + 3 * 2
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["shift"] == trainer.preset.shift


def test_the_loss_falls_on_a_fixed_batch() -> None:
    """The objective can be fitted: a few steps on one batch lower its loss (a sign or target mix-up does not)."""
    trainer = Trainer(replace(SMALL, steps=60, warmup=1, lr=2e-3))
    batch, _ = trainer.batch(1)
    with torch.no_grad():
        before = float(trainer.loss(trainer.model, batch, torch.Generator().manual_seed(5)))
    for _ in range(40):
        loss = trainer.loss(trainer.model, batch, torch.Generator().manual_seed(5))
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    with torch.no_grad():
        after = float(trainer.loss(trainer.model, batch, torch.Generator().manual_seed(5)))
    assert after < 0.7 * before, (before, after)


def test_crops_are_the_full_frames_pixels() -> None:
    scene = make_scene(12345, 64, 112)
    full = render_scene(scene, 5, 64, 112)
    crop = render_scene(scene, 5, 64, 112, window=(16, 48, 48, 64))
    assert crop.shape == (5, 48, 64, 3)
    assert np.array_equal(crop, full[:, 16:64, 48:112])
    with pytest.raises(ValueError, match="inside"):
        render_scene(scene, 5, 64, 112, window=(32, 0, 48, 64))


def test_batches_follow_the_recipe() -> None:
    trainer = Trainer(replace(SMALL, batch=3, full_frame_batch=2))
    whole, _ = trainer.batch(0)
    crop, _ = trainer.batch(1)
    assert whole.latents.shape[0] == 2 and whole.latents.shape[-2:] == (8, 14)  # 64x112 pixels, 8 per latent
    assert crop.latents.shape[0] == 3 and crop.latents.shape[-2:] == (6, 8)  # 48x64 pixels
    counts = np.bincount([trainer.batch(s)[0].cond_latents for s in range(1, 41, 4)], minlength=5)
    assert counts[0] == 0 and counts[1:].sum() == 10


@pytest.mark.parametrize("change, message", [
    ({"crop": (40, 64)}, "crop must be multiples of 16x16"),
    ({"crop": (80, 64)}, "inside 64x112"),
    ({"cond_weights": (1.0, 1.0)}, "cond_weights needs 4"),
    ({"cond_weights": (0.0, 0.0, 0.0, 0.0)}, "positive"),
    ({"full_frame_every": -1}, "full_frame_every"),
    ({"batch": 0}, "batch must be at least 1"),
    ({"lr": 0.0}, "lr must be"),
    ({"preset": "nope"}, "nope"),
])
def test_bad_recipes_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)  # type: ignore[arg-type]


def test_a_continued_run_starts_from_the_earlier_export_and_sees_other_clips(tmp_path: Path) -> None:
    first = train(SMALL, tmp_path / "first")
    exported = LongCatVideoDiT.from_pretrained(tmp_path / "first" / "dit", dtype=torch.float32).state_dict()
    second = Trainer(replace(SMALL, seed=1, init=str(tmp_path / "first")))
    assert all(torch.equal(second.model.state_dict()[k], v) for k, v in exported.items())
    assert all(torch.equal(second.ema.state_dict()[k], v) for k, v in exported.items())
    assert not torch.equal(second.batch(1)[0].latents, first.batch(1)[0].latents)
    second.step()
    second.export(tmp_path / "second")
    record = json.loads((tmp_path / "second" / "train.json").read_text())
    assert record["continued_from"]["samples_seen"] == first.samples
    assert record["total_samples_seen"] == first.samples + second.samples and "--init" in record["command"]
    with pytest.raises(Exception, match="config.json|dit"):
        Trainer(replace(SMALL, init=str(tmp_path / "nowhere")))
