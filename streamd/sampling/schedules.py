"""LongCat-Video's flow-matching schedules as tables of sigmas (noise levels) that end at 0.

The model is fed t = 1000 * sigma. Four schedules are known:

- ``base``: sigmas linspace(1, 0.001, N) in float32 (as torch.linspace makes them), time-shifted.
- ``enhance_hf``: the shifted ``base`` steps above t = 500, then a uniform tail t = 500, 450, ..., 50. With 50 base
  steps and shift 12 that is 46 + 10 = 56 steps.
- ``distilled``: the 16-step table the distilled LoRA was trained on, time-shifted; fewer steps pick evenly spaced
  entries of it.
- ``refine``: a fixed five-step table, t = 500, 443, 344, 208, 12, without shift (the refiner starts half noised).

The shift s -> shift*s / (1 + (shift-1)*s) comes from a checkpoint's ``scheduler/scheduler_config.json``
(12 when absent), see `read_shift`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_SHIFT = 12.0
SCHEDULE_NAMES: tuple[str, ...] = ("base", "enhance_hf", "distilled", "refine")
DISTILLED_SIGMAS: tuple[float, ...] = (
    1.0, 0.94, 0.88, 0.82, 0.76, 0.70, 0.64, 0.58, 0.50, 0.44, 0.38, 0.32, 0.26, 0.20, 0.14, 0.08,
)
REFINE_TIMESTEPS: tuple[float, ...] = (500.0, 443.0, 344.0, 208.0, 12.0)
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"

# the guidance scale each schedule was tuned for; 1.0 means the uncond branch is skipped entirely
_DEFAULT_GUIDANCE: dict[str, float] = {"base": 4.0, "enhance_hf": 4.0, "distilled": 1.0, "refine": 1.0}
_BASE_START, _BASE_END = 1.0, 0.001
_HF_TAIL_START = 500.0
_HF_TAIL_STEPS = 10
_TRAIN_TIMESTEPS = 1000.0


@dataclass(frozen=True)
class Schedule:
    """A sampling schedule: `sigmas` holds one noise level per step plus the final 0.0, strictly decreasing."""

    name: str
    sigmas: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.sigmas) < 2 or self.sigmas[-1] != 0.0:
            raise ValueError(f"schedule {self.name!r}: sigmas need at least one step and must end at 0.0")
        if any(a <= b for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ValueError(f"schedule {self.name!r}: sigmas must decrease strictly, got {self.sigmas}")

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Model timesteps t = 1000 * sigma, one per step (the final 0 is not a step)."""
        return tuple(_TRAIN_TIMESTEPS * s for s in self.sigmas[:-1])

    @property
    def steps(self) -> int:
        """Number of denoising steps (model calls per branch)."""
        return len(self.sigmas) - 1


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift s -> shift*s / (1 + (shift-1)*s), elementwise (float64)."""
    s = np.asarray(sigmas, dtype=np.float64)
    return shift * s / (1.0 + (shift - 1.0) * s)


def read_shift(path: Path | str | None) -> float:
    """The `shift` of a scheduler config; DEFAULT_SHIFT when there is no such file or it has no `shift` key.

    `path` is either the JSON file itself or a checkpoint directory holding ``scheduler/scheduler_config.json``.
    A file that exists but is not a JSON object, or whose shift is not a finite positive number, is a ValueError:
    silently falling back to 12 there would sample a different schedule than the checkpoint was made for.
    """
    if path is None:
        return DEFAULT_SHIFT
    path = Path(path)
    if path.is_dir():
        path = path / SCHEDULER_CONFIG
    if not path.is_file():
        return DEFAULT_SHIFT
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    shift = raw.get("shift", DEFAULT_SHIFT)
    # bool is an int subclass, and json accepts NaN/Infinity: neither is a usable shift
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"{path}: shift must be a finite positive number, got {shift!r}")
    return float(shift)


def default_guidance(name: str) -> float:
    """The guidance scale a schedule is meant for: base/enhance_hf 4.0, distilled/refine 1.0 (no guidance)."""
    _check_name(name)
    return _DEFAULT_GUIDANCE[name]


def _check_name(name: str) -> None:
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {name!r} (known: {', '.join(SCHEDULE_NAMES)})")


def _base_sigmas(steps: int, shift: float) -> np.ndarray:
    # torch.linspace rather than numpy's: torch builds float32 values from both ends, numpy rounds a float64
    # ramp, and the two differ in the last bit; the reference schedule is torch's
    base = torch.linspace(_BASE_START, _BASE_END, steps, dtype=torch.float32).numpy()
    return shift_sigmas(base, shift)


def _enhance_hf_sigmas(steps: int, shift: float) -> np.ndarray:
    timesteps = _TRAIN_TIMESTEPS * _base_sigmas(steps, shift)
    tail = np.linspace(_HF_TAIL_START, 0.0, _HF_TAIL_STEPS, endpoint=False)  # 500, 450, ..., 50
    return np.concatenate([timesteps[timesteps > _HF_TAIL_START], tail]) / _TRAIN_TIMESTEPS


def _distilled_sigmas(steps: int, shift: float) -> np.ndarray:
    table = len(DISTILLED_SIGMAS)
    if steps > table:
        raise ValueError(f"the distilled schedule has at most {table} steps, got {steps}")
    picks = np.floor(np.linspace(0, table, steps, endpoint=False)).astype(np.int64)
    return shift_sigmas(np.asarray(DISTILLED_SIGMAS)[picks], shift)


def _refine_sigmas(steps: int) -> np.ndarray:
    if steps != len(REFINE_TIMESTEPS):
        raise ValueError(f"the refine schedule has exactly {len(REFINE_TIMESTEPS)} steps, got {steps}")
    return np.asarray(REFINE_TIMESTEPS, dtype=np.float64) / _TRAIN_TIMESTEPS


def make_schedule(name: str, steps: int, shift: float = DEFAULT_SHIFT) -> Schedule:
    """Build the schedule `name` for `steps` steps with time shift `shift`.

    `steps` counts base steps: enhance_hf returns more (its kept high-noise steps plus a 10-step tail), distilled
    takes 1..16, refine takes exactly 5 and ignores `shift`.
    """
    _check_name(name)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite positive number, got {shift!r}")
    if name == "base":
        sigmas = _base_sigmas(steps, shift)
    elif name == "enhance_hf":
        sigmas = _enhance_hf_sigmas(steps, shift)
    elif name == "distilled":
        sigmas = _distilled_sigmas(steps, shift)
    else:
        sigmas = _refine_sigmas(steps)
    return Schedule(name, tuple(float(s) for s in sigmas) + (0.0,))
