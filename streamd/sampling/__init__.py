"""Sampling for LongCat-Video: schedules (sigma tables) and stateless steps (Euler, CFG-zero guidance)."""

from .schedules import (
    DEFAULT_SHIFT,
    DISTILLED_SIGMAS,
    REFINE_TIMESTEPS,
    SCHEDULE_NAMES,
    SCHEDULER_CONFIG,
    Schedule,
    default_guidance,
    make_schedule,
    read_shift,
    shift_sigmas,
)
from .steps import cfg_zero, euler_step, guided_velocity

__all__ = [
    "DEFAULT_SHIFT",
    "DISTILLED_SIGMAS",
    "REFINE_TIMESTEPS",
    "SCHEDULER_CONFIG",
    "SCHEDULE_NAMES",
    "Schedule",
    "cfg_zero",
    "default_guidance",
    "euler_step",
    "guided_velocity",
    "make_schedule",
    "read_shift",
    "shift_sigmas",
]
