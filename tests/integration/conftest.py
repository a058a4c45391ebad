"""Real loopback servers and clients: a `streamd serve` subprocess, aiortc WHIP peers, ZeroMQ subscribers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from streamd.e2e import free_port

LOOPBACK = "127.0.0.1"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Daemon:
    """A running `streamd serve` subprocess."""

    proc: subprocess.Popen[str]
    http_port: int
    zmq_port: int
    log_path: Path
    token: str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def whip(self) -> str:
        return f"{self.base}/whip"

    @property
    def zmq(self) -> str:
        return f"tcp://{LOOPBACK}:{self.zmq_port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def metric(self, name: str) -> float:
        status, body = http_get(f"{self.base}/metrics")
        assert status == 200
        total = 0.0
        found = False
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        assert found, f"metric {name} not exported"
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_daemon(tmp_path: Path, *extra: str, env: dict[str, str] | None = None, token: str | None = None) -> Daemon:
    http_port, zmq_port = free_port(), free_port()
    log_path = tmp_path / f"daemon-{http_port}.log"
    args = [sys.executable, "-m", "streamd.cli", "serve", "--model", "tiny", "--http", f"{LOOPBACK}:{http_port}",
            "--zmq", f"tcp://{LOOPBACK}:{zmq_port}", "--ice-address", LOOPBACK, *extra]
    if token:
        args += ["--token", token]
    full_env = {
        **os.environ,
        # one denoising step without guidance keeps chunks fast on 2 CPU cores
        "STREAMD_ENGINE_STEPS": "1", "STREAMD_ENGINE_GUIDANCE": "1",
        "STREAMD_WEBRTC_SETUP_TIMEOUT_S": "6", "STREAMD_WEBRTC_MEDIA_TIMEOUT_S": "3",
        **(env or {}),
    }
    log = open(log_path, "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, text=True)
    daemon = Daemon(proc, http_port, zmq_port, log_path, token, args)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
        try:
            if http_get(f"{daemon.base}/readyz", timeout=1)[0] == 200:
                return daemon
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"daemon not ready in time:\n{daemon.log()}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, "--max-streams", "2")
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(10)


SUBSCRIBER = r"""
import json, sys, time, zmq
from streamd.wire.frames import decode_frame
from streamd.wire.events import decode_event
endpoint, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 1000)
sub.setsockopt(zmq.SUBSCRIBE, b"frames/")
sub.setsockopt(zmq.SUBSCRIBE, b"events")
sub.connect(endpoint)
print(json.dumps({"ready": True}), flush=True)
frames = 0
deadline = time.monotonic() + timeout
while frames < want and time.monotonic() < deadline:
    if not sub.poll(200):
        continue
    parts = sub.recv_multipart()
    if parts[0] == b"events":
        print(json.dumps({"event": json.loads(parts[1])}), flush=True)
        continue
    header, pixels = decode_frame(parts)
    raw = json.loads(parts[1])
    print(json.dumps({"header": raw, "payload_len": len(parts[2]), "mean": float(pixels.mean())}), flush=True)
    frames += 1
"""


class Subscriber:
    """A ZeroMQ subscriber in a separate process, printing one JSON line per message."""

    def __init__(self, endpoint: str, frames: int, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(frames), str(timeout)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert json.loads(line) == {"ready": True}, self.proc.stderr.read()
        time.sleep(0.3)  # let the subscription reach the publisher

    def results(self, timeout: float = 90.0) -> list[dict]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines() if line.strip()]
