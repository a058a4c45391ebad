"""Fixtures over the one daemon harness, `streamd.e2e.DaemonProcess`: a real `streamd serve` on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from streamd.e2e import LOOPBACK, DaemonProcess, http_get

from .subscriber import Subscriber

# Re-exported for the test modules: the harness, its helpers, and the out-of-process subscriber.
Daemon = DaemonProcess
__all__ = ["LOOPBACK", "Daemon", "Subscriber", "http_get", "start_daemon"]

# What every test daemon runs with unless a test says otherwise: one denoising step without guidance keeps chunks
# fast on 2 CPU cores, and short WebRTC timeouts let tests watch sessions end.
TEST_ENV = {
    "STREAMD_ENGINE_STEPS": "1", "STREAMD_ENGINE_GUIDANCE": "1",
    "STREAMD_WEBRTC_SETUP_TIMEOUT_S": "6", "STREAMD_WEBRTC_MEDIA_TIMEOUT_S": "3",
}
READY_TIMEOUT_S = 90.0
_logs = count()


def start_daemon(tmp_path: Path, *extra: str, env: dict[str, str] | None = None, token: str | None = None,
                 model: str = "tiny") -> Daemon:
    """A ready daemon with the test defaults (extra `serve` flags, env overrides, a bearer token)."""
    return Daemon.start(tmp_path / f"daemon-{next(_logs)}.log", *extra, model=model, env={**TEST_ENV, **(env or {})},
                        token=token, ready_timeout_s=READY_TIMEOUT_S)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A ready daemon for at most two streams, killed after the test."""
    d = start_daemon(tmp_path, "--max-streams", "2")
    yield d
    d.kill()
