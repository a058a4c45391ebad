"""Bearer tokens by role, and the brute-force backoff that guards them (protocols/http.md section 3).

Roles: `ingest` (WHIP), `view` (WHEP, `/api/status`), `control` (`/api/cmd`). `http.token` opens every door;
`http.ingest_token`, `view_token` and `control_token` open their own (a control token may also read the status).
With no token at all every door is open (loopback only, unless `http.allow_unauthenticated`); with any token set,
every door needs a token that opens it.

Backoff: failed authentications (a request whose token opens nothing on the requested door: an unknown token,
or another role's) are counted per client address; only a token that opens the door clears the count.
`FAILURES_BEFORE_BACKOFF` failures within `WINDOW_S` block the address for `FIRST_DELAY_S`; each further failure
after a block doubles the delay, up to `MAX_DELAY_S`. A blocked address gets 429 with `Retry-After` on every door
before its token is even looked at, with or without one (the block is on the address; checking first costs a
blocked sender no comparisons and tells it nothing); other addresses are never affected. At most `MAX_CLIENTS`
addresses are tracked (least recently failed forgotten first), so memory stays below about 1 MiB whatever the
number of attackers.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ROLES = ("ingest", "view", "control")
# which configured tokens (HttpSettings.tokens() keys) open each role's doors
ROLE_TOKENS: Mapping[str, tuple[str, ...]] = {
    "ingest": ("all", "ingest"),
    "view": ("all", "view", "control"),
    "control": ("all", "control"),
}

FAILURES_BEFORE_BACKOFF = 5  # wrong tokens within WINDOW_S before the address is blocked
WINDOW_S = 60.0  # failures older than this (with no block in force) are forgotten
FIRST_DELAY_S = 1.0  # the first block; each failure after a block doubles it
MAX_DELAY_S = 300.0  # the longest block
MAX_CLIENTS = 4096  # addresses tracked at most (about 200 bytes each)

CHALLENGE = 'Bearer realm="streamd"'


class AuthRefused(Exception):
    """A request the token check refuses: status 401 (no or wrong token), 403 (wrong role) or 429 (backoff)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


@dataclass
class _Record:
    """One client address's recent failures."""

    failures: int
    window_start: float
    last_failure: float
    blocked_until: float = 0.0
    next_delay: float = FIRST_DELAY_S


class AuthThrottle:
    """Per-address failure counts and blocks (bounded: `max_clients` addresses, oldest forgotten first)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS) -> None:
        self._clock = clock
        self.max_clients = max_clients
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def retry_after(self, address: str) -> float | None:
        """Seconds the address stays blocked; None when it is not blocked."""
        record = self._records.get(address)
        if record is None:
            return None
        left = record.blocked_until - self._clock()
        return left if left > 0 else None

    def failed(self, address: str) -> None:
        """Count a failed authentication from `address`; it may start or lengthen a block."""
        now = self._clock()
        record = self._records.get(address)
        if record is None:
            record = _Record(0, now, now)
            self._records[address] = record
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)
        elif now - max(record.last_failure, record.blocked_until) > WINDOW_S:
            # quiet for a whole window (and any block over): start again from nothing
            record.failures, record.window_start, record.blocked_until = 0, now, 0.0
            record.next_delay = FIRST_DELAY_S
        elif record.failures < FAILURES_BEFORE_BACKOFF and now - record.window_start > WINDOW_S:
            record.failures, record.window_start = 0, now
        self._records.move_to_end(address)
        record.failures += 1
        record.last_failure = now
        if record.failures >= FAILURES_BEFORE_BACKOFF:
            record.blocked_until = now + record.next_delay
            record.next_delay = min(record.next_delay * 2, MAX_DELAY_S)

    def succeeded(self, address: str) -> None:
        """A correct token from `address`: forget its failures."""
        self._records.pop(address, None)


class TokenCheck:
    """Decides whether a request's `Authorization` header opens a role's door."""

    def __init__(self, tokens: Mapping[str, str], throttle: AuthThrottle | None = None,
                 on_failure: Callable[[], None] | None = None, on_throttled: Callable[[], None] | None = None) -> None:
        # bytes once, at start: compare_digest wants equal types, and a header is never longer than 8 KiB
        self._tokens = {role: token.encode("ascii") for role, token in tokens.items()}
        self.throttle = throttle if throttle is not None else AuthThrottle()  # (an empty one is falsy)
        self._on_failure = on_failure or (lambda: None)
        self._on_throttled = on_throttled or (lambda: None)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (else every door is open)."""
        return bool(self._tokens)

    def check(self, role: str, header: str | None, address: str) -> None:
        """Return when `header` opens `role`'s door; raise AuthRefused (401, 403 or 429) otherwise."""
        if not self._tokens:
            return
        left = self.throttle.retry_after(address)
        if left is not None:
            self._on_throttled()
            raise AuthRefused(429, "too-many-requests",
                              f"too many failed authentications from this address; retry in {math.ceil(left)} s",
                              {"Retry-After": str(math.ceil(left))})
        scheme, _, given = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer":
            raise AuthRefused(401, "unauthorized", "a bearer token is required", {"WWW-Authenticate": CHALLENGE})
        presented = given.strip()
        # A header with non-ASCII bytes cannot be any token (they are ASCII); comparing it would mean encoding
        # text that aiohttp decoded with surrogate escapes, which raises.
        data = presented.encode("ascii") if presented.isascii() else b""
        matched = set()
        for role_name, token in self._tokens.items():  # every token compared: timing reveals no role
            if hmac.compare_digest(data, token):
                matched.add(role_name)
        if matched & set(ROLE_TOKENS[role]):
            self.throttle.succeeded(address)  # only a token that opens this door clears the record
            return
        # Another role's token opens nothing here: it counts as a failure too, or a guesser holding any valid
        # token (an ingest token, say) could clear its record between guesses and never be slowed down.
        self.throttle.failed(address)
        self._on_failure()
        if not matched:
            raise AuthRefused(401, "unauthorized", "the bearer token is not valid",
                              {"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'})
        raise AuthRefused(403, "forbidden", f"this token does not open the {role} role's doors",
                          {"WWW-Authenticate": f'{CHALLENGE}, error="insufficient_scope", scope="{role}"'})
