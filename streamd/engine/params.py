"""Stream parameters and their bounds, as data: the one home of those rules (torch-free).

`PARAMS` lists every runtime parameter of a stream with its type, bounds and whether null (the model's default)
is allowed. `StreamParams` validates itself from it; the control handlers (HTTP and MQTT) derive their checks
from it; a test holds protocols/schemas/ equal to it. Adding a parameter is one entry here (plus its use).

`EngineConfig` is the engine-wide configuration, the `[engine]` section of the daemon's config file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from .window import Chaining, Policy

# The sampling schedules the engine knows (streamd.sampling.SCHEDULE_NAMES holds the tables; a test keeps the two
# equal, so that this module can stay torch-free).
SCHEDULES: tuple[str, ...] = ("base", "enhance_hf", "distilled", "refine")
MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class ParamSpec:
    """What one parameter accepts.

    kind: "text" (a string of at most `hi` characters), "number", "integer" (in lo..hi), or "choice" (one of
    `choices`). `nullable`: null (None) restores the model's default. `verb`: the control verb that sets it.
    """

    name: str
    kind: str
    description: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    verb: str = "params"

    def problem(self, value: object) -> str | None:
        """Why `value` is not acceptable, or None when it is."""
        if value is None and self.nullable:
            return None
        null = " or null" if self.nullable else ""
        if self.kind == "text":
            if isinstance(value, str) and len(value) <= int(self.hi or 0):
                return None
            return f"must be a string of at most {int(self.hi or 0)} characters"
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return None
            return f"must be one of {', '.join(self.choices)}{null}"
        assert self.lo is not None and self.hi is not None
        if self.kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi:
                return None
            return f"must be an integer in {int(self.lo)}..{int(self.hi)}{null}"
        if (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and self.lo <= value <= self.hi):
            return None
        return f"must be a number in {self.lo:g}..{self.hi:g}{null}"


PARAMS: Mapping[str, ParamSpec] = MappingProxyType({p.name: p for p in (
    ParamSpec("prompt", "text", "The prompt.", hi=MAX_PROMPT_CHARS, verb="prompt"),
    ParamSpec("negative_prompt", "text", "The negative prompt (guidance > 1).", hi=MAX_PROMPT_CHARS, verb="prompt"),
    ParamSpec("guidance", "number", "Classifier-free guidance scale.", 0, 50, nullable=True),
    ParamSpec("steps", "integer", "Denoising steps per chunk.", 1, 1000, nullable=True),
    ParamSpec("schedule", "choice", "Sampling schedule.", choices=SCHEDULES, nullable=True),
    ParamSpec("seed", "integer", "Noise seed; null draws a fresh seed per chunk.", 0, 2**63 - 1, nullable=True),
    ParamSpec("policy", "choice", "Conditioning source policy.", choices=tuple(p.value for p in Policy)),
    ParamSpec("chaining", "choice", "How own output conditions the next chunk.",
              choices=tuple(c.value for c in Chaining)),
    ParamSpec("cond_noise", "number", "Std of noise added to conditioning latents.", 0, 1),
)})
PARAM_NAMES: tuple[str, ...] = tuple(name for name, spec in PARAMS.items() if spec.verb == "params")
PROMPT_NAMES: tuple[str, ...] = tuple(name for name, spec in PARAMS.items() if spec.verb == "prompt")


@dataclass(frozen=True)
class StreamParams:
    """Runtime parameters of a stream; None means the model's default. Validated on construction from PARAMS."""

    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None
    steps: int | None = None
    schedule: str | None = None
    seed: int | None = None
    policy: Policy = Policy.AUTO
    chaining: Chaining = Chaining.PIXEL
    cond_noise: float = 0.0  # std of noise added to conditioning latents (LongCat's anti-drift trick)

    def __post_init__(self) -> None:
        for name, spec in PARAMS.items():
            value = getattr(self, name)
            reason = spec.problem(value.value if isinstance(value, Enum) else value)
            if reason is not None:
                raise ValueError(f"{name} {reason}, got {value!r}")
        object.__setattr__(self, "policy", Policy(self.policy))
        object.__setattr__(self, "chaining", Chaining(self.chaining))

    def updated(self, **changes: Any) -> StreamParams:
        """A copy with `changes` applied (validated); unknown names are an error."""
        unknown = set(changes) - set(PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        """The parameters as JSON values (enums as their names)."""
        return {name: (v.value if isinstance(v := getattr(self, name), Enum) else v) for name in PARAMS}


@dataclass(frozen=True)
class EngineConfig:
    """Engine-wide settings (the `[engine]` section of the config file; STREAMD_ENGINE_* variables)."""

    cond_latents: int = 4  # conditioning window: 4 latents = 13 frames
    chunk_latents: int = 4  # generated per chunk: 4 latents = 16 frames
    fps: float = 15.0  # model frame rate: output timestamps advance by 1/fps
    min_fresh: int | None = None  # live frames needed since the last chunk for live conditioning (None: window)
    memory_budget_bytes: int | None = None  # stream memory; None: derived from the device
    max_streams: int = 4  # streams admitted at most
    use_kv_cache: bool = True  # False runs the uncached block-causal path (for comparison)
    # Live pacing: a stream's output may run at most `max_lead_s` ahead of real time (measured from its first
    # chunk). Without it a fast engine would continue a live stream many times faster than it is watched.
    realtime: bool = True
    max_lead_s: float = 1.0
    # Streams later than this behind their deadline all count as equally late, so one stream that can never
    # keep up (say 1000 steps a chunk) shares steps with the others instead of taking every step.
    lateness_cap_s: float = 0.5
    output_queue: int = 8  # generated chunks waiting for the publisher; oldest dropped beyond
    stall_timeout_s: float = 120.0  # one denoising step running longer than this is a stall (readyz 503)
    step_delay_s: float = 0.0  # added to every denoising step: rehearses a slow model (tests, capacity planning)
    prompt: str = ""  # initial prompt of every new stream
    steps: int | None = None  # initial steps of every new stream (None: the model's)
    guidance: float | None = None  # initial guidance of every new stream (None: the model's)
    # Context parallelism: one stream's denoising over this many ranks (one GPU each; it must divide the model's
    # heads). A collective (or a worker waiting for rank 0) taking longer than `collective_timeout_s` is a lost
    # rank: the daemon logs it and exits non-zero.
    context_parallel: int = 1
    collective_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.cond_latents <= 16 or not 1 <= self.chunk_latents <= 64:
            raise ValueError("engine.cond_latents must be in 1..16 and engine.chunk_latents in 1..64")
        if self.fps <= 0:
            raise ValueError("engine.fps must be positive")
        if not 1 <= self.max_streams <= 64:
            raise ValueError("engine.max_streams must be in 1..64")
        if self.max_lead_s < 0 or self.lateness_cap_s < 0 or self.step_delay_s < 0:
            raise ValueError("engine.max_lead_s, lateness_cap_s and step_delay_s must not be negative")
        if self.output_queue < 1:
            raise ValueError("engine.output_queue must be at least 1")
        if self.stall_timeout_s <= 0:
            raise ValueError("engine.stall_timeout_s must be positive")
        if not 1 <= self.context_parallel <= 64:
            raise ValueError("engine.context_parallel must be in 1..64")
        if self.collective_timeout_s <= 0:
            raise ValueError("engine.collective_timeout_s must be positive")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < 1:
            raise ValueError("engine.memory_budget_bytes must be positive")
        self.initial_params()  # the initial stream parameters must be valid too

    def initial_params(self) -> StreamParams:
        """The parameters a new stream starts with."""
        return StreamParams(prompt=self.prompt, steps=self.steps, guidance=self.guidance)
