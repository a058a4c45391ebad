"""Event messages of the streamd frames protocol, version 1 (protocols/zmq-frames.md section 7).

An event message is two ZeroMQ parts: the topic `events` and a JSON body. Events of a name this module does
not know decode like any other (the name is kept as received), because the protocol adds event names without
changing its version.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import WireError
from .frames import (
    PROTOCOL_VERSION,
    BytesLike,
    as_buffer,
    check_int,
    check_required,
    check_str,
    check_stream_id,
    check_version,
    dump_json,
    freeze_extra,
    load_json_object,
)

__all__ = [
    "DROPS",
    "EVENTS_TOPIC",
    "Event",
    "KNOWN_EVENTS",
    "SESSION_ENDED",
    "SESSION_STARTED",
    "STREAM_RESET",
    "decode_event",
    "encode_event",
]

EVENTS_TOPIC = b"events"

SESSION_STARTED = "session-started"
SESSION_ENDED = "session-ended"
STREAM_RESET = "stream-reset"
DROPS = "drops"
KNOWN_EVENTS: frozenset[str] = frozenset({SESSION_STARTED, SESSION_ENDED, STREAM_RESET, DROPS})

# Members each known event must carry (zmq-frames.md section 7.3); unknown events carry only the common ones.
_EVENT_REQUIRES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        SESSION_STARTED: ("width", "height"),
        SESSION_ENDED: (),
        STREAM_RESET: ("generation",),
        DROPS: ("dropped",),
    }
)

_REQUIRED: tuple[str, ...] = ("event", "stream", "time_ns")
_OPTIONAL: tuple[str, ...] = ("reason", "width", "height", "dropped", "generation", "details")
_NAMES = frozenset(("v",) + _REQUIRED + _OPTIONAL)


@dataclass(frozen=True)
class Event:
    """The JSON body (part 1) of an event message, validated on construction.

    `time_ns` defaults to the current wall clock. Optional members are None when absent and are then left out
    of the JSON; `extra` holds members this version does not define and is written back on encoding.
    """

    event: str
    stream: str
    time_ns: int = field(default_factory=time.time_ns)
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    dropped: int | None = None
    generation: int | None = None
    details: Mapping[str, Any] | None = field(default=None, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        name = check_str("event 'event'", self.event)
        if not name:
            raise WireError("event 'event' must be a non-empty string")
        values: dict[str, Any] = {
            "event": name,
            "stream": check_stream_id("event 'stream'", self.stream),
            "time_ns": check_int("event 'time_ns'", self.time_ns, 0),
            "extra": freeze_extra("event", self.extra, _NAMES),
        }
        if self.reason is not None:
            values["reason"] = check_str("event 'reason'", self.reason)
        for member, minimum in (("width", 1), ("height", 1), ("dropped", 0), ("generation", 0)):
            value = getattr(self, member)
            if value is not None:
                values[member] = check_int(f"event '{member}'", value, minimum)
        if self.details is not None:
            if not isinstance(self.details, Mapping):
                raise WireError(f"event 'details' must be an object, got {self.details!r}")
            values["details"] = MappingProxyType(dict(self.details))
        for member in _EVENT_REQUIRES.get(name, ()):
            if getattr(self, member) is None:
                raise WireError(f"a {name!r} event must carry {member!r}")
        for member, value in values.items():
            object.__setattr__(self, member, value)

    @property
    def known(self) -> bool:
        """Whether this version of the protocol defines the event's name."""
        return self.event in KNOWN_EVENTS

    def to_dict(self) -> dict[str, Any]:
        """The event as the JSON object sent on the wire, `v` included, absent optionals left out."""
        obj: dict[str, Any] = {"v": PROTOCOL_VERSION}
        for member in _REQUIRED + _OPTIONAL:
            value = getattr(self, member)
            if value is not None:
                obj[member] = value
        obj.update(self.extra)
        return obj

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Event:
        """Validate a received event object: version, required members, types; unknown members go to `extra`."""
        check_version(obj, "event")
        check_required(obj, _REQUIRED, "event")
        for member in _OPTIONAL:
            if member in obj and obj[member] is None:
                raise WireError(f"event '{member}' must be absent or a value, got null")
        known = {member: obj[member] for member in _REQUIRED + _OPTIONAL if member in obj}
        extra = {member: value for member, value in obj.items() if member not in _NAMES}
        return cls(**known, extra=extra)


def encode_event(event: Event) -> list[bytes]:
    """The two parts [b'events', body JSON] of one event message."""
    if not isinstance(event, Event):
        raise WireError(f"event must be an Event, got {type(event).__name__}")
    return [EVENTS_TOPIC, dump_json(event.to_dict(), "event")]


def decode_event(parts: Sequence[BytesLike]) -> Event:
    """Check a received event message and return the event.

    Raises WireError (UnsupportedVersion for another protocol version) naming the failed check: part count,
    topic, JSON, version, required members and types. Unknown event names and members are accepted.
    """
    if isinstance(parts, (bytes, bytearray, memoryview, str)):
        raise WireError("an event message is a sequence of parts, not a single buffer")
    if len(parts) != 2:
        raise WireError(f"an event message has 2 parts [topic, body], got {len(parts)}")
    topic = as_buffer(parts[0], "event topic").tobytes()
    if topic != EVENTS_TOPIC:
        raise WireError(f"event topic must be {EVENTS_TOPIC!r}, got {topic[:80]!r}")
    return Event.from_dict(load_json_object(parts[1], "event"))
