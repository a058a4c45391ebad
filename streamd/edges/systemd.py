"""systemd's notify protocol (sd_notify(3)) with the standard library only.

A service of `Type=notify` gets `NOTIFY_SOCKET` (a filesystem path, or an abstract socket written `@name`) and,
with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). Each notification is one datagram of newline-separated
`KEY=VALUE` lines: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`. Without `NOTIFY_SOCKET` every call is a
no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager; never raises (a lost notification is logged once)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        # abstract sockets are written with a leading '@' and addressed with a leading NUL byte
        self.address: str | bytes | None = ("\0" + raw[1:]).encode() if raw.startswith("@") else (raw or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self._watchdog_usec = int(usec) if usec.isdigit() and int(usec) > 0 else None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            self._watchdog_usec = None  # the watchdog is meant for another process
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the configured watchdog timeout; None without a watchdog."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def send(self, text: str) -> bool:
        """Send one datagram; False when it could not be delivered (or no manager listens)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(text.encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify the service manager: %s", exc)
                self._warned = True
            return False

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=VALUE` fields, e.g. notify(READY=1, STATUS="online")."""
        return self.send("\n".join(f"{k}={v}" for k, v in fields.items()))

    def ready(self, status: str = "online") -> bool:
        """READY=1: the model is loaded and the listeners are bound."""
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1: a graceful stop has begun."""
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by `systemctl status`."""
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive and making progress."""
        return self.notify(WATCHDOG=1)


class Watchdog:
    """Feeds the watchdog only while `progress()` says the engine makes progress, and keeps STATUS current.

    A stalled engine therefore stops the pings, and systemd's watchdog restarts the service.
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], bool], status: Callable[[], str],
                 status_interval_s: float = 5.0) -> None:
        self.notifier = notifier
        self.progress = progress
        self.status = status
        self.status_interval_s = status_interval_s
        self.pings = 0
        self.stalled = False

    async def run(self) -> None:
        """Until cancelled: ping at half the watchdog timeout when progress holds; update STATUS."""
        if not self.notifier.enabled:
            return
        interval = self.notifier.watchdog_interval_s or self.status_interval_s
        since_status = self.status_interval_s  # send a STATUS at once
        while True:
            if self.notifier.watchdog_interval_s is not None:
                if self.progress():
                    if self.stalled:
                        log.warning("the engine makes progress again; feeding the watchdog")
                    self.stalled = False
                    self.notifier.watchdog()
                    self.pings += 1
                elif not self.stalled:
                    self.stalled = True
                    log.warning("the engine is stalled: not feeding the watchdog")
            since_status += interval
            if since_status >= self.status_interval_s:
                since_status = 0.0
                self.notifier.status(self.status())
            await asyncio.sleep(interval)
