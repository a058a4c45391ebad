"""HTTP error bodies (protocols/http.md section 8) and the wire codec's exception type.

Every HTTP error response carries `{"error": <code>, "detail": <text>, "status": <int>}` as
`application/problem+json`. Clients branch on the code, so `ERROR_STATUS` is the specification's table of codes
and their statuses, and `error_body` refuses to pair a known code with any other status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

ERROR_CONTENT_TYPE = "application/problem+json"

# protocols/http.md section 8, code -> status (tests hold the two equal). Read-only so that no caller can change
# what the specification says at run time.
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "bad-request": 400,
        "bad-stream-id": 400,
        "bad-sdp": 400,
        "bad-sdpfrag": 400,
        "unauthorized": 401,
        "forbidden": 403,
        "not-found": 404,
        "session-not-found": 404,
        "method-not-allowed": 405,
        "request-timeout": 408,
        "stream-in-use": 409,
        "etag-mismatch": 412,
        "body-too-large": 413,
        "unsupported-media-type": 415,
        "expectation-failed": 417,
        "no-video": 422,
        "ice-restart-unsupported": 422,
        "if-match-required": 428,
        "too-many-requests": 429,
        "internal": 500,
        "not-ready": 503,
        "at-capacity": 503,
        "draining": 503,
    }
)

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
