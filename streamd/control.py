"""Control commands shared by the MQTT edge and any other control surface (protocols/mqtt-control.md §5-§8).

A command is a verb (`prompt`, `params`, `reset`, `stop-stream`) and a JSON object naming a target stream (or
`"*"`, every current stream) and its arguments; `drain` names no stream (`{"draining": true|false}`: the whole
instance stops or resumes taking new sessions). `handle_command` parses and validates the command completely,
checks every targeted stream exists, and only then applies it through a `Controller` the daemon provides. It
never raises for bad input: every outcome, including internal failures, is a reply object
(`{"v": 1, "ok": true, ...}` or `{"v": 1, "ok": false, "error": <code>, "detail": <text>, ...}`).

This module is transport-free and torch-free: it imports neither the network libraries nor torch, so it can
be tested, and reused by other surfaces, on its own. Parameter values are checked with the rules of
`streamd.engine.params.PARAMS`, the one home of the stream parameters and their bounds; the controller validates
again, and a value it refuses becomes a `bad-value` reply.

No command waits for the engine: parameters are queued in the stream's mailbox and the reply says which chunk
will apply them (`applies_at_chunk`); `"*"` is one mailbox update for every stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from .engine.params import PARAM_NAMES, PARAMS, PROMPT_NAMES
from .wire.frames import valid_stream_id

__all__ = [
    "ALL_STREAMS",
    "COMMAND_VERSION",
    "ERROR_CODES",
    "MAX_ID_CHARS",
    "MAX_PAYLOAD_BYTES",
    "PARAM_NAMES",
    "RESET_ID_CAPACITY",
    "VERBS",
    "CommandError",
    "Controller",
    "ReplyCache",
    "error_reply",
    "handle_command",
    "parse_payload",
]

log = logging.getLogger(__name__)

COMMAND_VERSION = 1  # the `v` of replies; a command may carry `v`, and must then carry this value
VERBS: tuple[str, ...] = ("prompt", "params", "reset", "stop-stream", "drain")
ALL_STREAMS = "*"
MAX_PAYLOAD_BYTES = 65536  # a command payload larger than this is refused unread (code payload-too-large)
MAX_ID_CHARS = 128  # the optional correlation/idempotency `id`
MAX_VERB_ECHO_CHARS = 64  # an unknown verb is echoed in the reply cut to this length
MAX_DETAIL_CHARS = 512  # error details quote values; cut so that a reply stays small whatever was sent
RESET_ID_CAPACITY = 256  # reset ids remembered for de-duplication (least recently used evicted first)
ENVELOPE = frozenset({"v", "id", "stream"})  # members every verb understands; never parameter names

# Error codes (protocols/mqtt-control.md §7) and what each means.
ERROR_CODES: Mapping[str, str] = MappingProxyType(
    {
        "payload-too-large": f"the payload is over {MAX_PAYLOAD_BYTES} bytes",
        "bad-json": "the payload is not UTF-8 JSON (or has NaN/Infinity or duplicate member names)",
        "bad-payload": "the JSON is not an object, or a required member is missing, or v/id/stream is malformed",
        "unsupported-version": "the command's v is not a version this daemon implements",
        "unknown-verb": "the verb is not one of prompt, params, reset, stop-stream, drain",
        "unknown-parameter": "params names a parameter this daemon does not know",
        "bad-value": "a parameter's value has the wrong type or is out of range",
        "unknown-stream": "the named stream does not exist (any more)",
        "id-conflict": "a reset id was reused for a different target",
        "internal": "the daemon failed; nothing is promised about what changed",
    }
)


class CommandError(Exception):
    """A command refused with a stable machine-readable `code` (one of ERROR_CODES) and a human `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Controller(Protocol):
    """What the daemon provides to the command handlers.

    All methods are called on the daemon's event loop thread.
    """

    def stream_ids(self) -> list[str]:
        """Ids of the streams that exist now."""
        ...

    async def set_params(
        self, stream_ids: list[str], changes: dict[str, Any], skip_missing: bool
    ) -> dict[str, Any]:
        """Queue `changes` (StreamParams field names) for every stream in `stream_ids` in one update, applied at
        each stream's next chunk; return stream -> its resulting params as a JSON-able dict (with
        `applies_at_chunk`). Without `skip_missing` an unknown stream is a KeyError; a bad value is a ValueError;
        nothing changes then. Must not wait for a chunk."""
        ...

    async def reset(self, stream_id: str) -> int:
        """Restart the stream from live input; return its new generation. KeyError for an unknown stream."""
        ...

    async def stop_stream(self, stream_id: str) -> None:
        """End the stream and its session. KeyError for an unknown stream."""
        ...

    def set_draining(self, draining: bool) -> bool:
        """Stop (True) or resume (False) taking new sessions; live ones go on. Returns the new setting."""
        ...

    def status(self) -> dict[str, Any]:
        """`state`, `streams` (a list of stream ids), `model` (name, or None before it is loaded), `version`.

        The MQTT status takes `streams`, `model` and `version` from here; its `state` is the one the daemon
        sets on the MQTT edge (`MqttControl.set_state`).
        """
        ...


# ------------------------------------------------------------------------------------------ value checks
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(name: str, value: object) -> None:
    reason = PARAMS[name].problem(value)
    if reason is not None:
        raise CommandError("bad-value", _cut(f"{name} {reason}, got {json.dumps(value)}"))


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------ parsing
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member name {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_payload(payload: bytes | bytearray | memoryview | str | Mapping[str, Any]) -> dict[str, Any]:
    """The command object in `payload`; raises CommandError (payload-too-large, bad-json, bad-payload).

    Bytes must be UTF-8 JSON of at most MAX_PAYLOAD_BYTES; a str counts by its UTF-8 length. A mapping is taken
    as already parsed (the caller bounded its size) and is copied.
    """
    if isinstance(payload, Mapping):
        return dict(payload)
    if isinstance(payload, str):
        # count bytes without encoding a huge string first: 4 bytes per character at most
        size = len(payload) if len(payload) * 4 <= MAX_PAYLOAD_BYTES else len(payload.encode("utf-8", "replace"))
        text = payload
    else:
        size = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
        text = None
    if size > MAX_PAYLOAD_BYTES:
        raise CommandError("payload-too-large", f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
    if text is None:
        try:
            # decode first: json.loads(bytes) would also accept UTF-16 and UTF-32
            text = bytes(payload).decode("utf-8")  # type: ignore[arg-type]
        except UnicodeDecodeError as exc:
            raise CommandError("bad-json", f"payload is not UTF-8: {exc}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise CommandError("bad-json", "payload is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so are the hooks' refusals
        raise CommandError("bad-json", _cut(f"payload is not valid JSON: {exc}")) from None
    if not isinstance(obj, dict):
        raise CommandError("bad-payload", f"payload must be a JSON object, got {type(obj).__name__}")
    return obj


def _command_id(obj: Mapping[str, Any]) -> str | None:
    if "id" not in obj:
        return None
    value = obj["id"]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise CommandError("bad-payload", f"id must be a string of 1-{MAX_ID_CHARS} characters")
    return value


def _check_version(obj: Mapping[str, Any]) -> None:
    if "v" not in obj:
        return
    version = obj["v"]
    if not _is_int(version):
        raise CommandError("bad-payload", _cut(f"v must be an integer, got {json.dumps(version)}"))
    if version != COMMAND_VERSION:
        raise CommandError("unsupported-version", f"v {version} is not supported; this daemon implements 1")


def _target(obj: Mapping[str, Any]) -> str:
    if "stream" not in obj:
        raise CommandError("bad-payload", "stream is required (a stream id, or \"*\" for every stream)")
    stream = obj["stream"]
    if stream != ALL_STREAMS and not valid_stream_id(stream):
        raise CommandError(
            "bad-payload",
            _cut(f"stream must be \"*\" or 1-64 characters of [A-Za-z0-9_-], got {json.dumps(stream)}"),
        )
    return str(stream)


def _changes(verb: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter changes a prompt or params command asks for, validated."""
    if verb == "prompt":
        if "prompt" not in obj:
            raise CommandError("bad-payload", "prompt is required")
        changes = {name: obj[name] for name in PROMPT_NAMES if name in obj}
        for name, value in changes.items():
            _check_value(name, value)
        return changes
    # params: every member outside the envelope names a parameter, so a misspelt or newer parameter is an
    # error instead of a silent no-op that would look like success.
    unknown = sorted(set(obj) - ENVELOPE - set(PARAM_NAMES))
    if unknown:
        hint = " (set prompts with the prompt verb)" if set(PROMPT_NAMES) & set(unknown) else ""
        names = ", ".join(json.dumps(name) for name in unknown)
        raise CommandError("unknown-parameter", _cut(f"unknown parameter(s) {names}{hint}; known: "
                                                     f"{', '.join(PARAM_NAMES)}"))
    changes = {name: obj[name] for name in PARAM_NAMES if name in obj}
    if not changes:
        raise CommandError("bad-payload", f"params needs at least one of {', '.join(PARAM_NAMES)}")
    for name, value in changes.items():
        _check_value(name, value)
    return changes


# ------------------------------------------------------------------------------------------ replies
def error_reply(verb: str, code: str, detail: str, command_id: str | None = None) -> dict[str, Any]:
    """A failure reply object."""
    reply: dict[str, Any] = {"v": COMMAND_VERSION, "ok": False, "verb": verb}
    if command_id is not None:
        reply["id"] = command_id
    reply["error"] = code
    reply["detail"] = detail
    return reply


def _ok_reply(verb: str, command_id: str | None, streams: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = {"v": COMMAND_VERSION, "ok": True, "verb": verb}
    if command_id is not None:
        reply["id"] = command_id
    reply["streams"] = streams
    return reply


class ReplyCache:
    """Replies of recently executed `reset` commands by id, so that a redelivered reset is not executed twice.

    Bounded: at most `capacity` ids (default RESET_ID_CAPACITY, 256), least recently used evicted first. Only
    successful resets are remembered: a failed reset changed nothing, so running it again is harmless. One
    cache must be shared by every surface that executes commands for one daemon, so that an id is one command
    whichever way it arrives.
    """

    def __init__(self, capacity: int = RESET_ID_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()  # id -> (target, reply)
        # Held across check-execute-store so that two deliveries of one reset racing each other run it once.
        self.lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, command_id: str) -> tuple[str, dict[str, Any]] | None:
        """(target, reply) remembered for `command_id`, marking it recently used; None when unknown."""
        entry = self._entries.get(command_id)
        if entry is not None:
            self._entries.move_to_end(command_id)
        return entry

    def put(self, command_id: str, target: str, reply: dict[str, Any]) -> None:
        """Remember the reply of a successful reset, evicting the least recently used id beyond capacity."""
        self._entries[command_id] = (target, reply)
        self._entries.move_to_end(command_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


# ------------------------------------------------------------------------------------------ handling
async def handle_command(
    controller: Controller,
    verb: str,
    payload: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    replies: ReplyCache | None = None,
) -> dict[str, Any]:
    """Validate and execute one command; return its reply object (never raises, except on cancellation).

    `replies` de-duplicates `reset` commands by `id`; without it every reset runs. Checks run in the order of
    protocols/mqtt-control.md §6.1, and no stream changes unless every check passed for every targeted stream.
    """
    echo = verb if isinstance(verb, str) and len(verb) <= MAX_VERB_ECHO_CHARS else str(verb)[:MAX_VERB_ECHO_CHARS]
    command_id: str | None = None
    try:
        obj = parse_payload(payload)
        command_id = _command_id(obj)
        _check_version(obj)
        if verb not in VERBS:
            raise CommandError("unknown-verb", _cut(f"unknown verb {json.dumps(echo)}; known: {', '.join(VERBS)}"))
        if verb == "drain":
            return _drain(controller, obj, command_id)
        target = _target(obj)
        changes = _changes(verb, obj) if verb in ("prompt", "params") else {}
        if verb == "reset" and command_id is not None and replies is not None:
            async with replies.lock:
                seen = replies.get(command_id)
                if seen is not None:
                    return _replay(verb, command_id, target, seen)
                reply = await _execute(controller, verb, target, changes, command_id)
                if reply["ok"]:
                    replies.put(command_id, target, reply)
                return reply
        return await _execute(controller, verb, target, changes, command_id)
    except CommandError as exc:
        return error_reply(echo, exc.code, exc.message, command_id)
    except Exception:  # a bug or a controller failure: the caller still gets a reply
        log.exception("command %s failed", echo)
        return error_reply(echo, "internal", "internal error; see the daemon's log", command_id)


def _drain(controller: Controller, obj: Mapping[str, Any], command_id: str | None) -> dict[str, Any]:
    """The `drain` verb: the instance-wide switch (no stream target; `streams` stays empty in the reply).
    Unknown members are ignored, as for the other verbs that take no parameters."""
    draining = obj.get("draining")
    if not isinstance(draining, bool):
        raise CommandError("bad-payload", _cut(f"draining must be true or false, got {json.dumps(draining)}"))
    reply = _ok_reply("drain", command_id, {})
    reply["draining"] = bool(controller.set_draining(draining))
    return reply


def _replay(verb: str, command_id: str, target: str, seen: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    first_target, first_reply = seen
    if first_target != target:
        raise CommandError(
            "id-conflict",
            _cut(f"id {json.dumps(command_id)} was used for a reset of {json.dumps(first_target)}; "
                 "use a new id for a new command"),
        )
    log.info("reset id %r seen before: replaying its reply without resetting again", command_id)
    return {**json.loads(json.dumps(first_reply)), "replayed": True}  # a deep copy: callers may modify it


async def _execute(
    controller: Controller, verb: str, target: str, changes: dict[str, Any], command_id: str | None
) -> dict[str, Any]:
    """Apply a validated command to its streams."""
    existing = list(controller.stream_ids())
    if target == ALL_STREAMS:
        streams = existing
    elif target in existing:
        streams = [target]
    else:
        raise CommandError("unknown-stream", f"no stream {json.dumps(target)}")
    if verb in ("prompt", "params"):
        # one mailbox update for every targeted stream: all of them or none
        try:
            results = await controller.set_params(streams, dict(changes), skip_missing=target == ALL_STREAMS)
        except KeyError:
            raise CommandError("unknown-stream", f"stream {json.dumps(target)} ended") from None
        except ValueError as exc:
            return error_reply(verb, "bad-value", _cut(str(exc)), command_id)
        return _ok_reply(verb, command_id, {sid: dict(r) for sid, r in results.items()})
    results: dict[str, Any] = {}
    for stream in streams:
        try:
            results[stream] = await _apply(controller, verb, stream)
        except KeyError:
            # The stream ended after the check above. "*" means the streams that exist, so it is skipped;
            # stop-stream wanted it gone anyway; a named stream is reported.
            if verb == "stop-stream":
                results[stream] = {"stopped": True}
            elif target != ALL_STREAMS:
                raise CommandError("unknown-stream", f"stream {json.dumps(stream)} ended") from None
    return _ok_reply(verb, command_id, results)


async def _apply(controller: Controller, verb: str, stream: str) -> dict[str, Any]:
    if verb == "reset":
        return {"generation": int(await controller.reset(stream))}
    await controller.stop_stream(stream)
    return {"stopped": True}
