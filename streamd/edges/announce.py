"""What an instance announces about itself in its retained MQTT status, for routers (protocols/mqtt-control.md
section 4.1, "Fleet members"): where clients reach it and how much room it has.

The public addresses are the configured ones (`http.public_url`, `zmq.public_endpoint`) or, when unset, derived
from the listeners: a wildcard listener (`0.0.0.0`, `::`, `*`) is announced under this host's fully qualified
name, since a wildcard is no address another host can dial.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..config import HttpSettings, ZmqSettings

__all__ = ["Capacity", "public_endpoint", "public_url"]

_WILDCARDS = ("", "0.0.0.0", "::", "*", "[::]")


def _dialable(host: str) -> str:
    """`host` as another machine dials it: a wildcard becomes this host's name; an IPv6 address gets brackets."""
    if host in _WILDCARDS:
        return socket.getfqdn()
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def public_url(http: HttpSettings) -> str:
    """The instance's public HTTP base URL, without a trailing slash (WHIP is `<url>/whip`)."""
    if http.public_url:
        return http.public_url.rstrip("/")
    return f"http://{_dialable(http.host)}:{http.port}"


def public_endpoint(zmq: ZmqSettings) -> str:
    """The ZeroMQ endpoint subscribers should connect to."""
    if zmq.public_endpoint:
        return zmq.public_endpoint
    if not zmq.endpoint.startswith("tcp://"):
        return zmq.endpoint  # ipc:// and inproc:// are dialled as bound (same host only)
    host, _, port = zmq.endpoint[len("tcp://"):].rpartition(":")
    return f"tcp://{_dialable(host)}:{port}"


@dataclass(frozen=True)
class Capacity:
    """Room for new streams, as announced: a router admits a new session only where `has_room()`."""

    max_streams: int  # engine.max_streams
    streams: int  # sessions that hold a slot now (connecting or live)
    headroom_bytes: int  # memory admission budget not held by streams
    stream_bytes: int  # what one more stream at the model's size holds

    def has_room(self) -> bool:
        """One more stream fits both the stream limit and the memory budget."""
        return self.streams < self.max_streams and self.headroom_bytes >= self.stream_bytes

    def as_json(self) -> dict[str, int]:
        """The `capacity` member of the status."""
        return {"max_streams": self.max_streams, "streams": self.streams, "headroom_bytes": self.headroom_bytes,
                "stream_bytes": self.stream_bytes}
