"""HTTP error bodies (protocols/http.md section 8) and the wire codec's exception type.

Every HTTP error response carries `{"error": <code>, "detail": <text>, "status": <int>}` as
`application/problem+json`. Clients branch on the code, so the codes are constants here and `error_body` refuses
to pair a known code with a status other than the one the specification gives it.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

ERROR_CONTENT_TYPE = "application/problem+json"

BAD_REQUEST = "bad-request"
BAD_STREAM_ID = "bad-stream-id"
BAD_SDP = "bad-sdp"
BAD_SDPFRAG = "bad-sdpfrag"
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not-found"
SESSION_NOT_FOUND = "session-not-found"
METHOD_NOT_ALLOWED = "method-not-allowed"
STREAM_IN_USE = "stream-in-use"
ETAG_MISMATCH = "etag-mismatch"
BODY_TOO_LARGE = "body-too-large"
UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
NO_VIDEO = "no-video"
ICE_RESTART_UNSUPPORTED = "ice-restart-unsupported"
IF_MATCH_REQUIRED = "if-match-required"
INTERNAL = "internal"
NOT_READY = "not-ready"
AT_CAPACITY = "at-capacity"

# Read-only so that no caller can change what the specification says at run time.
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        BAD_REQUEST: 400,
        BAD_STREAM_ID: 400,
        BAD_SDP: 400,
        BAD_SDPFRAG: 400,
        UNAUTHORIZED: 401,
        NOT_FOUND: 404,
        SESSION_NOT_FOUND: 404,
        METHOD_NOT_ALLOWED: 405,
        STREAM_IN_USE: 409,
        ETAG_MISMATCH: 412,
        BODY_TOO_LARGE: 413,
        UNSUPPORTED_MEDIA_TYPE: 415,
        NO_VIDEO: 422,
        ICE_RESTART_UNSUPPORTED: 422,
        IF_MATCH_REQUIRED: 428,
        INTERNAL: 500,
        NOT_READY: 503,
        AT_CAPACITY: 503,
    }
)

MAX_WHIP_BODY_BYTES = 65_536  # POST /whip and PATCH /whip/<id> bodies; larger ones get 413 body-too-large

_CODE_RE = re.compile(r"[a-z][a-z0-9-]*")


class WireError(ValueError):
    """A message or value does not follow the streamd wire protocols; the text names the failed check."""


class UnsupportedVersion(WireError):
    """A well-formed message of a protocol version this receiver does not implement: skip it, it is not a fault."""


def error_body(status: int, code: str, detail: str) -> dict[str, object]:
    """The JSON body of an HTTP error response.

    `status` must be an error status (400-599); `code` a lower-case hyphenated code, and when it is one of the
    codes of protocols/http.md, `status` must be the one listed for it there. Raises ValueError otherwise.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"error status must be an int in 400..599, got {status!r}")
    if not isinstance(code, str) or _CODE_RE.fullmatch(code) is None:
        raise ValueError(f"error code must match [a-z][a-z0-9-]*, got {code!r}")
    if not isinstance(detail, str):
        raise ValueError(f"error detail must be a str, got {type(detail).__name__}")
    expected = ERROR_STATUS.get(code)
    if expected is not None and expected != status:
        raise ValueError(f"error code {code!r} goes with status {expected}, not {status}")
    return {"error": code, "detail": detail, "status": status}
