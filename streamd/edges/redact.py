"""Client input quoted back in error details and log lines: bounded, printable, and never a credential.

A detail (protocols/http.md section 12) may quote what the client sent (a broken header line, an SDP line) so
that the client can see what was wrong. The same text goes to the log, so it must not carry a bearer token (an
`Authorization` header the parser choked on quotes the token) nor grow with the request.
"""

from __future__ import annotations

import re

MAX_QUOTE_CHARS = 160  # the longest piece of client input quoted in a detail or a log line

# an Authorization (or Proxy-Authorization) header value, or a bare bearer credential, up to the end of the line
# or of a quoted repr; what follows the header name is dropped whatever its scheme
_CREDENTIAL = re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*)[^\r\n'\"]*|(bearer\s+)[^\s'\"\\]+")


def redact(text: str) -> str:
    """`text` with every Authorization value and bearer token replaced by `<redacted>`."""
    return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


def quote_client(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """Client input fit to quote: credentials redacted, non-printable characters escaped, at most `limit`
    characters (cut with "...")."""
    clean = redact(text)
    clean = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in clean)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."
