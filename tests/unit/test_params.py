"""Stream parameters as data: PARAMS is the one home of their bounds, and the schemas and sampling agree with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.engine.params import PARAM_NAMES, PARAMS, PROMPT_NAMES, SCHEDULES, EngineConfig, StreamParams

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "protocols" / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))


def _expected_property(name: str) -> dict:
    """What a schema property must say for PARAMS[name]."""
    spec = PARAMS[name]
    if spec.kind == "choice":
        return {"enum": [*spec.choices, *([None] if spec.nullable else [])]}
    if spec.kind == "text":
        return {"type": "string", "maxLength": spec.hi}
    kind = "integer" if spec.kind == "integer" else "number"
    return {"type": [kind, "null"] if spec.nullable else kind, "minimum": spec.lo, "maximum": spec.hi}


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_params_schema_holds_the_bounds(name: str) -> None:
    prop = dict(_schema("mqtt-command-params")["properties"][name])
    prop.pop("description")
    assert prop == _expected_property(name)


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_prompt_schema_holds_the_bounds(name: str) -> None:
    prop = dict(_schema("mqtt-command-prompt")["properties"][name])
    prop.pop("description")
    assert prop == _expected_property(name)


def test_every_param_is_in_the_reply_schema() -> None:
    params = _schema("mqtt-reply")["$defs"]["params"]
    assert params["required"] == [*PARAMS, "applies_at_chunk"]


def test_schedules_agree_with_sampling() -> None:
    from streamd.sampling import SCHEDULE_NAMES

    assert tuple(SCHEDULE_NAMES) == SCHEDULES


def test_params_and_scheduler_import_no_torch() -> None:
    code = ("import sys, streamd.engine.params, streamd.engine.scheduler, streamd.engine.memory, streamd.control; "
            "bad = [m for m in ('torch', 'aiohttp', 'zmq', 'aiortc', 'av') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, r"steps must be an integer in 1\.\.1000"),
    ({"steps": 4.0}, r"steps must be an integer"),
    ({"guidance": float("nan")}, r"guidance must be a number in 0\.\.50"),
    ({"schedule": "warp"}, r"schedule must be one of base, enhance_hf, distilled, refine or null"),
    ({"policy": "sometimes"}, r"policy must be one of auto, live, self"),
    ({"prompt": "x" * 4001}, r"prompt must be a string of at most 4000 characters"),
    ({"seed": 2**63}, r"seed must be an integer"),
])
def test_stream_params_refuse_with_the_table_reason(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StreamParams(**changes)


def test_updated_validates_and_refuses_unknown_names() -> None:
    p = StreamParams().updated(steps=3, policy="self")
    assert p.steps == 3 and p.policy.value == "self" and p.as_json()["policy"] == "self"
    with pytest.raises(ValueError, match="unknown parameter"):
        p.updated(stepz=3)


def test_engine_config_checks_its_initial_params() -> None:
    with pytest.raises(ValueError, match="steps"):
        EngineConfig(steps=0)
    assert EngineConfig(prompt="a fox", steps=2).initial_params() == StreamParams(prompt="a fox", steps=2)
