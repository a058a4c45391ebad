"""Frame messages of the streamd frames protocol, version 1 (protocols/zmq-frames.md).

A frame message is three ZeroMQ parts: the topic `frames/<stream-id>`, a JSON header, and the raw RGB payload
(`height * width * 3` bytes). `encode_frame` builds the parts a publisher sends; `decode_frame` checks the parts
a subscriber received, in the order of the specification's receiver checklist, and raises `WireError` naming
the first check that failed (`UnsupportedVersion` for a well-formed message of another protocol version, which
a receiver skips quietly).

The JSON helpers here are shared with `events.py`: both message kinds follow the same encoding rules.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import UnsupportedVersion, WireError

__all__ = [
    "BytesLike",
    "DEFAULT_FRAMES_ENDPOINT",
    "FORMATS",
    "FORMAT_RGB24",
    "FRAMES_SNDHWM",
    "FRAMES_TOPIC_PREFIX",
    "FrameHeader",
    "MAX_HEADER_BYTES",
    "MAX_STREAM_ID_LEN",
    "PROTOCOL_VERSION",
    "Payload",
    "SOURCES",
    "SOURCE_LIVE",
    "SOURCE_SELF",
    "decode_frame",
    "encode_frame",
    "frames_topic",
    "valid_stream_id",
]

PROTOCOL_VERSION = 1
FRAMES_TOPIC_PREFIX = "frames/"
DEFAULT_FRAMES_ENDPOINT = "tcp://127.0.0.1:5557"
FRAMES_SNDHWM = 64  # publisher send high-water mark, messages per subscriber (zmq-frames.md section 3.1)
MAX_HEADER_BYTES = 65_536  # a header or event body above this is refused unread
MAX_STREAM_ID_LEN = 64

FORMAT_RGB24 = "rgb24"
FORMATS: tuple[str, ...] = (FORMAT_RGB24,)
SOURCE_LIVE = "live"
SOURCE_SELF = "self"
SOURCES: tuple[str, ...] = (SOURCE_LIVE, SOURCE_SELF)

# What a message part may be: bytes from recv_multipart(), or any buffer (zmq.Frame, memoryview) when the
# subscriber receives with copy=False.
BytesLike = bytes | bytearray | memoryview
Payload = bytes | bytearray | memoryview | np.ndarray

_PREFIX_BYTES = FRAMES_TOPIC_PREFIX.encode("ascii")
# fullmatch, not match with `$`: Python's `$` also matches before a trailing newline.
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_stream_id(stream_id: object) -> bool:
    """Whether `stream_id` is a str of 1-64 characters from A-Z, a-z, 0-9, '_' and '-'."""
    return isinstance(stream_id, str) and _STREAM_ID_RE.fullmatch(stream_id) is not None


def frames_topic(stream_id: str) -> bytes:
    """The topic (part 0) of the stream's frame messages: b'frames/<stream_id>'. Raises WireError for a bad id."""
    check_stream_id("stream id", stream_id)
    return _PREFIX_BYTES + stream_id.encode("ascii")


# ------------------------------------------------------------------------------------------ shared checks
# Used by events.py too; not re-exported by streamd.wire. Each raises WireError with `what` naming the value.
def check_stream_id(what: str, value: object) -> str:
    """A valid stream id, returned unchanged."""
    if not valid_stream_id(value):
        raise WireError(f"{what} must be 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_-], got {value!r}")
    assert isinstance(value, str)
    return value


def check_int(what: str, value: object, minimum: int) -> int:
    """An integer >= minimum; numpy integers are accepted and returned as int, bools are not integers here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise WireError(f"{what} must be an integer >= {minimum}, got {value!r}")
    number = operator.index(value)
    if number < minimum:
        raise WireError(f"{what} must be an integer >= {minimum}, got {number}")
    return number


def check_number(what: str, value: object, minimum: float, exclusive: bool) -> float:
    """A finite real number above (or at) minimum, returned as float."""
    bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise WireError(f"{what} must be a finite number {bound}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (exclusive and number == minimum):
        raise WireError(f"{what} must be a finite number {bound}, got {value!r}")
    return number


def check_str(what: str, value: object, choices: Sequence[str] | None = None) -> str:
    """A str (an Enum member stands for its value), optionally one of `choices`."""
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string, got {value!r}")
    value = str(value)  # a str subclass would otherwise leak into equality and repr
    if choices is not None and value not in choices:
        raise WireError(f"{what} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def freeze_extra(what: str, extra: Mapping[str, Any], reserved: frozenset[str]) -> Mapping[str, Any]:
    """A read-only copy of the unknown members, refusing names the protocol defines."""
    if not isinstance(extra, Mapping):
        raise WireError(f"{what} extra must be a mapping, got {type(extra).__name__}")
    for key in extra:
        if not isinstance(key, str):
            raise WireError(f"{what} extra member names must be strings, got {key!r}")
        if key in reserved:
            raise WireError(f"{what} extra member {key!r} clashes with a field the protocol defines")
    return MappingProxyType(dict(extra))


def _to_jsonable(value: Any) -> Any:
    """Plain dicts for the read-only mappings this module stores (json cannot encode a mappingproxy)."""
    if isinstance(value, Mapping):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def dump_json(obj: Mapping[str, Any], what: str) -> bytes:
    """Compact UTF-8 JSON for a header or event body, following the protocol's encoding rules."""
    try:
        text = json.dumps(_to_jsonable(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise WireError(f"{what} is not JSON-encodable: {exc}") from None
    data = text.encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise WireError(f"{what} is {len(data)} bytes encoded, over the {MAX_HEADER_BYTES}-byte limit")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise WireError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise WireError(f"{name} is not valid JSON")


def as_buffer(part: object, what: str) -> memoryview:
    """A flat byte view of one received part (bytes, bytearray, memoryview, zmq.Frame, ...)."""
    if isinstance(part, str):
        raise WireError(f"{what} must be bytes, got str")
    try:
        view = memoryview(part)  # type: ignore[arg-type]
    except TypeError:
        raise WireError(f"{what} must be bytes-like, got {type(part).__name__}") from None
    if not view.c_contiguous:
        raise WireError(f"{what} must be a contiguous buffer")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def load_json_object(part: object, what: str) -> dict[str, Any]:
    """Parse one part as a JSON object: at most MAX_HEADER_BYTES, UTF-8, no NaN/Infinity, unique names."""
    view = as_buffer(part, what)
    if view.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"{what} is {view.nbytes} bytes, over the {MAX_HEADER_BYTES}-byte limit")
    try:
        # decode first: json.loads(bytes) would also accept UTF-16 and UTF-32
        text = view.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not valid UTF-8: {exc}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except WireError as exc:
        raise WireError(f"{what} is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise WireError(f"{what} is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def check_version(obj: Mapping[str, Any], what: str) -> None:
    """Require an integer `v` this module implements; another version raises UnsupportedVersion."""
    if "v" not in obj:
        raise WireError(f"{what} has no 'v' (protocol version)")
    version = obj["v"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise WireError(f"{what} 'v' must be an integer, got {version!r}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"{what} has protocol version {version}; this receiver implements version {PROTOCOL_VERSION}"
        )


def check_required(obj: Mapping[str, Any], required: Sequence[str], what: str) -> None:
    """Name every missing required member at once."""
    missing = [name for name in required if name not in obj]
    if missing:
        raise WireError(f"{what} lacks required member(s): {', '.join(missing)}")


# ------------------------------------------------------------------------------------------------- header
_HEADER_REQUIRED: tuple[str, ...] = ("stream", "seq", "width", "height", "format", "pts_ns", "chunk", "source")
_HEADER_OPTIONAL: tuple[str, ...] = ("generation", "fps", "frame_in_chunk", "latency_s", "cond_frame")
_HEADER_NAMES = frozenset(("v",) + _HEADER_REQUIRED + _HEADER_OPTIONAL)


@dataclass(frozen=True)
class FrameHeader:
    """The JSON header (part 1) of a frame message, validated on construction.

    Optional members are None when absent and are then left out of the JSON. `extra` holds members this version
    does not define: decoding keeps them there, encoding writes them back, so a relay loses nothing. The
    protocol version is not a field: it is a property of the wire form (`encode_frame` writes
    PROTOCOL_VERSION, `decode_frame` accepts nothing else).
    """

    stream: str
    seq: int
    width: int
    height: int
    pts_ns: int
    chunk: int
    source: str
    format: str = FORMAT_RGB24
    generation: int | None = None
    fps: float | None = None
    frame_in_chunk: int | None = None
    latency_s: float | None = None
    cond_frame: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Normalising here (numpy ints -> int, enums -> str, extra -> read-only) keeps every header that
        # exists encodable, whoever built it. object.__setattr__ because the dataclass is frozen.
        values: dict[str, Any] = {
            "stream": check_stream_id("frame header 'stream'", self.stream),
            "seq": check_int("frame header 'seq'", self.seq, 0),
            "width": check_int("frame header 'width'", self.width, 1),
            "height": check_int("frame header 'height'", self.height, 1),
            "pts_ns": check_int("frame header 'pts_ns'", self.pts_ns, 0),
            "chunk": check_int("frame header 'chunk'", self.chunk, 0),
            "source": check_str("frame header 'source'", self.source, SOURCES),
            "format": check_str("frame header 'format'", self.format, FORMATS),
            "extra": freeze_extra("frame header", self.extra, _HEADER_NAMES),
        }
        if self.generation is not None:
            values["generation"] = check_int("frame header 'generation'", self.generation, 0)
        if self.fps is not None:
            values["fps"] = check_number("frame header 'fps'", self.fps, 0.0, exclusive=True)
        if self.frame_in_chunk is not None:
            values["frame_in_chunk"] = check_int("frame header 'frame_in_chunk'", self.frame_in_chunk, 0)
        if self.latency_s is not None:
            values["latency_s"] = check_number("frame header 'latency_s'", self.latency_s, 0.0, exclusive=False)
        if self.cond_frame is not None:
            values["cond_frame"] = check_int("frame header 'cond_frame'", self.cond_frame, 0)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def payload_size(self) -> int:
        """Bytes the payload must have: height * width * 3."""
        return self.height * self.width * 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """The payload as an array: (height, width, 3)."""
        return (self.height, self.width, 3)

    def to_dict(self) -> dict[str, Any]:
        """The header as the JSON object sent on the wire, `v` included, absent optionals left out."""
        obj: dict[str, Any] = {"v": PROTOCOL_VERSION}
        for name in _HEADER_REQUIRED + _HEADER_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                obj[name] = value
        obj.update(self.extra)
        return obj

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> FrameHeader:
        """Validate a received header object: version, required members, types; unknown members go to `extra`."""
        check_version(obj, "frame header")
        check_required(obj, _HEADER_REQUIRED, "frame header")
        for name in _HEADER_OPTIONAL:
            if name in obj and obj[name] is None:
                raise WireError(f"frame header '{name}' must be absent or a value, got null")
        known = {name: obj[name] for name in _HEADER_REQUIRED + _HEADER_OPTIONAL if name in obj}
        extra = {name: value for name, value in obj.items() if name not in _HEADER_NAMES}
        return cls(**known, extra=extra)


# ----------------------------------------------------------------------------------------------- messages
def encode_frame(header: FrameHeader, payload: Payload) -> list[bytes]:
    """The three parts [topic, header JSON, payload] of one frame message.

    `payload` is bytes, a bytearray, a C-contiguous memoryview, or a C-contiguous numpy uint8 array of shape
    (height, width, 3); its size must be height * width * 3. Raises WireError naming the mismatch. The payload
    is copied into a bytes object so that the message never aliases a buffer the caller may reuse.
    """
    if not isinstance(header, FrameHeader):
        raise WireError(f"header must be a FrameHeader, got {type(header).__name__}")
    expected = header.payload_size
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8:
            raise WireError(f"payload array must have dtype uint8, got {payload.dtype}")
        if payload.shape != header.shape:
            raise WireError(f"payload array has shape {payload.shape}, header says {header.shape}")
        if not payload.flags.c_contiguous:
            raise WireError("payload array must be C-contiguous (use numpy.ascontiguousarray)")
        data = payload.tobytes()
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        view = memoryview(payload)
        if not view.c_contiguous:
            raise WireError("payload memoryview must be C-contiguous")
        if view.nbytes != expected:
            raise WireError(
                f"payload has {view.nbytes} bytes, header says {header.height}x{header.width}x3 = {expected}"
            )
        data = payload if isinstance(payload, bytes) else view.tobytes()
    else:
        raise WireError(
            f"payload must be bytes, bytearray, memoryview or a numpy uint8 array, got {type(payload).__name__}"
        )
    return [frames_topic(header.stream), dump_json(header.to_dict(), "frame header"), data]


def decode_frame(parts: Sequence[BytesLike]) -> tuple[FrameHeader, np.ndarray]:
    """Check a received frame message and return its header and pixels.

    The pixels are a read-only uint8 array of shape (height, width, 3) viewing the payload part without a copy;
    copy it to modify it. Raises WireError (UnsupportedVersion for another protocol version) naming the failed
    check: part count, topic, header JSON, version, required members and types, topic/header stream, payload
    size.
    """
    if isinstance(parts, (bytes, bytearray, memoryview, str)):
        raise WireError("a frame message is a sequence of parts, not a single buffer")
    if len(parts) != 3:
        raise WireError(f"a frame message has 3 parts [topic, header, payload], got {len(parts)}")
    topic = as_buffer(parts[0], "frame topic").tobytes()
    if not topic.startswith(_PREFIX_BYTES):
        raise WireError(f"frame topic must start with {FRAMES_TOPIC_PREFIX!r}, got {topic[:80]!r}")
    try:
        topic_stream = topic[len(_PREFIX_BYTES):].decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"frame topic has a stream id that is not ASCII: {topic[:80]!r}") from None
    check_stream_id("frame topic stream id", topic_stream)
    header = FrameHeader.from_dict(load_json_object(parts[1], "frame header"))
    if header.stream != topic_stream:
        raise WireError(f"frame topic names stream {topic_stream!r} but the header says {header.stream!r}")
    payload = as_buffer(parts[2], "frame payload")
    if payload.nbytes != header.payload_size:
        raise WireError(
            f"frame payload has {payload.nbytes} bytes, header says "
            f"{header.height}x{header.width}x3 = {header.payload_size}"
        )
    pixels = np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)
    if pixels.flags.writeable:
        # a writable part (bytearray) would otherwise let callers scribble on the received message
        pixels.flags.writeable = False
    return header, pixels
