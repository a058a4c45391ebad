"""`streamd serve` under a NOTIFY_SOCKET: READY after loading, watchdog fed only while the engine progresses."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from pathlib import Path

from streamd.clients.send import send

from .conftest import LOOPBACK, start_daemon


def test_notify_sequence_and_watchdog_stall(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            try:
                received.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                continue

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    # progress is counted per denoising step: steps of 4 s overrun the 1 s stall timeout, so each one "stalls"
    # the engine (a slow chunk of quick steps would not)
    d = start_daemon(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
                                    "STREAMD_ENGINE_STALL_TIMEOUT_S": "1", "STREAMD_ENGINE_STEPS": "2",
                                    "STREAMD_ENGINE_STEP_DELAY_S": "4"})
    try:
        time.sleep(1.0)
        asyncio.run(send(d.whip, seconds=6, ice_addresses=(LOOPBACK,)))
        time.sleep(1.0)
        assert d.stop(signal.SIGTERM, timeout=60) == 0
    finally:
        done.set()
        reader.join()
        sock.close()
        if d.proc.poll() is None:
            d.proc.kill()
    messages = [m for _, m in received]
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert "STATUS=online" in messages[ready]
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert ready < stopping
    pings = [t for t, m in received[ready:stopping] if m == "WATCHDOG=1"]
    assert len(pings) >= 5
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # pings come every 0.2 s while the engine progresses, and stop for seconds while a step overruns
    assert min(gaps) < 0.5 and max(gaps) > 2.0, gaps
    assert any(m.startswith("STATUS=online:") and "frames/s" in m for m in messages)
    assert "the engine is stalled" in d.log()
