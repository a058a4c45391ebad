"""streamd's wire formats: the frames protocol on the ZeroMQ socket and the HTTP error bodies.

This package depends on the standard library and numpy only, and imports nothing else from streamd, so that
subscribers and tools can use it without the daemon's dependencies (torch, aiortc, ...). The specifications are
protocols/zmq-frames.md and protocols/http.md; the JSON Schemas in protocols/schemas/ formalise the JSON parts
(see `streamd.wire.schemas`).
"""

from .errors import ERROR_CONTENT_TYPE, ERROR_STATUS, UnsupportedVersion, WireError, error_body
from .events import (
    DROPS,
    EVENTS_TOPIC,
    KNOWN_EVENTS,
    SESSION_ENDED,
    SESSION_STARTED,
    STREAM_RESET,
    Event,
    decode_event,
    encode_event,
)
from .frames import (
    DEFAULT_FRAMES_ENDPOINT,
    FORMAT_RGB24,
    FRAMES_SNDHWM,
    FRAMES_TOPIC_PREFIX,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    SOURCE_LIVE,
    SOURCE_SELF,
    FrameHeader,
    decode_frame,
    encode_frame,
    frames_topic,
    valid_stream_id,
)

__all__ = [
    "DEFAULT_FRAMES_ENDPOINT",
    "DROPS",
    "ERROR_CONTENT_TYPE",
    "ERROR_STATUS",
    "EVENTS_TOPIC",
    "Event",
    "FORMAT_RGB24",
    "FRAMES_SNDHWM",
    "FRAMES_TOPIC_PREFIX",
    "FrameHeader",
    "KNOWN_EVENTS",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "SESSION_ENDED",
    "SESSION_STARTED",
    "SOURCE_LIVE",
    "SOURCE_SELF",
    "STREAM_RESET",
    "UnsupportedVersion",
    "WireError",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame",
    "error_body",
    "frames_topic",
    "valid_stream_id",
]
