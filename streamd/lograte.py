"""Log lines a client can cause, rate-limited: the 1st, 2nd, 4th, 8th... occurrence of each kind is logged.

A client repeating a request that makes the daemon log (a refused command, a dropped frame, a library warning
about a full queue) must not be able to flood the log; doubling keeps the first occurrences visible and says how
many there were. Torch-free and asyncio-free, so the engine may use it too.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable

MAX_KINDS = 1024  # kinds of line counted at most (least recently seen forgotten first)


def is_logged(n: int) -> bool:
    """Whether the `n`th occurrence (from 1) is logged: when `n` is a power of two."""
    return n > 0 and n & (n - 1) == 0


class Occurrences:
    """Counts occurrences per kind of line; `due(kind)` says whether this one is logged. Bounded: `max_kinds`."""

    def __init__(self, max_kinds: int = MAX_KINDS) -> None:
        self.max_kinds = max_kinds
        self._counts: OrderedDict[Hashable, int] = OrderedDict()

    def count(self, kind: Hashable) -> int:
        """Count one occurrence of `kind`; the number of occurrences so far."""
        n = self._counts.pop(kind, 0) + 1
        self._counts[kind] = n
        while len(self._counts) > self.max_kinds:
            self._counts.popitem(last=False)
        return n

    def due(self, kind: Hashable) -> int | None:
        """Count one occurrence; its number when it is to be logged (1, 2, 4, ...), else None."""
        n = self.count(kind)
        return n if is_logged(n) else None


class RateLimitFilter(logging.Filter):
    """A logging filter passing the 1st, 2nd, 4th... record of each message template (per logger), with the
    count appended from the 2nd on. For loggers a client can drive, a library's included (aiomqtt's
    "Message queue is full" warning, once per discarded message, is one)."""

    def __init__(self, max_kinds: int = MAX_KINDS) -> None:
        super().__init__()
        self._seen = Occurrences(max_kinds)

    def filter(self, record: logging.LogRecord) -> bool:
        n = self._seen.due((record.name, record.levelno, str(record.msg)))
        if n is None:
            return False
        if n > 1:
            record.msg = f"{record.msg} ({n} times so far; logging 1st, 2nd, 4th, ... occurrence)"
        return True
