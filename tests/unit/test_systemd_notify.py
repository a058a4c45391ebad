"""sd_notify over a real AF_UNIX datagram socket, and a watchdog fed only while the engine makes progress."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from streamd.edges.systemd import Notifier, Watchdog


def listener(path: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_notifications_reach_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = listener(path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("online")
    assert sock.recv(4096) == b"READY=1\nSTATUS=online"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.status("2 streams,\n14.8 frames/s")
    assert sock.recv(4096) == b"STATUS=2 streams, 14.8 frames/s"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    sock.close()


def test_abstract_socket_and_disabled_cases() -> None:
    name = f"streamd-test-{os.getpid()}"
    sock = listener(b"\0" + name.encode())
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
    assert sock.recv(4096).startswith(b"READY=1")
    sock.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_interval_s is None
    other_pid = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}).ready()  # logged, not raised


def test_watchdog_stops_while_the_engine_stalls(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = listener(path)
    sock.setblocking(False)
    progress = {"ok": True}
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    dog = Watchdog(n, lambda: progress["ok"], lambda: "busy", status_interval_s=10.0)

    def drain() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096))
            except BlockingIOError:
                return out

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        task = asyncio.ensure_future(dog.run())
        await asyncio.sleep(0.5)
        healthy = drain()
        progress["ok"] = False  # the engine stalls
        await asyncio.sleep(0.1)
        drain()
        await asyncio.sleep(0.5)
        stalled = drain()
        progress["ok"] = True
        await asyncio.sleep(0.5)
        recovered = drain()
        task.cancel()
        return healthy, stalled, recovered

    healthy, stalled, recovered = asyncio.run(scenario())
    sock.close()
    assert healthy[0] == b"WATCHDOG=1" and b"STATUS=busy" in healthy and healthy.count(b"WATCHDOG=1") >= 5
    assert b"WATCHDOG=1" not in stalled
    assert recovered.count(b"WATCHDOG=1") >= 5 and dog.stalled is False
