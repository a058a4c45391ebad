"""streamd.control: command parsing, validation, execution and replies against an in-memory controller, and
their agreement with protocols/mqtt-control.md and its JSON Schemas."""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from jsonschema import Draft202012Validator

from streamd.control import (
    ERROR_CODES,
    MAX_ID_CHARS,
    MAX_PAYLOAD_BYTES,
    PARAM_NAMES,
    RESET_ID_CAPACITY,
    VERBS,
    CommandError,
    ReplyCache,
    handle_command,
    parse_payload,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "protocols" / "schemas"
SPEC = REPO / "protocols" / "mqtt-control.md"
T = TypeVar("T")

DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "guidance": None, "steps": None, "schedule": None, "seed": None,
    "policy": "auto", "chaining": "pixel", "cond_noise": 0.0,
}
SCHEDULES = ("base", "enhance_hf", "distilled", "refine")
APPLIES = {"applies_at_chunk": 0}  # what the fake controller says of when a change applies (its streams never run)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


REPLY = validator("mqtt-reply")


class FakeController:
    """An in-memory daemon: streams with StreamParams-like dicts and generations; records every change."""

    def __init__(self, *stream_ids: str) -> None:
        self.params: dict[str, dict[str, Any]] = {sid: dict(DEFAULTS) for sid in stream_ids}
        self.generation: dict[str, int] = {sid: 0 for sid in stream_ids}
        self.changes: list[tuple[str, str]] = []  # (method, stream) of every call that changed something

    def stream_ids(self) -> list[str]:
        return list(self.params)

    async def set_params(self, stream_ids: list[str], changes: dict[str, Any], skip_missing: bool) -> dict[str, Any]:
        await asyncio.sleep(0)  # let other tasks interleave, as on the daemon's event loop
        if not skip_missing:
            for sid in stream_ids:
                self.params[sid]  # KeyError for an unknown stream, as the protocol says
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        if changes.get("schedule") not in (None, *SCHEDULES):
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {changes['schedule']!r}")
        out = {}
        for sid in stream_ids:  # one update for all of them: nothing changes unless every check passed
            if sid not in self.params:
                continue
            self.params[sid].update(changes)
            self.changes.append(("set_params", sid))
            out[sid] = {**self.params[sid], **APPLIES}
        return out

    async def reset(self, stream_id: str) -> int:
        await asyncio.sleep(0)
        self.generation[stream_id] += 1
        self.changes.append(("reset", stream_id))
        return self.generation[stream_id]

    async def stop_stream(self, stream_id: str) -> None:
        await asyncio.sleep(0)
        del self.params[stream_id]
        del self.generation[stream_id]
        self.changes.append(("stop_stream", stream_id))

    def status(self) -> dict[str, Any]:
        return {"state": "online", "streams": sorted(self.params), "model": "fake", "version": "0.0.0"}

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        return copy.deepcopy(self.params), dict(self.generation)


def call(ctl: Any, verb: str, payload: Any, replies: ReplyCache | None = None) -> dict[str, Any]:
    """Run one command and check the reply against the schema, whatever it says."""
    reply = run(handle_command(ctl, verb, payload, replies=replies))
    REPLY.validate(reply)
    json.dumps(reply, allow_nan=False)  # a reply is always publishable
    return reply


def cmd(**members: Any) -> bytes:
    return json.dumps(members).encode()


# ------------------------------------------------------------------------------------------ verbs that work
def test_prompt_sets_prompt_and_keeps_negative_when_absent() -> None:
    ctl = FakeController("cam1", "cam2")
    ctl.params["cam1"]["negative_prompt"] = "blur"
    reply = call(ctl, "prompt", cmd(stream="cam1", prompt="a forest at dusk", id="p1"))
    assert reply == {"v": 1, "ok": True, "verb": "prompt", "id": "p1",
                     "streams": {"cam1": {**DEFAULTS, "prompt": "a forest at dusk", "negative_prompt": "blur",
                                          **APPLIES}}}
    assert ctl.params["cam2"] == DEFAULTS
    reply = call(ctl, "prompt", cmd(stream="cam1", prompt="", negative_prompt="rain"))
    assert reply["ok"] and "id" not in reply
    assert ctl.params["cam1"]["prompt"] == "" and ctl.params["cam1"]["negative_prompt"] == "rain"


@pytest.mark.parametrize(
    "changes",
    [
        {"guidance": 4.5}, {"guidance": 0}, {"guidance": 50}, {"guidance": None},
        {"steps": 1}, {"steps": 1000}, {"steps": None},
        *({"schedule": name} for name in SCHEDULES), {"schedule": None},
        {"seed": 0}, {"seed": 2**63 - 1}, {"seed": None},
        {"policy": "auto"}, {"policy": "live"}, {"policy": "self"},
        {"chaining": "pixel"}, {"chaining": "latent"},
        {"cond_noise": 0}, {"cond_noise": 0.25}, {"cond_noise": 1.0},
        {"guidance": 3, "steps": 8, "schedule": "distilled", "seed": 7, "policy": "self", "chaining": "latent",
         "cond_noise": 0.1},
    ],
)
def test_params_accepts_every_parameter(changes: dict[str, Any]) -> None:
    ctl = FakeController("cam1")
    reply = call(ctl, "params", cmd(stream="cam1", **changes))
    assert reply["ok"], reply
    assert reply["streams"] == {"cam1": {**DEFAULTS, **changes, **APPLIES}}
    assert ctl.params["cam1"] == {**DEFAULTS, **changes}


def test_reset_returns_new_generation() -> None:
    ctl = FakeController("cam1", "cam2")
    assert call(ctl, "reset", cmd(stream="cam2"))["streams"] == {"cam2": {"generation": 1}}
    assert call(ctl, "reset", cmd(stream="cam2"))["streams"] == {"cam2": {"generation": 2}}
    assert ctl.generation == {"cam1": 0, "cam2": 2}


def test_stop_stream_removes_stream() -> None:
    ctl = FakeController("cam1", "cam2")
    reply = call(ctl, "stop-stream", cmd(stream="cam1", id="s1"))
    assert reply == {"v": 1, "ok": True, "verb": "stop-stream", "id": "s1", "streams": {"cam1": {"stopped": True}}}
    assert ctl.stream_ids() == ["cam2"]
    # stopping again: the stream is gone, which a retrying controller reads as "already stopped"
    assert call(ctl, "stop-stream", cmd(stream="cam1"))["error"] == "unknown-stream"


@pytest.mark.parametrize(
    "verb, members, result",
    [
        ("prompt", {"prompt": "x"}, lambda s: {**DEFAULTS, "prompt": "x", **APPLIES}),
        ("params", {"steps": 3}, lambda s: {**DEFAULTS, "steps": 3, **APPLIES}),
        ("reset", {}, lambda s: {"generation": 1}),
        ("stop-stream", {}, lambda s: {"stopped": True}),
    ],
)
def test_star_applies_to_every_stream(verb: str, members: dict[str, Any], result: Callable[[str], Any]) -> None:
    ctl = FakeController("a", "b", "c")
    reply = call(ctl, verb, cmd(stream="*", **members))
    assert reply["ok"] and reply["streams"] == {sid: result(sid) for sid in ("a", "b", "c")}
    assert sorted(s for _, s in ctl.changes) == ["a", "b", "c"]


@pytest.mark.parametrize("verb, members", [("prompt", {"prompt": "x"}), ("params", {"seed": 1}), ("reset", {}),
                                           ("stop-stream", {})])
def test_star_without_streams_is_ok_and_empty(verb: str, members: dict[str, Any]) -> None:
    reply = call(FakeController(), verb, cmd(stream="*", **members))
    assert reply == {"v": 1, "ok": True, "verb": verb, "streams": {}}


def test_payload_may_be_str_or_mapping_and_unknown_members_are_ignored() -> None:
    ctl = FakeController("cam1")
    assert call(ctl, "prompt", '{"stream":"cam1","prompt":"s","future":1}')["ok"]
    assert call(ctl, "reset", {"stream": "cam1", "future": {"x": [1]}})["ok"]
    assert call(ctl, "stop-stream", bytearray(b'{"stream":"cam1","v":1,"note":"bye"}'))["ok"]
    assert ctl.changes == [("set_params", "cam1"), ("reset", "cam1"), ("stop_stream", "cam1")]


# ------------------------------------------------------------------------------------------ refusals
OVERSIZE = b'{"stream":"cam1","prompt":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'

REFUSALS: list[tuple[str, str, Any, str]] = [
    # (case, verb, payload, error code)
    ("malformed json", "prompt", b'{"stream":"cam1",', "bad-json"),
    ("empty payload", "reset", b"", "bad-json"),
    ("not utf-8", "prompt", b'{"stream":"cam1","prompt":"\xff"}', "bad-json"),
    ("utf-16", "reset", '{"stream":"cam1"}'.encode("utf-16"), "bad-json"),
    ("NaN", "params", b'{"stream":"cam1","guidance":NaN}', "bad-json"),
    ("Infinity", "params", b'{"stream":"cam1","guidance":Infinity}', "bad-json"),
    ("duplicate member", "prompt", b'{"stream":"cam1","prompt":"a","prompt":"b"}', "bad-json"),
    ("deep nesting", "reset", b"[" * 100000 + b"]" * 100000, "payload-too-large"),
    ("deep nesting under limit", "reset", b'{"stream":"cam1","x":' + b"[" * 30000 + b"]" * 30000 + b"}", "bad-json"),
    ("array", "reset", b'["cam1"]', "bad-payload"),
    ("string", "reset", b'"cam1"', "bad-payload"),
    ("number", "reset", b"1", "bad-payload"),
    ("null", "reset", b"null", "bad-payload"),
    ("oversize bytes", "prompt", OVERSIZE, "payload-too-large"),
    ("oversize str", "prompt", OVERSIZE.decode(), "payload-too-large"),
    ("oversize str of wide characters", "prompt", '{"stream":"cam1","prompt":"' + "é" * 40000 + '"}',
     "payload-too-large"),
    ("unknown verb", "explode", cmd(stream="cam1"), "unknown-verb"),
    ("verb case", "Reset", cmd(stream="cam1"), "unknown-verb"),
    ("empty verb", "", cmd(stream="cam1"), "unknown-verb"),
    ("missing stream", "reset", cmd(id="x"), "bad-payload"),
    ("stream null", "reset", cmd(stream=None), "bad-payload"),
    ("stream number", "reset", cmd(stream=1), "bad-payload"),
    ("stream empty", "reset", cmd(stream=""), "bad-payload"),
    ("stream bad characters", "reset", cmd(stream="cam/1"), "bad-payload"),
    ("stream trailing newline", "reset", cmd(stream="cam1\n"), "bad-payload"),
    ("stream too long", "reset", cmd(stream="a" * 65), "bad-payload"),
    ("stream wildcard-ish", "reset", cmd(stream="**"), "bad-payload"),
    ("stream list", "reset", cmd(stream=["cam1"]), "bad-payload"),
    ("unknown stream", "reset", cmd(stream="cam9"), "unknown-stream"),
    ("unknown stream prompt", "prompt", cmd(stream="cam9", prompt="x"), "unknown-stream"),
    ("unknown stream params", "params", cmd(stream="cam9", steps=2), "unknown-stream"),
    ("unknown stream stop", "stop-stream", cmd(stream="cam9"), "unknown-stream"),
    ("id number", "reset", cmd(stream="cam1", id=5), "bad-payload"),
    ("id empty", "reset", cmd(stream="cam1", id=""), "bad-payload"),
    ("id too long", "reset", cmd(stream="cam1", id="i" * (MAX_ID_CHARS + 1)), "bad-payload"),
    ("v string", "reset", cmd(stream="cam1", v="1"), "bad-payload"),
    ("v 2", "reset", cmd(stream="cam1", v=2), "unsupported-version"),
    ("v 1.0", "reset", cmd(stream="cam1", v=1.0), "bad-payload"),
    ("missing prompt", "prompt", cmd(stream="cam1", negative_prompt="x"), "bad-payload"),
    ("prompt number", "prompt", cmd(stream="cam1", prompt=3), "bad-value"),
    ("prompt null", "prompt", cmd(stream="cam1", prompt=None), "bad-value"),
    ("prompt too long", "prompt", cmd(stream="cam1", prompt="x" * 4001), "bad-value"),
    ("negative prompt number", "prompt", cmd(stream="cam1", prompt="x", negative_prompt=1), "bad-value"),
    ("empty params", "params", cmd(stream="cam1"), "bad-payload"),
    ("params with only envelope", "params", cmd(stream="cam1", id="q", v=1), "bad-payload"),
    ("unknown params field", "params", cmd(stream="cam1", steps=4, guidence=3), "unknown-parameter"),
    ("prompt in params", "params", cmd(stream="cam1", prompt="x"), "unknown-parameter"),
    ("unknown params field alone", "params", cmd(stream="cam1", frobnicate=True), "unknown-parameter"),
    ("guidance too big", "params", cmd(stream="cam1", guidance=50.01), "bad-value"),
    ("guidance negative", "params", cmd(stream="cam1", guidance=-1), "bad-value"),
    ("guidance string", "params", cmd(stream="cam1", guidance="4"), "bad-value"),
    ("guidance bool", "params", cmd(stream="cam1", guidance=True), "bad-value"),
    ("steps zero", "params", cmd(stream="cam1", steps=0), "bad-value"),
    ("steps too many", "params", cmd(stream="cam1", steps=1001), "bad-value"),
    ("steps float", "params", cmd(stream="cam1", steps=4.0), "bad-value"),
    ("steps bool", "params", cmd(stream="cam1", steps=True), "bad-value"),
    ("schedule unknown (controller refuses)", "params", cmd(stream="cam1", schedule="warp"), "bad-value"),
    ("schedule empty", "params", cmd(stream="cam1", schedule=""), "bad-value"),
    ("schedule number", "params", cmd(stream="cam1", schedule=1), "bad-value"),
    ("seed negative", "params", cmd(stream="cam1", seed=-1), "bad-value"),
    ("seed too big", "params", cmd(stream="cam1", seed=2**63), "bad-value"),
    ("seed float", "params", cmd(stream="cam1", seed=1.5), "bad-value"),
    ("policy unknown", "params", cmd(stream="cam1", policy="sometimes"), "bad-value"),
    ("policy null", "params", cmd(stream="cam1", policy=None), "bad-value"),
    ("policy case", "params", cmd(stream="cam1", policy="AUTO"), "bad-value"),
    ("chaining unknown", "params", cmd(stream="cam1", chaining="both"), "bad-value"),
    ("cond_noise too big", "params", cmd(stream="cam1", cond_noise=1.5), "bad-value"),
    ("cond_noise null", "params", cmd(stream="cam1", cond_noise=None), "bad-value"),
    ("one bad among good", "params", cmd(stream="cam1", steps=4, guidance=3, cond_noise=-0.1), "bad-value"),
]


@pytest.mark.parametrize("case, verb, payload, code", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_reply_with_code_and_change_nothing(case: str, verb: str, payload: Any, code: str) -> None:
    ctl = FakeController("cam1", "cam2")
    before = ctl.snapshot()
    reply = call(ctl, verb, payload)
    assert reply["ok"] is False and reply["error"] == code, reply
    assert reply["error"] in ERROR_CODES
    assert reply["verb"] == verb and reply["detail"] and len(reply["detail"]) <= 512
    assert "streams" not in reply
    assert ctl.snapshot() == before and ctl.changes == []


@pytest.mark.parametrize("verb, payload, code", [
    ("params", cmd(stream="*", steps=4, policy="never"), "bad-value"),
    ("params", cmd(stream="*", schedule="warp"), "bad-value"),  # refused by the controller, at the first stream
    ("params", cmd(stream="*", steps=4, guidence=1), "unknown-parameter"),
    ("prompt", cmd(stream="*", prompt=["x"]), "bad-value"),
    ("reset", cmd(stream="*", v=7), "unsupported-version"),
])
def test_star_changes_nothing_when_refused(verb: str, payload: bytes, code: str) -> None:
    ctl = FakeController("a", "b", "c")
    before = ctl.snapshot()
    assert call(ctl, verb, payload)["error"] == code
    assert ctl.snapshot() == before and ctl.changes == []


def test_error_replies_echo_a_valid_id() -> None:
    ctl = FakeController("cam1")
    assert call(ctl, "params", cmd(stream="cam1", id="e1", steps=0))["id"] == "e1"
    assert call(ctl, "nope", cmd(stream="cam1", id="e2"))["id"] == "e2"
    assert call(ctl, "reset", cmd(stream="zzz", id="e3"))["id"] == "e3"
    assert "id" not in call(ctl, "reset", cmd(stream="cam1", id=7))  # an invalid id is not echoed
    assert "id" not in call(ctl, "reset", b"{")  # nor one that could not be parsed


def test_long_unknown_verb_is_cut_in_the_reply() -> None:
    reply = call(FakeController("cam1"), "v" * 1000, cmd(stream="cam1"))
    assert reply["error"] == "unknown-verb" and reply["verb"] == "v" * 64 and len(reply["detail"]) <= 512


def test_payload_at_the_limit_is_read() -> None:
    head = b'{"stream":"cam1","prompt":"x","pad":"'
    payload = head + b"p" * (MAX_PAYLOAD_BYTES - len(head) - 2) + b'"}'
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert call(FakeController("cam1"), "prompt", payload)["ok"]
    with pytest.raises(CommandError) as info:
        parse_payload(payload + b" ")
    assert info.value.code == "payload-too-large"


def test_internal_errors_become_internal_replies() -> None:
    class Broken(FakeController):
        async def reset(self, stream_id: str) -> int:
            raise RuntimeError("/secret/path exploded")

    reply = call(Broken("cam1"), "reset", cmd(stream="cam1", id="i1"))
    assert reply["ok"] is False and reply["error"] == "internal" and reply["id"] == "i1"
    assert "secret" not in reply["detail"]


def test_stream_ending_during_a_star_command_is_left_out() -> None:
    class Vanishing(FakeController):
        async def set_params(self, stream_ids: list[str], changes: dict[str, Any],
                             skip_missing: bool) -> dict[str, Any]:
            if "b" in stream_ids:  # b ended after the existence check
                if not skip_missing:
                    raise KeyError("b")
                stream_ids = [s for s in stream_ids if s != "b"]
            return await super().set_params(stream_ids, changes, skip_missing)

        async def stop_stream(self, stream_id: str) -> None:
            if stream_id == "b":
                raise KeyError(stream_id)
            await super().stop_stream(stream_id)

    ctl = Vanishing("a", "b", "c")
    assert set(call(ctl, "params", cmd(stream="*", steps=2))["streams"]) == {"a", "c"}
    assert call(ctl, "params", cmd(stream="b", steps=2))["error"] == "unknown-stream"
    assert call(ctl, "stop-stream", cmd(stream="*"))["streams"] == {s: {"stopped": True} for s in "abc"}


def test_a_controller_refusal_changes_no_stream() -> None:
    """"*" is one mailbox update: when the controller refuses it, no stream changed."""
    class Picky(FakeController):
        async def set_params(self, stream_ids: list[str], changes: dict[str, Any],
                             skip_missing: bool) -> dict[str, Any]:
            if "b" in stream_ids:
                raise ValueError("b cannot do that")
            return await super().set_params(stream_ids, changes, skip_missing)

    ctl = Picky("a", "b", "c")
    reply = call(ctl, "params", cmd(stream="*", steps=2, id="k"))
    assert reply["ok"] is False and reply["error"] == "bad-value" and reply["detail"] == "b cannot do that"
    assert "streams" not in reply and reply["id"] == "k" and ctl.changes == []


# ------------------------------------------------------------------------------------------ reset ids
def test_duplicate_reset_id_resets_once() -> None:
    ctl, cache = FakeController("cam1"), ReplyCache()
    first = call(ctl, "reset", cmd(stream="cam1", id="r1"), cache)
    again = call(ctl, "reset", cmd(stream="cam1", id="r1"), cache)
    assert first["streams"] == {"cam1": {"generation": 1}} and "replayed" not in first
    assert again == {**first, "replayed": True}
    assert ctl.generation["cam1"] == 1 and ctl.changes == [("reset", "cam1")]
    # a new id is a new reset; no id always resets
    assert call(ctl, "reset", cmd(stream="cam1", id="r2"), cache)["streams"]["cam1"]["generation"] == 2
    assert call(ctl, "reset", cmd(stream="cam1"), cache)["streams"]["cam1"]["generation"] == 3
    assert call(ctl, "reset", cmd(stream="cam1"), cache)["streams"]["cam1"]["generation"] == 4


def test_duplicate_star_reset_replays_even_after_the_stream_ended() -> None:
    ctl, cache = FakeController("a", "b"), ReplyCache()
    first = call(ctl, "reset", cmd(stream="*", id="all"), cache)
    run(ctl.stop_stream("a"))
    again = call(ctl, "reset", cmd(stream="*", id="all"), cache)
    assert again["streams"] == first["streams"] == {"a": {"generation": 1}, "b": {"generation": 1}}
    assert ctl.generation == {"b": 1}


def test_reset_id_reused_for_another_stream_is_a_conflict() -> None:
    ctl, cache = FakeController("a", "b"), ReplyCache()
    call(ctl, "reset", cmd(stream="a", id="r"), cache)
    reply = call(ctl, "reset", cmd(stream="b", id="r"), cache)
    assert reply["error"] == "id-conflict" and reply["id"] == "r"
    assert ctl.generation == {"a": 1, "b": 0}


def test_failed_reset_is_not_remembered() -> None:
    ctl, cache = FakeController(), ReplyCache()
    assert call(ctl, "reset", cmd(stream="late", id="r"), cache)["error"] == "unknown-stream"
    ctl.params["late"], ctl.generation["late"] = dict(DEFAULTS), 0
    assert call(ctl, "reset", cmd(stream="late", id="r"), cache)["streams"] == {"late": {"generation": 1}}
    assert len(cache) == 1


def test_reset_ids_are_bounded_least_recently_used_first() -> None:
    assert ReplyCache().capacity == RESET_ID_CAPACITY == 256
    ctl, cache = FakeController("cam1"), ReplyCache(capacity=2)
    for rid in ("a", "b"):
        call(ctl, "reset", cmd(stream="cam1", id=rid), cache)
    assert call(ctl, "reset", cmd(stream="cam1", id="a"), cache).get("replayed")  # "a" is now most recent
    call(ctl, "reset", cmd(stream="cam1", id="c"), cache)  # evicts "b"
    assert len(cache) == 2 and ctl.generation["cam1"] == 3
    assert call(ctl, "reset", cmd(stream="cam1", id="a"), cache).get("replayed")
    assert "replayed" not in call(ctl, "reset", cmd(stream="cam1", id="b"), cache)
    assert ctl.generation["cam1"] == 4


def test_concurrent_deliveries_of_one_reset_reset_once() -> None:
    ctl, cache = FakeController("cam1"), ReplyCache()

    async def both() -> list[dict[str, Any]]:
        payload = cmd(stream="cam1", id="dup")
        return list(await asyncio.gather(*(handle_command(ctl, "reset", payload, replies=cache) for _ in range(5))))

    replies = run(both())
    assert ctl.generation["cam1"] == 1
    assert [r["streams"] for r in replies] == [{"cam1": {"generation": 1}}] * 5
    assert sum(1 for r in replies if r.get("replayed")) == 4


def test_without_a_cache_every_reset_runs() -> None:
    ctl = FakeController("cam1")
    for _ in range(2):
        call(ctl, "reset", cmd(stream="cam1", id="same"))
    assert ctl.generation["cam1"] == 2


# ------------------------------------------------------------------------------------------ agreement
def spec_table_column(heading: str) -> list[str]:
    """First-column code spans of the first table after `heading` in the specification."""
    text = SPEC.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    rows = re.findall(r"^\| `([^`]+)` \|", section.split("\n## ", 1)[0].split("\n### ", 1)[0], re.MULTILINE)
    return rows


def test_error_codes_match_the_spec() -> None:
    assert spec_table_column("## 7. Error codes") == list(ERROR_CODES)


def test_param_names_match_the_spec_and_the_schema() -> None:
    assert spec_table_column("### 5.3 `params`") == list(PARAM_NAMES)
    schema = json.loads((SCHEMAS / "mqtt-command-params.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]) - {"v", "id", "stream"} == set(PARAM_NAMES)
    assert schema["additionalProperties"] is False


def test_param_names_match_stream_params() -> None:
    """Every StreamParams field is settable by prompt or params (read from the source: no torch import)."""
    tree = ast.parse((REPO / "streamd" / "engine" / "params.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StreamParams")
    fields = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert fields == ["prompt", "negative_prompt", *PARAM_NAMES]
    assert set(DEFAULTS) == set(fields)


def test_verbs_match_the_spec_and_schemas() -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert [m for m in re.findall(r"^### 5\.\d+ `([a-z-]+)`$", text, re.MULTILINE)] == list(VERBS)
    assert sorted(p.name for p in SCHEMAS.glob("mqtt-command-*.json")) == sorted(
        f"mqtt-command-{verb}.json" for verb in VERBS)


VALUES: dict[str, list[Any]] = {
    "guidance": [None, 0, 0.5, 50, 50.0001, -0.1, "3", True, float("nan"), float("inf")],
    "steps": [None, 1, 8, 1000, 0, 1001, 4.0, "4", True],
    "schedule": [None, *SCHEDULES, "warp", "", 3],
    "seed": [None, 0, 2**63 - 1, 2**63, -1, 1.0],
    "policy": ["auto", "live", "self", "LIVE", None, 1],
    "chaining": ["pixel", "latent", "none", None],
    "cond_noise": [0, 0.0, 0.5, 1, 1.01, -0.01, None, "0"],
}


def test_value_checks_agree_with_stream_params() -> None:
    """What the handler accepts, StreamParams accepts; what StreamParams refuses, the handler refuses."""
    from streamd.engine.params import StreamParams

    assert set(VALUES) == set(PARAM_NAMES)
    for name, values in VALUES.items():
        for value in values:
            try:
                StreamParams(**{name: value})
                engine_ok = True
            except (ValueError, TypeError):
                engine_ok = False
            ctl = FakeController("cam1")
            reply = run(handle_command(ctl, "params", {"stream": "cam1", name: value}))
            if reply["ok"]:
                assert engine_ok, f"{name}={value!r} accepted here but refused by StreamParams"
            else:
                assert reply["error"] == "bad-value"
            if not engine_ok:
                assert not reply["ok"], f"{name}={value!r} refused by StreamParams but accepted here"


def test_valid_commands_satisfy_the_command_schemas_and_refused_ones_do_not() -> None:
    schemas = {verb: validator(f"mqtt-command-{verb}") for verb in VERBS}
    accepted = [
        ("prompt", {"stream": "cam1", "prompt": "x", "negative_prompt": "y", "id": "1", "v": 1, "extra": 0}),
        ("params", {"stream": "*", "steps": None, "cond_noise": 0.5}),
        ("reset", {"stream": "cam1", "id": "r"}),
        ("stop-stream", {"stream": "*", "whatever": [1]}),
    ]
    for verb, obj in accepted:
        schemas[verb].validate(obj)
        assert call(FakeController("cam1"), verb, obj)["ok"]
    for case, verb, payload, code in REFUSALS:
        if code in ("unknown-verb", "unknown-stream", "payload-too-large", "bad-json") or "controller" in case:
            continue  # outside what a schema can say
        if case in ("v 1.0", "steps float"):
            continue  # JSON Schema counts 4.0 as an integer; the protocol's encoding rules (and the daemon) do not
        obj = json.loads(payload)
        assert not schemas[verb].is_valid(obj), case


def test_replies_of_every_kind_validate() -> None:
    replies = [
        {"v": 1, "ok": True, "verb": "reset", "streams": {}},
        {"v": 1, "ok": False, "verb": "x", "error": "unknown-verb", "detail": "d"},
    ]
    for reply in replies:
        REPLY.validate(reply)
    assert not REPLY.is_valid({"v": 1, "ok": True, "verb": "reset"})
    assert not REPLY.is_valid({"v": 1, "ok": False, "verb": "reset", "streams": {}})
    assert not REPLY.is_valid({"v": 1, "ok": True, "verb": "reset", "streams": {"a": {"stopped": True}}})
    assert not REPLY.is_valid({"v": 1, "ok": True, "verb": "params", "streams": {"a": {"steps": 1}}})
