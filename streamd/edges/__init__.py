"""The daemon's doors to the outside: HTTP (WHIP ingest, WHEP playback, health, metrics, control API), WebRTC,
ZeroMQ frames out, MQTT control, systemd notifications.

The public names below are resolved on first use (PEP 562), so `import streamd.edges` (or one submodule, such as
`streamd.edges.webrtc` for a client) imports no other door's dependencies and starts nothing: sockets, threads
and tasks exist only once a caller builds and starts an object.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that owns it
_EXPORTS: dict[str, str] = {
    "RequestChecks": "http",
    "StreamHooks": "http",
    "build_app": "http",
    "error_response": "http",
    "WhipEndpoint": "whip",
    "WhepEndpoint": "whep",
    "WhepViewer": "whep",
    "GeneratedTrack": "whep",
    "PlaybackSource": "whep",
    "WhipError": "webrtc",
    "WhipSession": "webrtc",
    "FrameSizeError": "webrtc",
    "frame_to_rgb": "webrtc",
    "parse_offer": "webrtc",
    "parse_sdpfrag": "webrtc",
    "restrict_host_addresses": "webrtc",
    "FramePublisher": "zmq",
    "CurveConfig": "zmq",
    "CurveKeyError": "zmq",
    "MqttControl": "mqtt",
    "Notifier": "systemd",
    "Watchdog": "systemd",
    "Metrics": "metrics",
    "Readings": "metrics",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from .http import RequestChecks, StreamHooks, build_app, error_response
    from .metrics import Metrics, Readings
    from .mqtt import MqttControl
    from .systemd import Notifier, Watchdog
    from .webrtc import (
        FrameSizeError,
        WhipError,
        WhipSession,
        frame_to_rgb,
        parse_offer,
        parse_sdpfrag,
        restrict_host_addresses,
    )
    from .whep import GeneratedTrack, PlaybackSource, WhepEndpoint, WhepViewer
    from .whip import WhipEndpoint
    from .zmq import CurveConfig, CurveKeyError, FramePublisher


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
