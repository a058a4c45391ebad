"""streamd.wire: frame and event codecs, HTTP error bodies, and their agreement with the JSON Schemas and the
specifications in protocols/."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from streamd.wire import (
    DROPS,
    ERROR_STATUS,
    EVENTS_TOPIC,
    KNOWN_EVENTS,
    PROTOCOL_VERSION,
    SESSION_ENDED,
    SESSION_STARTED,
    STREAM_RESET,
    Event,
    FrameHeader,
    UnsupportedVersion,
    WireError,
    decode_event,
    decode_frame,
    encode_event,
    encode_frame,
    error_body,
    frames_topic,
    valid_stream_id,
)
from streamd.wire.schemas import SCHEMA_NAMES, load_schema, schema_dir

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "protocols"


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


def header(**overrides: Any) -> FrameHeader:
    fields: dict[str, Any] = dict(stream="cam1", seq=7, width=4, height=2, pts_ns=466_666_667, chunk=0,
                                  source="live")
    fields.update(overrides)
    return FrameHeader(**fields)


def full_header(**overrides: Any) -> FrameHeader:
    return header(generation=1, fps=15.0, frame_in_chunk=7, latency_s=1.25, **overrides)


def pixels(h: int = 2, w: int = 4) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def message(obj: dict[str, Any], topic: bytes = b"frames/cam1", payload: bytes | None = None) -> list[bytes]:
    """A frame message with a hand-written header object (payload sized from it when possible)."""
    if payload is None:
        try:
            payload = bytes(obj["width"] * obj["height"] * 3)
        except (KeyError, TypeError):
            payload = bytes(24)
    return [topic, json.dumps(obj).encode(), payload]


def header_obj(**overrides: Any) -> dict[str, Any]:
    obj = header().to_dict()
    obj.update(overrides)
    return obj


# ------------------------------------------------------------------------------------------------ stream ids
@pytest.mark.parametrize("stream_id", ["a", "cam1", "A-z_09", "-", "_", "x" * 64])
def test_valid_stream_ids(stream_id: str) -> None:
    assert valid_stream_id(stream_id)
    assert frames_topic(stream_id) == b"frames/" + stream_id.encode()


@pytest.mark.parametrize("stream_id", ["", "x" * 65, "a/b", "a b", "cam.1", "kamera\u00e9", "cam\n", "cam1\x00",
                                       None, b"cam1", 5])
def test_invalid_stream_ids(stream_id: object) -> None:
    assert not valid_stream_id(stream_id)
    with pytest.raises(WireError, match=r"1-64 characters of \[A-Za-z0-9_-\]"):
        frames_topic(stream_id)  # type: ignore[arg-type]
    with pytest.raises(WireError, match="'stream'"):
        header(stream=stream_id)


# ------------------------------------------------------------------------------------------------ frames
@pytest.mark.parametrize("kind", ["ndarray", "bytes", "bytearray", "memoryview"])
def test_frame_round_trip_payload_kinds(kind: str) -> None:
    img = pixels()
    payload: Any = {"ndarray": img, "bytes": img.tobytes(), "bytearray": bytearray(img.tobytes()),
                    "memoryview": memoryview(img)}[kind]
    parts = encode_frame(full_header(), payload)
    assert len(parts) == 3 and all(type(p) is bytes for p in parts)
    assert parts[0] == b"frames/cam1"
    assert parts[2] == img.tobytes()
    got, arr = decode_frame(parts)
    assert got == full_header()
    assert arr.dtype == np.uint8 and arr.shape == (2, 4, 3)
    np.testing.assert_array_equal(arr, img)


def test_decoded_pixels_are_a_read_only_view() -> None:
    parts = encode_frame(header(), pixels())
    parts[2] = bytearray(parts[2])  # type: ignore[call-overload]  # a writable buffer, as with copy=False
    _, arr = decode_frame(parts)
    assert not arr.flags.writeable
    assert np.shares_memory(arr, np.frombuffer(parts[2], dtype=np.uint8))
    with pytest.raises(ValueError):
        arr[0, 0, 0] = 1


def test_optional_fields_are_omitted_when_none() -> None:
    obj = json.loads(encode_frame(header(), pixels())[1])
    assert obj == {"v": 1, "stream": "cam1", "seq": 7, "width": 4, "height": 2, "format": "rgb24",
                   "pts_ns": 466_666_667, "chunk": 0, "source": "live"}
    got, _ = decode_frame(encode_frame(header(), pixels()))
    assert got.generation is None and got.fps is None and got.frame_in_chunk is None and got.latency_s is None


def test_header_json_is_compact_utf8_with_version_first() -> None:
    raw = encode_frame(full_header(), pixels())[1]
    assert raw.startswith(b'{"v":1,') and b" " not in raw
    assert len(raw) < 300


def test_encoded_header_validates_against_schema() -> None:
    v = validator("frame-header")
    for h in (header(), full_header(), header(source="self", extra={"future": [1, {"x": None}]})):
        v.validate(json.loads(encode_frame(h, pixels())[1]))


def test_decode_keeps_unknown_fields_in_extra_and_reencodes_them() -> None:
    obj = header_obj(zoom=2.5, tags={"a": [1, 2]}, note="hi")
    got, _ = decode_frame(message(obj))
    assert dict(got.extra) == {"zoom": 2.5, "tags": {"a": [1, 2]}, "note": "hi"}
    again = json.loads(encode_frame(got, pixels())[1])
    assert again == obj


def test_header_normalises_numpy_scalars_and_enums() -> None:
    from enum import Enum

    class Source(str, Enum):
        SELF = "self"

    h = header(seq=np.int64(3), pts_ns=np.uint64(10), source=Source.SELF, fps=np.float32(15), latency_s=1)
    assert type(h.seq) is int and type(h.pts_ns) is int and h.source == "self" and type(h.source) is str
    assert type(h.fps) is float and type(h.latency_s) is float
    assert json.loads(encode_frame(h, pixels())[1])["source"] == "self"


def test_header_is_frozen_and_hashable() -> None:
    h = header(extra={"x": 1})
    with pytest.raises(AttributeError):
        h.seq = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        h.extra["y"] = 2  # type: ignore[index]
    assert hash(h) == hash(header(extra={"x": 1}))


@pytest.mark.parametrize(
    ("overrides", "message_re"),
    [
        ({"seq": -1}, r"'seq' must be an integer >= 0, got -1"),
        ({"seq": True}, r"'seq' must be an integer"),
        ({"seq": 1.0}, r"'seq' must be an integer"),
        ({"width": 0}, r"'width' must be an integer >= 1"),
        ({"height": -2}, r"'height' must be an integer >= 1"),
        ({"pts_ns": "0"}, r"'pts_ns' must be an integer"),
        ({"chunk": -1}, r"'chunk' must be an integer >= 0"),
        ({"source": "camera"}, r"'source' must be one of 'live', 'self'"),
        ({"format": "yuv420p"}, r"'format' must be one of 'rgb24'"),
        ({"fps": 0}, r"'fps' must be a finite number > 0"),
        ({"fps": float("nan")}, r"'fps' must be a finite number"),
        ({"latency_s": -0.5}, r"'latency_s' must be a finite number >= 0"),
        ({"latency_s": float("inf")}, r"'latency_s' must be a finite number"),
        ({"generation": -1}, r"'generation' must be an integer >= 0"),
        ({"frame_in_chunk": "3"}, r"'frame_in_chunk' must be an integer"),
        ({"extra": {"seq": 1}}, r"extra member 'seq' clashes"),
        ({"extra": {"v": 2}}, r"extra member 'v' clashes"),
    ],
)
def test_header_construction_rejects_bad_values(overrides: dict[str, Any], message_re: str) -> None:
    with pytest.raises(WireError, match=message_re):
        header(**overrides)


def test_extra_that_is_not_json_is_refused_on_encode() -> None:
    with pytest.raises(WireError, match="frame header is not JSON-encodable"):
        encode_frame(header(extra={"when": object()}), pixels())
    with pytest.raises(WireError, match="not JSON-encodable"):
        encode_frame(header(extra={"x": float("nan")}), pixels())


# -- encode: payload checks
@pytest.mark.parametrize(
    ("payload", "message_re"),
    [
        (bytes(23), r"payload has 23 bytes, header says 2x4x3 = 24"),
        (bytearray(25), r"payload has 25 bytes, header says 2x4x3 = 24"),
        (memoryview(bytes(12)), r"payload has 12 bytes"),
        (np.zeros((2, 4, 3), np.float32), r"dtype uint8, got float32"),
        (np.zeros((4, 2, 3), np.uint8), r"shape \(4, 2, 3\), header says \(2, 4, 3\)"),
        (np.zeros((2, 4, 4), np.uint8), r"shape \(2, 4, 4\)"),
        (np.zeros(24, np.uint8), r"shape \(24,\)"),
        (np.zeros((2, 8, 3), np.uint8)[:, ::2], r"C-contiguous"),
        (np.zeros((4, 2, 3), np.uint8).transpose(1, 0, 2), r"C-contiguous"),
        (memoryview(bytes(48))[::2], r"memoryview must be C-contiguous"),
        ("x" * 24, r"payload must be bytes, bytearray, memoryview or a numpy uint8 array, got str"),
        ([0] * 24, r"got list"),
    ],
)
def test_encode_frame_rejects_bad_payloads(payload: Any, message_re: str) -> None:
    with pytest.raises(WireError, match=message_re):
        encode_frame(header(), payload)


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError) and issubclass(UnsupportedVersion, WireError)


# -- decode: every check, with its message
@pytest.mark.parametrize("count", [0, 1, 2, 4, 5])
def test_decode_frame_rejects_wrong_part_counts(count: int) -> None:
    parts = (encode_frame(header(), pixels()) + [b"x", b"y"])[:count]
    with pytest.raises(WireError, match=rf"frame message has 3 parts \[topic, header, payload\], got {count}"):
        decode_frame(parts)


def test_decode_frame_rejects_a_single_buffer() -> None:
    with pytest.raises(WireError, match="sequence of parts, not a single buffer"):
        decode_frame(b"frames/cam1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("topic", "message_re"),
    [
        (b"events", r"frame topic must start with 'frames/'"),
        (b"frame/cam1", r"must start with 'frames/'"),
        (b"frames/", r"frame topic stream id must be 1-64 characters"),
        (b"frames/cam 1", r"frame topic stream id must be 1-64"),
        (b"frames/" + b"x" * 65, r"frame topic stream id must be 1-64"),
        (b"frames/cam\xc3\xa9", r"not ASCII"),
    ],
)
def test_decode_frame_rejects_bad_topics(topic: bytes, message_re: str) -> None:
    parts = encode_frame(header(), pixels())
    with pytest.raises(WireError, match=message_re):
        decode_frame([topic, parts[1], parts[2]])


def test_decode_frame_rejects_topic_header_mismatch() -> None:
    parts = encode_frame(header(stream="cam1"), pixels())
    with pytest.raises(WireError, match=r"frame topic names stream 'cam10' but the header says 'cam1'"):
        decode_frame([b"frames/cam10", parts[1], parts[2]])


@pytest.mark.parametrize(
    ("raw", "message_re"),
    [
        (b"", r"frame header is not valid JSON"),
        (b"{", r"frame header is not valid JSON"),
        (b"not json", r"frame header is not valid JSON"),
        (b"[1, 2]", r"frame header must be a JSON object, got list"),
        (b'"str"', r"must be a JSON object, got str"),
        (b"\xff\xfe{}", r"frame header is not valid UTF-8"),
        (b'\xef\xbb\xbf{"v":1}', r"frame header is not valid JSON"),  # a byte-order mark
        ('{"v":1}'.encode("utf-16"), r"not valid UTF-8"),
        (b'{"v":1,"fps":NaN}', r"not valid JSON: NaN is not valid JSON"),
        (b'{"v":1,"fps":Infinity}', r"Infinity is not valid JSON"),
        (b'{"v":1,"seq":1,"seq":2}', r"not valid JSON: duplicate member 'seq'"),
        (b"[" * 100_000, r"over the 65536-byte limit"),
        (b"[" * 60_000 + b"]" * 60_000, r"over the 65536-byte limit"),
        (b"[" * 30_000 + b"]" * 30_000, r"must be a JSON object|nested too deeply"),
    ],
)
def test_decode_frame_rejects_bad_json(raw: bytes, message_re: str) -> None:
    with pytest.raises(WireError, match=message_re):
        decode_frame([b"frames/cam1", raw, bytes(24)])


def test_decode_frame_rejects_oversized_header_even_if_valid() -> None:
    obj = header_obj(padding="x" * 70_000)
    with pytest.raises(WireError, match=r"frame header is \d+ bytes, over the 65536-byte limit"):
        decode_frame(message(obj))
    with pytest.raises(WireError, match="over the 65536-byte limit"):
        encode_frame(header(extra={"padding": "x" * 70_000}), pixels())


@pytest.mark.parametrize("version", [2, 0, 99])
def test_decode_frame_skips_other_versions(version: int) -> None:
    with pytest.raises(UnsupportedVersion, match=rf"protocol version {version}; this receiver implements version 1"):
        decode_frame(message(header_obj(v=version)))


@pytest.mark.parametrize(("version", "message_re"), [("1", r"'v' must be an integer, got '1'"),
                                                    (1.0, r"'v' must be an integer, got 1.0"),
                                                    (True, r"'v' must be an integer, got True"),
                                                    (None, r"'v' must be an integer, got None")])
def test_decode_frame_rejects_malformed_versions(version: Any, message_re: str) -> None:
    with pytest.raises(WireError, match=message_re) as info:
        decode_frame(message(header_obj(v=version)))
    assert not isinstance(info.value, UnsupportedVersion)


def test_decode_frame_requires_a_version() -> None:
    obj = header_obj()
    del obj["v"]
    with pytest.raises(WireError, match=r"frame header has no 'v' \(protocol version\)"):
        decode_frame(message(obj))


def test_decode_frame_names_every_missing_field() -> None:
    obj = header_obj()
    for name in ("seq", "source", "chunk"):
        del obj[name]
    with pytest.raises(WireError, match=r"frame header lacks required member\(s\): seq, chunk, source"):
        decode_frame(message(obj))


@pytest.mark.parametrize(
    ("overrides", "message_re"),
    [
        ({"seq": "7"}, r"'seq' must be an integer"),
        ({"seq": 7.0}, r"'seq' must be an integer"),
        ({"width": False}, r"'width' must be an integer"),
        ({"stream": 5}, r"'stream' must be 1-64"),
        ({"format": "rgba"}, r"'format' must be one of 'rgb24', got 'rgba'"),
        ({"source": "LIVE"}, r"'source' must be one of"),
        ({"fps": None}, r"'fps' must be absent or a value, got null"),
        ({"fps": "15"}, r"'fps' must be a finite number"),
        ({"latency_s": -1}, r"'latency_s' must be a finite number >= 0"),
    ],
)
def test_decode_frame_rejects_bad_field_types(overrides: dict[str, Any], message_re: str) -> None:
    with pytest.raises(WireError, match=message_re):
        decode_frame(message(header_obj(**overrides), payload=bytes(24)))


@pytest.mark.parametrize("size", [0, 23, 25, 48])
def test_decode_frame_rejects_wrong_payload_size(size: int) -> None:
    parts = encode_frame(header(), pixels())
    with pytest.raises(WireError, match=rf"frame payload has {size} bytes, header says 2x4x3 = 24"):
        decode_frame([parts[0], parts[1], bytes(size)])


def test_decode_frame_rejects_parts_that_are_not_bytes() -> None:
    parts = encode_frame(header(), pixels())
    with pytest.raises(WireError, match="frame header must be bytes, got str"):
        decode_frame([parts[0], parts[1].decode(), parts[2]])  # type: ignore[list-item]
    with pytest.raises(WireError, match="frame payload must be bytes-like, got int"):
        decode_frame([parts[0], parts[1], 24])  # type: ignore[list-item]


def test_decode_frame_accepts_memoryviews_of_any_format() -> None:
    img = pixels()
    parts = encode_frame(header(), img)
    as_u16 = memoryview(np.frombuffer(parts[2], dtype=np.uint16))
    _, arr = decode_frame([memoryview(parts[0]), bytearray(parts[1]), as_u16])
    np.testing.assert_array_equal(arr, img)


# ------------------------------------------------------------------------------------------------ events
def test_event_round_trips_for_every_known_name() -> None:
    events = [
        Event(SESSION_STARTED, "cam1", time_ns=1, width=832, height=480, generation=0),
        Event(SESSION_ENDED, "cam1", time_ns=2, reason="media-timeout"),
        Event(STREAM_RESET, "cam1", time_ns=3, generation=4, reason="command"),
        Event(DROPS, "cam1", time_ns=4, dropped=16, reason="output-full", details={"queue": 8}),
    ]
    assert {e.event for e in events} == KNOWN_EVENTS
    v = validator("event")
    for event in events:
        parts = encode_event(event)
        assert parts[0] == EVENTS_TOPIC == b"events" and len(parts) == 2
        v.validate(json.loads(parts[1]))
        assert decode_event(parts) == event
        assert event.known


def test_event_time_defaults_to_now() -> None:
    import time

    before = time.time_ns()
    event = Event(SESSION_ENDED, "cam1")
    assert before <= event.time_ns <= time.time_ns()


def test_unknown_event_names_and_fields_decode() -> None:
    body = {"v": 1, "event": "model-swapped", "stream": "cam1", "time_ns": 5, "model": "x", "reason": "ops"}
    event = decode_event([b"events", json.dumps(body).encode()])
    assert event.event == "model-swapped" and not event.known
    assert event.reason == "ops" and dict(event.extra) == {"model": "x"}
    assert json.loads(encode_event(event)[1]) == body
    validator("event").validate(body)


@pytest.mark.parametrize(
    ("kwargs", "message_re"),
    [
        ({"event": SESSION_STARTED, "width": 832}, r"'session-started' event must carry 'height'"),
        ({"event": STREAM_RESET}, r"'stream-reset' event must carry 'generation'"),
        ({"event": DROPS}, r"'drops' event must carry 'dropped'"),
        ({"event": DROPS, "dropped": -1}, r"'dropped' must be an integer >= 0"),
        ({"event": ""}, r"'event' must be a non-empty string"),
        ({"event": 3}, r"'event' must be a string"),
        ({"event": SESSION_ENDED, "stream": "a/b"}, r"'stream' must be 1-64"),
        ({"event": SESSION_ENDED, "time_ns": -1}, r"'time_ns' must be an integer >= 0"),
        ({"event": SESSION_ENDED, "reason": 5}, r"'reason' must be a string"),
        ({"event": SESSION_ENDED, "details": [1]}, r"'details' must be an object"),
        ({"event": SESSION_ENDED, "extra": {"stream": "x"}}, r"extra member 'stream' clashes"),
    ],
)
def test_event_construction_rejects_bad_values(kwargs: dict[str, Any], message_re: str) -> None:
    kwargs.setdefault("stream", "cam1")
    with pytest.raises(WireError, match=message_re):
        Event(**kwargs)


def test_event_schema_and_codec_agree_on_per_event_requirements() -> None:
    v = validator("event")
    for body in ({"event": DROPS}, {"event": STREAM_RESET}, {"event": SESSION_STARTED, "height": 4}):
        obj = {"v": 1, "stream": "cam1", "time_ns": 1, **body}
        assert not v.is_valid(obj)
        with pytest.raises(WireError, match="event must carry"):
            decode_event([b"events", json.dumps(obj).encode()])


@pytest.mark.parametrize(
    ("parts", "message_re", "error"),
    [
        ([b"events"], r"event message has 2 parts \[topic, body\], got 1", WireError),
        ([b"events", b"{}", b""], r"event message has 2 parts \[topic, body\], got 3", WireError),
        ([b"event", b"{}"], r"event topic must be b'events', got b'event'", WireError),
        ([b"eventsX", b"{}"], r"event topic must be b'events'", WireError),
        ([b"events", b"{"], r"event is not valid JSON", WireError),
        ([b"events", b"[]"], r"event must be a JSON object, got list", WireError),
        ([b"events", b'{"event":"drops"}'], r"event has no 'v'", WireError),
        ([b"events", b'{"v":2,"event":"drops"}'], r"event has protocol version 2", UnsupportedVersion),
        ([b"events", b'{"v":1,"event":"drops"}'], r"event lacks required member\(s\): stream, time_ns", WireError),
        ([b"events", b'{"v":1,"event":"x","stream":"s","time_ns":1,"reason":null}'],
         r"'reason' must be absent or a value, got null", WireError),
        ([b"events", b'{"v":1,"event":"x","stream":"s","time_ns":1.5}'], r"'time_ns' must be an integer",
         WireError),
    ],
)
def test_decode_event_rejections(parts: list[bytes], message_re: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=message_re):
        decode_event(parts)


def test_event_details_are_read_only_and_encodable() -> None:
    event = Event(DROPS, "cam1", dropped=1, details={"nested": {"a": [1, 2]}})
    with pytest.raises(TypeError):
        event.details["x"] = 1  # type: ignore[index]
    assert json.loads(encode_event(event)[1])["details"] == {"nested": {"a": [1, 2]}}


# ------------------------------------------------------------------------------------------------ schemas
@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_valid_draft_2020_12_schemas(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # receivers ignore unknown members, except in `params` commands, where an unknown parameter is an error
    assert schema["additionalProperties"] is (name != "mqtt-command-params")


def test_schema_folder_holds_exactly_the_known_schemas() -> None:
    assert schema_dir() == PROTOCOLS / "schemas"
    assert sorted(p.stem for p in schema_dir().glob("*.json")) == sorted(SCHEMA_NAMES)


def test_load_schema_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown schema '../pyproject'"):
        load_schema("../pyproject")
    assert load_schema("event") is not load_schema("event")  # a fresh dict each time


@pytest.mark.parametrize(
    "bad",
    [
        {"v": 2}, {"v": "1"}, {"seq": -1}, {"seq": 1.5}, {"seq": True}, {"width": 0}, {"height": "2"},
        {"format": "yuv"}, {"source": "both"}, {"stream": ""}, {"stream": "a b"}, {"stream": "x" * 65},
        {"pts_ns": -5}, {"chunk": None}, {"generation": -1}, {"fps": 0}, {"fps": None}, {"frame_in_chunk": 1.5},
        {"latency_s": -0.1},
    ],
)
def test_header_schema_and_decoder_reject_the_same_headers(bad: dict[str, Any]) -> None:
    obj = header_obj(**bad)
    assert not validator("frame-header").is_valid(obj)
    with pytest.raises(WireError):
        FrameHeader.from_dict(obj)


def test_header_schema_and_decoder_require_the_same_fields() -> None:
    required = set(load_schema("frame-header")["required"])
    assert required == {"v", "stream", "seq", "width", "height", "format", "pts_ns", "chunk", "source"}
    for name in required:
        obj = header_obj()
        del obj[name]
        assert not validator("frame-header").is_valid(obj)
        with pytest.raises(WireError):
            FrameHeader.from_dict(obj)


def test_health_schema() -> None:
    v = validator("health")
    assert v.is_valid({"status": "ok"})
    assert v.is_valid({"status": "not-ready", "reason": "model-loading", "extra": 1})
    assert not v.is_valid({"status": "not-ready"})
    assert not v.is_valid({"status": "degraded"})
    assert not v.is_valid({})


# ------------------------------------------------------------------------------------------------ HTTP errors
def test_error_body_shape_and_schema() -> None:
    body = error_body(422, "no-video", "the offer has no video section")
    assert body == {"error": "no-video", "detail": "the offer has no video section", "status": 422}
    validator("error").validate(body)
    for code, status in ERROR_STATUS.items():
        validator("error").validate(error_body(status, code, "x"))


@pytest.mark.parametrize(
    ("args", "message_re"),
    [
        ((200, "bad-sdp", "x"), r"error status must be an int in 400..599, got 200"),
        ((600, "x", "x"), r"400..599"),
        ((True, "x", "x"), r"400..599"),
        ((400, "Bad_SDP", "x"), r"error code must match \[a-z\]\[a-z0-9-\]\*, got 'Bad_SDP'"),
        ((400, "", "x"), r"error code must match"),
        ((400, "bad-sdp", None), r"error detail must be a str"),
        ((500, "no-video", "x"), r"error code 'no-video' goes with status 422, not 500"),
    ],
)
def test_error_body_rejects_bad_arguments(args: tuple[Any, ...], message_re: str) -> None:
    with pytest.raises(ValueError, match=message_re):
        error_body(*args)


def test_error_body_allows_codes_outside_the_spec() -> None:
    assert error_body(418, "teapot", "short and stout")["status"] == 418


def test_error_codes_match_http_spec() -> None:
    text = (PROTOCOLS / "http.md").read_text()
    section = text.split("All codes:", 1)[1]
    table = dict(re.findall(r"^\| `([a-z][a-z0-9-]*)` \| (\d{3})", section, flags=re.M))
    assert {code: int(status) for code, status in table.items()} == dict(ERROR_STATUS)
    # every code used in a status table elsewhere in the spec is a known code with the same status
    for status, code in re.findall(r"^\| (\d{3}) \| `([a-z][a-z0-9-]*)` \|", text, flags=re.M):
        assert ERROR_STATUS[code] == int(status), code


# ------------------------------------------------------------------------------------------------ the spec
def json_blocks(path: Path) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", path.read_text(), flags=re.S)]


def test_spec_examples_validate_and_decode() -> None:
    frame_example, event_example = json_blocks(PROTOCOLS / "zmq-frames.md")
    validator("frame-header").validate(frame_example)
    h = FrameHeader.from_dict(frame_example)
    assert h.pts_ns == round(h.seq * 1_000_000_000 / h.fps)  # the example's arithmetic holds
    validator("event").validate(event_example)
    Event.from_dict(event_example)
    (error_example,) = json_blocks(PROTOCOLS / "http.md")
    validator("error").validate(error_example)
    assert error_body(error_example["status"], error_example["error"], error_example["detail"]) == error_example


def test_protocol_version_is_one() -> None:
    assert PROTOCOL_VERSION == 1
    assert "streamd frames protocol, version 1" in (PROTOCOLS / "zmq-frames.md").read_text()


def test_wire_imports_only_stdlib_numpy_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    for path in sorted((REPO / "streamd" / "wire").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1, f"{path.name} imports from outside streamd.wire"
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


# ------------------------------------------------------------------------------------------------ over ZeroMQ
def test_round_trip_over_a_real_xpub_socket() -> None:
    import zmq  # a runtime dependency of streamd

    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, 64)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind("inproc://wire-test")
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect("inproc://wire-test")
        sub.setsockopt(zmq.SUBSCRIBE, b"frames/cam1")
        sub.setsockopt(zmq.SUBSCRIBE, b"events")
        assert pub.poll(2000) and pub.recv() == b"\x01frames/cam1"  # XPUB sees the subscription: no slow joiner
        assert pub.poll(2000) and pub.recv() == b"\x01events"

        img = pixels(48, 64)
        pub.send_multipart(encode_frame(header(stream="cam10", width=64, height=48), img))  # prefix overmatch
        pub.send_multipart(encode_frame(full_header(width=64, height=48), img))
        pub.send_multipart(encode_event(Event(DROPS, "cam1", dropped=2)))

        assert sub.poll(2000)
        first = sub.recv_multipart(copy=False)
        assert first[0].bytes == b"frames/cam10"  # what the spec tells subscribers to filter out themselves
        assert sub.poll(2000)
        got, arr = decode_frame(sub.recv_multipart(copy=False))  # zmq.Frame parts, no copy
        assert got == full_header(width=64, height=48)
        np.testing.assert_array_equal(arr, img)
        assert sub.poll(2000)
        assert decode_event(sub.recv_multipart()).dropped == 2
    finally:
        ctx.destroy(linger=0)
