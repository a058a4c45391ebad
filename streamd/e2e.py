"""The whole flow on one machine: start `streamd serve`, send live video over WHIP, subscribe over ZeroMQ.

`DaemonProcess` is the one harness that runs a real daemon on loopback. `run_e2e` uses it for `streamd demo`
(writes the generated video and a contact sheet) and `streamd bench e2e` (compares the daemon's output rate with
the bare engine doing the same work in the same run); the integration tests use it through pytest fixtures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clients.send import send
from .clients.subscribe import SubscribeReport, subscribe

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 120.0  # loading the model and binding the listeners; a daemon slower than this is a failure
STOP_TIMEOUT_S = 30.0  # SIGTERM to exit; after it the daemon is killed


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `url`: (status, body text), error statuses included; raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_value(exposition: str, name: str) -> float | None:
    """The sum of every series of metric `name` in a Prometheus text exposition; None when it has none."""
    total, found = 0.0, False
    for line in exposition.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


@dataclass(frozen=True)
class E2EConfig:
    """One end-to-end run."""

    model: str = "tiny"
    seconds: float = 20.0  # how long the client sends
    steps: int | None = None
    guidance: float | None = None
    out_dir: Path | None = None  # where the MP4, contact sheet and daemon log go
    paced: bool = True  # False lets the daemon generate as fast as it can (throughput measurement)

    def env(self) -> dict[str, str]:
        """The STREAMD_* settings this run gives the daemon."""
        env: dict[str, str] = {}
        if self.steps is not None:
            env["STREAMD_ENGINE_STEPS"] = str(self.steps)
        if self.guidance is not None:
            env["STREAMD_ENGINE_GUIDANCE"] = str(self.guidance)
        if not self.paced:
            env["STREAMD_ENGINE_MAX_LEAD_S"] = "3600"  # the largest lead allowed: unpaced for any benchmark run
        return env


class DaemonProcess:
    """`streamd serve` in a subprocess on free loopback ports, its output in a log file.

    The constructor only starts the process; `start()` also waits until /readyz says 200. Used by `streamd demo`,
    `streamd bench e2e` and the integration tests (tests/integration/conftest.py).
    """

    def __init__(self, log_path: Path, *extra_args: str, model: str = "tiny",
                 env: Mapping[str, str] | None = None, token: str | None = None) -> None:
        self.http_port, self.zmq_port = free_port(), free_port()
        self.log_path = log_path
        self.token = token
        self.args = [sys.executable, "-m", "streamd.cli", "serve", "--model", model, "--http",
                     f"{LOOPBACK}:{self.http_port}", "--zmq", self.zmq_endpoint, "--ice-address", LOOPBACK,
                     *extra_args]
        # the token goes in the environment, never in argv (where `ps` shows it to every local user)
        secret = {"STREAMD_HTTP_TOKEN": token} if token else {}
        with open(log_path, "w") as log:  # the child keeps its own descriptor; ours closes now
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **secret, **(env or {})})

    @classmethod
    def start(cls, log_path: Path, *extra_args: str, model: str = "tiny", env: Mapping[str, str] | None = None,
              token: str | None = None, ready_timeout_s: float = READY_TIMEOUT_S) -> DaemonProcess:
        """Start a daemon and wait until it is ready; it is killed when it does not get there."""
        daemon = cls(log_path, *extra_args, model=model, env=env, token=token)
        try:
            daemon.wait_ready(ready_timeout_s)
        except BaseException:
            daemon.kill()
            raise
        return daemon

    @property
    def base(self) -> str:
        """The HTTP base URL."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def whip(self) -> str:
        """The WHIP endpoint URL."""
        return f"{self.base}/whip"

    @property
    def zmq_endpoint(self) -> str:
        """The ZeroMQ publisher endpoint."""
        return f"tcp://{LOOPBACK}:{self.zmq_port}"

    def log(self) -> str:
        """Everything the daemon has written so far."""
        return self.log_path.read_text()

    def metric(self, name: str) -> float:
        """The current value of metric `name` from /metrics, summed over its labels; LookupError when absent."""
        status, body = http_get(f"{self.base}/metrics")
        if status != 200:
            raise LookupError(f"/metrics answered {status}")
        value = metric_value(body, name)
        if value is None:
            raise LookupError(f"metric {name} not exported")
        return value

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll /readyz until 200; raise with the daemon's log when it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if http_get(f"{self.base}/readyz", timeout=1)[0] == 200:
                    return
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the daemon did not become ready within {timeout:g} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig` and wait up to `timeout` s; the exit status (killed after the timeout: then -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL (if still running) and reap; the exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def run_e2e(cfg: E2EConfig) -> tuple[dict[str, Any], SubscribeReport]:
    """Run the flow once; returns figures and the subscriber's report."""
    out_dir = cfg.out_dir or Path("out/e2e")
    out_dir.mkdir(parents=True, exist_ok=True)
    daemon = DaemonProcess.start(out_dir / "daemon.log", model=cfg.model, env=cfg.env())
    try:
        holder: dict[str, SubscribeReport] = {}
        arrivals: list[float] = []  # first and last arrival times only

        def on_frame(header: object, pixels: object) -> None:
            now = time.monotonic()
            if arrivals:
                arrivals[1:] = [now]
            else:
                arrivals.append(now)

        listener = threading.Thread(target=lambda: holder.setdefault("report", subscribe(
            daemon.zmq_endpoint, output=out_dir / "generated.mp4", timeout_s=8.0, on_frame=on_frame)), daemon=True)
        listener.start()
        time.sleep(0.5)  # the subscription must reach the publisher before frames flow
        started = time.monotonic()
        sent = asyncio.run(send(daemon.whip, seconds=cfg.seconds, ice_addresses=(LOOPBACK,)))
        listener.join(cfg.seconds + 60)
        report = holder.get("report")
        if report is None:
            raise RuntimeError("the subscriber did not finish")
    finally:
        code = daemon.stop()
    latencies = sorted(report.latency_s)
    window = max(arrivals[-1] - arrivals[0], 1e-9) if len(arrivals) == 2 else float("nan")
    result: dict[str, Any] = {
        "frames_sent": sent.frames_sent,
        "frames_out": report.frames,
        "frames_lost": report.gaps,
        "fps_out": (report.frames - 1) / window if report.frames > 1 else 0.0,
        "receive_window_s": window,
        "wall_s": time.monotonic() - started,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "daemon_exit": code,
        "output": str(out_dir / "generated.mp4"),
    }
    return result, report
