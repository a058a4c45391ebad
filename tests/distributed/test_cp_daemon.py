"""The daemon with `--context-parallel 2` (a worker rank on gloo): WHIP in, ZeroMQ out; SIGTERM stops both ranks;
a worker killed mid-chunk, or hung, ends the daemon non-zero within a bounded time, naming what failed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path

from streamd.clients.send import send
from streamd.e2e import LOOPBACK
from streamd.edges.webrtc import restrict_host_addresses

from tests.integration.conftest import Daemon, start_daemon
from tests.integration.subscriber import Subscriber

restrict_host_addresses((LOOPBACK,))

CP_ARGS = ("--context-parallel", "2", "--max-streams", "1")


def worker_pid(daemon: Daemon) -> int:
    match = re.search(r"started 1 worker rank\(s\), pids \[(\d+)\]", daemon.log())
    assert match, daemon.log()
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_daemon_on_two_ranks_streams_whip_to_zmq_and_stops_every_rank(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, *CP_ARGS)  # tiny at 64x112: a 4x7 patch grid, padded for the 1x2 split
    try:
        pid = worker_pid(daemon)
        assert "2 ranks connected (gloo)" in daemon.log()
        sub = Subscriber(daemon.zmq_endpoint, frames=16)
        report = asyncio.run(send(daemon.whip, seconds=6, ice_addresses=(LOOPBACK,)))
        assert report.connected
        headers = [m["header"] for m in sub.results() if "header" in m]
        assert len(headers) == 16 and {h["stream"] for h in headers} == {report.stream_id}
        assert alive(pid)
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.log()
        assert wait_gone(pid, 10), "the worker rank outlived the daemon"
        assert "rank 1: stopped" in daemon.log()
    finally:
        daemon.kill()


def _stream_in_background(daemon: Daemon, seconds: float) -> threading.Thread:
    def run() -> None:
        try:
            asyncio.run(send(daemon.whip, seconds=seconds, ice_addresses=(LOOPBACK,)))
        except Exception:  # the daemon goes away under it: that is the test
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_steps(daemon: Daemon, steps: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if daemon.metric("streamd_engine_steps_total") >= steps:
                return
        except (LookupError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps within {timeout} s:\n{daemon.log()}")


def _signal_worker_mid_chunk(daemon: Daemon, sig: int, what: str) -> tuple[int, int, float]:
    """Stream into the daemon, send `sig` to its worker inside a chunk; (worker pid, exit status, seconds to exit)."""
    pid = worker_pid(daemon)
    _stream_in_background(daemon, seconds=60)
    _wait_for_steps(daemon, 2)
    os.kill(pid, sig)
    sent = time.monotonic()
    code = daemon.proc.wait(60)
    elapsed = time.monotonic() - sent
    print(f"worker {what}: daemon exited {code} after {elapsed:.1f} s")
    print("\n".join(line for line in daemon.log().splitlines() if "context parallel" in line))
    assert code != 0, daemon.log()
    return pid, code, elapsed


def test_a_worker_killed_mid_chunk_ends_the_daemon_non_zero(tmp_path: Path) -> None:
    # 8 steps of 0.5 s a chunk: the kill lands inside a chunk
    daemon = start_daemon(tmp_path, *CP_ARGS, env={"STREAMD_ENGINE_STEPS": "8", "STREAMD_ENGINE_STEP_DELAY_S": "0.5"})
    try:
        pid, _, elapsed = _signal_worker_mid_chunk(daemon, signal.SIGKILL, "killed")
        assert elapsed < 60
        assert re.search(rf"rank 1 \(pid {pid}\) exited with status -9", daemon.log()), daemon.log()
    finally:
        daemon.kill()


def test_a_hung_worker_ends_the_daemon_within_the_collective_timeout(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, *CP_ARGS, env={"STREAMD_ENGINE_STEPS": "8", "STREAMD_ENGINE_STEP_DELAY_S": "0.5",
                                                  "STREAMD_ENGINE_COLLECTIVE_TIMEOUT_S": "5"})
    pid = worker_pid(daemon)
    try:
        _, _, elapsed = _signal_worker_mid_chunk(daemon, signal.SIGSTOP, "hung")
        assert elapsed < 5 + 30  # the timeout, a graceful stop, the backstop at worst
        assert "context parallel:" in daemon.log() and "ERROR" in daemon.log()
    finally:
        daemon.kill()
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
