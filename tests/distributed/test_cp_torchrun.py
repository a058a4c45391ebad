"""Several hosts start under torchrun: here one host, two ranks. Rank 0 becomes the daemon, rank 1 a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamd.e2e import LOOPBACK, free_port, http_get


def test_serve_under_torchrun_gets_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    http, zmq = free_port(), free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "streamd.cli", "serve",
             "--context-parallel", "2", "--model", "tiny", "--http", f"{LOOPBACK}:{http}",
             "--zmq", f"tcp://{LOOPBACK}:{zmq}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "STREAMD_ENGINE_STEPS": "1"})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if http_get(f"http://{LOOPBACK}:{http}/readyz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(log.read_text())
        text = log.read_text()
        assert "2 ranks connected (gloo)" in text and "worker ready on cpu (1 of 2 ranks)" in text
        proc.send_signal(signal.SIGTERM)  # torchrun passes it to every rank
        proc.wait(30)
        assert "streamd: stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
