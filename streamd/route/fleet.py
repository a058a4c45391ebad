"""The fleet as a router sees it: every instance's latest retained status, and where a new session goes.

Transport-free and torch-free: `Fleet.update` takes a status message (topic name and payload) as MQTT delivered
it, `Fleet.choose` picks an instance for a new WHIP session, `Fleet.holder` finds the instance of a stream.

Placement (protocols/mqtt-control.md section 4.1, "Fleet members"): an instance is eligible when its status is
`online`, `ready`, not `draining`, younger than `max_age_s`, names a URL, and has room for one more stream; among
the eligible the one with the most memory headroom wins, ties broken by fewest streams, then by name. Between a
placement and the status that reflects it the router counts the session itself (`reserve` / `confirm`), so
that concurrent POSTs do not all land on the instance that looked emptiest.

Bounds: at most `max_instances` instances (default 256; a status from one more is ignored and counted in
`refused`), at most MAX_STREAMS_PER_INSTANCE stream ids kept per instance (engine.max_streams is at most 64), a
status payload of at most MAX_STATUS_BYTES, and reservations per instance bounded by its max_streams (an
instance with that many is not eligible).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..edges.announce import Capacity
from ..wire.frames import valid_stream_id

__all__ = ["DEFAULT_MAX_INSTANCES", "MAX_STATUS_BYTES", "MAX_STREAMS_PER_INSTANCE", "Fleet", "Instance"]

DEFAULT_MAX_INSTANCES = 256  # instances tracked at most (a few KiB each)
MAX_STREAMS_PER_INSTANCE = 64  # stream ids kept per instance: engine.max_streams is at most 64
MAX_STATUS_BYTES = 65536  # a larger status payload is ignored (a real one is well under 16 KiB)
SUSPECT_S = 10.0  # an instance the router could not reach is not chosen for this long


@dataclass
class Instance:
    """One instance's latest status, as announced, plus the router's own short-lived knowledge of it."""

    name: str
    state: str = "offline"
    ready: bool = False
    draining: bool = False
    url: str | None = None
    zmq_endpoint: str | None = None
    capacity: Capacity | None = None
    streams: tuple[str, ...] = ()
    model: str | None = None
    version: str | None = None
    seen: float = 0.0  # monotonic time the latest status was received
    refused_since_status: bool = False  # it answered 503 to a forwarded POST since its latest status
    suspect_until: float = 0.0  # monotonic time until which it is not chosen (it could not be reached)
    # placements its status does not reflect yet: key -> (stream id once answered, monotonic time placed)
    pending: dict[int, tuple[str | None, float]] = field(default_factory=dict)

    def pending_streams(self) -> int:
        """Placements not yet counted in the announced capacity."""
        return sum(1 for sid, _ in self.pending.values() if sid is None or sid not in self.streams)

    def room(self) -> tuple[int, int] | None:
        """(headroom bytes, streams) after the pending placements; None when one more stream does not fit."""
        cap = self.capacity
        if cap is None:
            return None
        extra = self.pending_streams()
        streams = cap.streams + extra
        headroom = cap.headroom_bytes - extra * cap.stream_bytes
        if streams >= cap.max_streams or headroom < cap.stream_bytes:
            return None
        return headroom, streams


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _capacity(value: Any) -> Capacity | None:
    if not isinstance(value, dict):
        return None
    numbers = [_int(value.get(k)) for k in ("max_streams", "streams", "headroom_bytes", "stream_bytes")]
    if any(n is None for n in numbers):
        return None
    return Capacity(*numbers)  # type: ignore[arg-type]


class Fleet:
    """The instances under `<prefix_root>/+/status`, bounded to `max_instances`."""

    def __init__(self, max_age_s: float, max_instances: int = DEFAULT_MAX_INSTANCES,
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns) -> None:
        if max_age_s <= 0 or max_instances < 1:
            raise ValueError("max_age_s must be positive and max_instances at least 1")
        self.max_age_s = max_age_s
        self.max_instances = max_instances
        self._clock = clock
        self._wall_ns = wall_ns
        self.instances: dict[str, Instance] = {}
        self._keys = itertools.count(1)
        self.refused = 0  # statuses of instances beyond max_instances, ignored
        self.invalid = 0  # statuses that were not a JSON object of the expected shape, ignored

    # ------------------------------------------------------------------------------------------ statuses
    def update(self, name: str, payload: bytes, retained: bool = False) -> None:
        """Take the status `payload` of instance `name` (`<root>/<name>/status`).

        An `offline` status, an empty payload (a cleared retained message) or a retained one older than the
        bound removes the instance; a malformed one is ignored (counted in `invalid`).
        """
        if not payload:
            self.instances.pop(name, None)
            return
        if len(payload) > MAX_STATUS_BYTES:
            self.invalid += 1
            return
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.invalid += 1
            return
        if not isinstance(body, dict) or not isinstance(body.get("state"), str):
            self.invalid += 1
            return
        stamp = _int(body.get("time_ns"))
        # A retained status delivered on subscription may be old (a daemon gone while the broker kept its copy):
        # its own clock is all there is to judge it by. Live ones are judged by when they arrive.
        if retained and stamp is not None and (self._wall_ns() - stamp) / 1e9 > self.max_age_s:
            self.instances.pop(name, None)
            return
        if body["state"] == "offline":
            self.instances.pop(name, None)
            return
        inst = self.instances.get(name)
        if inst is None:
            if len(self.instances) >= self.max_instances:
                self.expire()
            if len(self.instances) >= self.max_instances:
                self.refused += 1
                return
            inst = self.instances[name] = Instance(name)
        now = self._clock()
        streams = body.get("streams")
        inst.streams = tuple(s for s in streams[:MAX_STREAMS_PER_INSTANCE] if valid_stream_id(s)) if isinstance(
            streams, list) else ()
        inst.state = body["state"]
        inst.ready = body.get("ready") is True
        inst.draining = body.get("draining") is True
        url = body.get("url")
        inst.url = url.rstrip("/") if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        zmq = body.get("zmq_endpoint")
        inst.zmq_endpoint = zmq if isinstance(zmq, str) else None
        inst.capacity = _capacity(body.get("capacity"))
        inst.model = body.get("model") if isinstance(body.get("model"), str) else None
        inst.version = body.get("version") if isinstance(body.get("version"), str) else None
        inst.seen = now
        inst.refused_since_status = False
        # A placement answered 201 is settled by the first status received after it: the instance publishes one
        # when a session takes a slot, and the broker keeps one publisher's messages in order. (A status composed
        # before the admission and overtaken by the 201 would undercount for one interval; the instance's own 503
        # and the next candidate cover that.) Placements still in flight stay.
        inst.pending = {k: (sid, t) for k, (sid, t) in inst.pending.items() if sid is None}

    def expire(self) -> list[str]:
        """Drop instances whose latest status is older than the bound; their names."""
        now = self._clock()
        gone = [n for n, i in self.instances.items() if now - i.seen > self.max_age_s]
        for name in gone:
            del self.instances[name]
        return gone

    # ------------------------------------------------------------------------------------------ placement
    def fresh(self, inst: Instance) -> bool:
        """Whether the instance's latest status is within the bound."""
        return self._clock() - inst.seen <= self.max_age_s

    def eligible(self, inst: Instance) -> bool:
        """Whether a new session may be placed on the instance now."""
        return (inst.state == "online" and inst.ready and not inst.draining and inst.url is not None
                and self.fresh(inst) and not inst.refused_since_status and self._clock() >= inst.suspect_until
                and inst.room() is not None)

    def choose(self, exclude: set[str] | frozenset[str] = frozenset()) -> Instance | None:
        """The eligible instance with the most headroom (then fewest streams, then name); None when all are full."""
        best: tuple[int, int, str] | None = None
        chosen: Instance | None = None
        for inst in self.instances.values():
            if inst.name in exclude or not self.eligible(inst):
                continue
            headroom, streams = inst.room()  # type: ignore[misc]
            key = (-headroom, streams, inst.name)
            if best is None or key < best:
                best, chosen = key, inst
        return chosen

    def holder(self, stream_id: str) -> Instance | None:
        """The fresh, online instance that announces `stream_id`."""
        for inst in self.instances.values():
            if stream_id in inst.streams and inst.state == "online" and self.fresh(inst):
                return inst
        return None

    def any_holder(self) -> Instance | None:
        """A fresh, online instance with at least one stream (for `POST /whep` without a stream id)."""
        return next((i for i in self.instances.values() if i.streams and i.state == "online" and self.fresh(i)),
                    None)

    def reserve(self, inst: Instance) -> int:
        """Count a placement in flight on `inst`; the key for `confirm` or `release`."""
        key = next(self._keys)
        inst.pending[key] = (None, self._clock())
        return key

    def confirm(self, inst: Instance, key: int, stream_id: str | None) -> None:
        """The placement succeeded: it counts until the instance's next status."""
        if key in inst.pending:
            inst.pending[key] = (stream_id, self._clock())

    def release(self, inst: Instance, key: int) -> None:
        """The placement did not happen."""
        inst.pending.pop(key, None)

    def refused_by(self, inst: Instance) -> None:
        """The instance answered 503 (full, draining, not ready): not chosen again before its next status."""
        inst.refused_since_status = True

    def unreachable(self, inst: Instance) -> None:
        """The instance could not be reached: not chosen for SUSPECT_S."""
        inst.suspect_until = self._clock() + SUSPECT_S

    # ------------------------------------------------------------------------------------------ reporting
    def snapshot(self) -> dict[str, Any]:
        """The fleet for `GET /api/status`: every instance with its streams, and every stream with its instance."""
        now = self._clock()
        instances: dict[str, Any] = {}
        streams: dict[str, Any] = {}
        for name in sorted(self.instances):
            inst = self.instances[name]
            instances[name] = {
                "state": inst.state, "ready": inst.ready, "draining": inst.draining, "eligible": self.eligible(inst),
                "url": inst.url, "zmq_endpoint": inst.zmq_endpoint,
                "capacity": inst.capacity.as_json() if inst.capacity else None,
                "pending": inst.pending_streams(), "streams": list(inst.streams), "model": inst.model,
                "version": inst.version, "age_s": round(now - inst.seen, 3),
            }
            if self.fresh(inst) and inst.state == "online":
                for sid in inst.streams:
                    streams[sid] = {"instance": name, "url": inst.url, "zmq_endpoint": inst.zmq_endpoint,
                                    "whep": f"{inst.url}/whep/{sid}" if inst.url else None}
        return {"instances": instances, "streams": streams}
