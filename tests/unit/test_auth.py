"""Bearer tokens by role and the brute-force backoff (streamd/edges/auth.py), on a fake clock."""

from __future__ import annotations

import sys

import pytest

from streamd.edges.auth import (
    FAILURES_BEFORE_BACKOFF,
    MAX_CLIENTS,
    MAX_DELAY_S,
    WINDOW_S,
    AuthRefused,
    AuthThrottle,
    TokenCheck,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(check: TokenCheck, role: str, header: str | None, address: str = "192.0.2.1") -> AuthRefused:
    with pytest.raises(AuthRefused) as info:
        check.check(role, header, address)
    return info.value


def test_the_stated_figures() -> None:
    # protocols/http.md section 3.3 and the README state these; a change must change the docs too
    assert (FAILURES_BEFORE_BACKOFF, WINDOW_S, MAX_DELAY_S, MAX_CLIENTS) == (5, 60.0, 300.0, 4096)


def test_backoff_starts_after_five_failures_and_doubles_to_the_cap() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    for _ in range(FAILURES_BEFORE_BACKOFF - 1):
        throttle.failed("a")
        assert throttle.retry_after("a") is None
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(1.0)
    delays = []
    for _ in range(12):
        clock.now += throttle.retry_after("a") or 0.0  # wait the block out, then fail again
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        delays.append(throttle.retry_after("a"))
    assert delays[:9] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert max(delays) == MAX_DELAY_S
    assert throttle.retry_after("b") is None  # another address is never affected


def test_success_and_quiet_windows_forget() -> None:
    clock = Clock()
    throttle = AuthThrottle(clock)
    for _ in range(4):
        throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is None and len(throttle) == 1
    # four failures spread over more than a window never block
    throttle = AuthThrottle(clock)
    for _ in range(12):
        throttle.failed("a")
        clock.now += WINDOW_S / 3
    assert throttle.retry_after("a") is None
    # a blocked address quiet for a window after its block starts from one second again
    throttle = AuthThrottle(clock)
    for _ in range(7):
        throttle.failed("a")
        clock.now += throttle.retry_after("a") or 0.0
    clock.now += WINDOW_S + 1
    for _ in range(5):
        throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(1.0)


def test_memory_is_bounded_by_max_clients() -> None:
    throttle = AuthThrottle(Clock(), max_clients=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    # the full-size table: the records and their keys stay around a megabyte
    big = AuthThrottle(Clock())
    for i in range(MAX_CLIENTS + 500):
        big.failed(f"2001:db8::{i:x}")
    assert len(big) == MAX_CLIENTS
    per_record = sys.getsizeof(next(iter(big._records.values())).__dict__) + 100  # noqa: SLF001
    assert MAX_CLIENTS * per_record < 2 * 1024 * 1024


def test_challenges_and_roles() -> None:
    check = TokenCheck({"ingest": "ingest-token", "view": "view-token-1", "control": "control-token"})
    assert refusal(check, "ingest", None).headers["WWW-Authenticate"] == 'Bearer realm="streamd"'
    assert refusal(check, "ingest", "Basic dXNlcjpwYXNz").status == 401
    wrong = refusal(check, "ingest", "Bearer wrong-token")
    assert wrong.status == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    # non-ASCII (aiohttp decodes header bytes with surrogate escapes): a 401, not an exception
    for header in ("Bearer s\xe9cret", "Bearer s\udce9cret", "Bearer \u2603"):
        assert refusal(check, "view", header, address=f"x{header}").status == 401
    check.check("ingest", "Bearer ingest-token", "a")
    check.check("view", "Bearer view-token-1", "a")
    check.check("view", "Bearer control-token", "a")  # control may read the status
    check.check("control", "bearer  control-token ", "a")  # scheme case and spaces do not matter
    for role, token in [("control", "view-token-1"), ("view", "ingest-token"), ("control", "ingest-token"),
                        ("ingest", "view-token-1"), ("ingest", "control-token")]:
        denied = refusal(check, role, f"Bearer {token}", address=f"{role}-{token}")  # each a failure too
        assert denied.status == 403 and denied.code == "forbidden"
        assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    everything = TokenCheck({"all": "one-token-for-all"})
    for role in ("ingest", "view", "control"):
        everything.check(role, "Bearer one-token-for-all", "a")
    TokenCheck({}).check("control", None, "a")  # no token configured: open


def test_blocked_address_gets_429_while_another_is_served() -> None:
    clock = Clock()
    failures, throttled = [], []
    check = TokenCheck({"all": "the-right-token"}, AuthThrottle(clock), on_failure=lambda: failures.append(1),
                       on_throttled=lambda: throttled.append(1))
    for _ in range(FAILURES_BEFORE_BACKOFF):
        assert refusal(check, "ingest", "Bearer guess-guess", "attacker").status == 401
    blocked = refusal(check, "ingest", "Bearer the-right-token", "attacker")
    assert blocked.status == 429 and blocked.headers["Retry-After"] == "1"
    check.check("ingest", "Bearer the-right-token", "friend")  # at once, unaffected
    assert refusal(check, "ingest", None, "friend").status == 401  # no token is not a failure...
    assert len(failures) == FAILURES_BEFORE_BACKOFF and len(throttled) == 1
    clock.now += 1.0
    check.check("ingest", "Bearer the-right-token", "attacker")  # ...and the block ends on time


def test_issue18_2_another_roles_token_is_a_failure_and_never_clears_the_record() -> None:
    # A guesser holding a valid ingest token must not clear its record by spending it on the control door
    # between guesses: only a token that opens the requested door clears it.
    clock = Clock()
    failures: list[int] = []
    check = TokenCheck({"ingest": "ingest-token", "control": "control-token"}, AuthThrottle(clock),
                       on_failure=lambda: failures.append(1))
    for _ in range(2):  # guess, spend the ingest token, guess, spend it: 4 failures, no block yet
        assert refusal(check, "control", "Bearer guess-guess", "attacker").status == 401
        assert refusal(check, "control", "Bearer ingest-token", "attacker").status == 403
    assert refusal(check, "control", "Bearer ingest-token", "attacker").status == 403  # the 5th failure
    assert refusal(check, "control", "Bearer guess-guess", "attacker").status == 429
    assert len(failures) == FAILURES_BEFORE_BACKOFF
    clock.now += MAX_DELAY_S
    check.check("control", "Bearer control-token", "attacker")  # the right door's token clears the record
    assert len(check.throttle) == 0


def test_issue18_13_a_blocked_address_gets_429_with_or_without_a_token() -> None:
    # Decision (protocols/http.md section 3.3): the block is on the address and is checked before the
    # Authorization header is read, so a tokenless request from a blocked address waits too.
    clock = Clock()
    check = TokenCheck({"all": "the-right-token"}, AuthThrottle(clock))
    for _ in range(FAILURES_BEFORE_BACKOFF):
        refusal(check, "view", "Bearer guess-guess", "attacker")
    assert refusal(check, "view", None, "attacker").status == 429
    assert refusal(check, "view", None, "friend").status == 401
