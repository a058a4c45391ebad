"""LongCat-Video's flow-matching schedules as tables of sigmas (noise levels), ending at 0.

The model is fed t = 1000 * sigma. `base` and `distilled` are shifted, s -> shift*s / (1 + (shift-1)*s), with the
shift read from a checkpoint's scheduler config (12 when absent); `enhance_hf` keeps the shifted base steps above
t = 500 and finishes with a uniform tail 500, 450, ..., 50; `refine` is a fixed five-step table without shift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SHIFT = 12.0
SCHEDULE_NAMES = ("base", "enhance_hf", "distilled", "refine")
DISTILLED_SIGMAS = (1.0, 0.94, 0.88, 0.82, 0.76, 0.70, 0.64, 0.58, 0.50, 0.44, 0.38, 0.32, 0.26, 0.20, 0.14, 0.08)
REFINE_TIMESTEPS = (500.0, 443.0, 344.0, 208.0, 12.0)
_GUIDANCE = {"base": 4.0, "enhance_hf": 4.0, "distilled": 1.0, "refine": 1.0}
_HF_TAIL_START = 500.0
_HF_TAIL_STEPS = 10


@dataclass(frozen=True)
class Schedule:
    """A sampling schedule: `sigmas` has one entry per step plus the final 0."""

    name: str
    sigmas: tuple[float, ...]

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Model timesteps t = 1000 * sigma, one per step."""
        return tuple(1000.0 * s for s in self.sigmas[:-1])

    @property
    def steps(self) -> int:
        """Number of denoising steps."""
        return len(self.sigmas) - 1


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift s -> shift*s / (1 + (shift-1)*s)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def read_shift(path: Path | str | None) -> float:
    """The `shift` of a scheduler_config.json; DEFAULT_SHIFT when the file or key is absent."""
    if path is None or not Path(path).is_file():
        return DEFAULT_SHIFT
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    shift = raw.get("shift", DEFAULT_SHIFT)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
        raise ValueError(f"{path}: shift must be a positive number, got {shift!r}")
    return float(shift)


def default_guidance(name: str) -> float:
    """The guidance scale a schedule is meant for (distilled and refine: 1, i.e. no guidance)."""
    _check_name(name)
    return _GUIDANCE[name]


def _check_name(name: str) -> None:
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {name!r} (known: {', '.join(SCHEDULE_NAMES)})")


def _base(steps: int, shift: float) -> np.ndarray:
    base = np.linspace(1.0, 0.001, steps, dtype=np.float32)  # float32, like the reference's torch.linspace
    return shift_sigmas(base.astype(np.float64), shift)


def make_schedule(name: str, steps: int, shift: float = DEFAULT_SHIFT) -> Schedule:
    """Build a schedule by name; `steps` counts base steps (enhance_hf adds its tail; refine takes 5 only)."""
    _check_name(name)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if name == "base":
        sigmas = _base(steps, shift)
    elif name == "enhance_hf":
        timesteps = 1000.0 * _base(steps, shift)
        tail = np.linspace(_HF_TAIL_START, 0.0, _HF_TAIL_STEPS, endpoint=False)
        sigmas = np.concatenate([timesteps[timesteps > _HF_TAIL_START], tail]) / 1000.0
    elif name == "distilled":
        if steps > len(DISTILLED_SIGMAS):
            raise ValueError(f"the distilled schedule has at most {len(DISTILLED_SIGMAS)} steps, got {steps}")
        picks = np.floor(np.linspace(0, len(DISTILLED_SIGMAS), steps, endpoint=False)).astype(int)
        sigmas = shift_sigmas(np.asarray(DISTILLED_SIGMAS)[picks], shift)
    else:
        if steps != len(REFINE_TIMESTEPS):
            raise ValueError(f"the refine schedule has exactly {len(REFINE_TIMESTEPS)} steps, got {steps}")
        sigmas = np.asarray(REFINE_TIMESTEPS) / 1000.0
    return Schedule(name, tuple(float(s) for s in sigmas) + (0.0,))
