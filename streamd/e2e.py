"""The whole flow on one machine: start `streamd serve`, send live video over WHIP, subscribe over ZeroMQ.

Used by `streamd demo` (writes the generated video and a contact sheet) and `streamd bench e2e` (compares the
daemon's output rate with the bare engine doing the same work in the same run).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clients.send import send
from .clients.subscribe import SubscribeReport, subscribe

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class E2EConfig:
    """One end-to-end run."""

    model: str = "tiny"
    seconds: float = 20.0  # how long the client sends
    steps: int | None = None
    guidance: float | None = None
    out_dir: Path | None = None  # where the MP4, contact sheet and daemon log go
    paced: bool = True  # False lets the daemon generate as fast as it can (throughput measurement)


class DaemonProcess:
    """`streamd serve` in a subprocess on free loopback ports; stopped with SIGTERM."""

    def __init__(self, cfg: E2EConfig, log_path: Path) -> None:
        self.http_port, self.zmq_port = free_port(), free_port()
        env = dict(os.environ)
        if cfg.steps is not None:
            env["STREAMD_ENGINE_STEPS"] = str(cfg.steps)
        if cfg.guidance is not None:
            env["STREAMD_ENGINE_GUIDANCE"] = str(cfg.guidance)
        if not cfg.paced:
            env["STREAMD_ENGINE_MAX_LEAD_S"] = "1e9"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamd.cli", "serve", "--model", cfg.model, "--http",
             f"{LOOPBACK}:{self.http_port}", "--zmq", self.zmq_endpoint, "--ice-address", LOOPBACK],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    @property
    def whip(self) -> str:
        """The WHIP endpoint URL."""
        return f"http://{LOOPBACK}:{self.http_port}/whip"

    @property
    def zmq_endpoint(self) -> str:
        """The ZeroMQ publisher endpoint."""
        return f"tcp://{LOOPBACK}:{self.zmq_port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll /readyz until 200; raise with the daemon's log when it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the daemon did not become ready in time")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; the exit status (kills after the timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def run_e2e(cfg: E2EConfig) -> tuple[dict[str, Any], SubscribeReport]:
    """Run the flow once; returns figures and the subscriber's report."""
    out_dir = cfg.out_dir or Path("out/e2e")
    out_dir.mkdir(parents=True, exist_ok=True)
    daemon = DaemonProcess(cfg, out_dir / "daemon.log")
    try:
        daemon.wait_ready()
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
