"""The unit for one daemon on N GPUs: `systemd-analyze verify` prints nothing, exposure <= 4.5, and its GPU list,
device allow-list and --context-parallel agree."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "streamd-cp.service"


def staged(tmp_path: Path) -> tuple[str, Path]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing; install it with: apt-get install -y systemd", pytrace=False)
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/streamd serve" in text
    target = tmp_path / UNIT.name
    target.write_text(text.replace("/usr/local/bin/streamd", "/bin/true"))  # verify checks the binary exists
    return tool, target


def test_cp_unit_verifies_without_warnings(tmp_path: Path) -> None:
    tool, unit = staged(tmp_path)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


def test_cp_unit_exposure_at_most_4_5(tmp_path: Path) -> None:
    tool, unit = staged(tmp_path)
    proc = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                          cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) <= 4.5


def test_cp_unit_gpus_devices_and_ranks_agree() -> None:
    text = UNIT.read_text()
    n = int(re.search(r"--context-parallel (\d+)", text).group(1))
    gpus = re.search(r"^Environment=CUDA_VISIBLE_DEVICES=([\d,]+)$", text, flags=re.M).group(1).split(",")
    nodes = re.findall(r"^DeviceAllow=/dev/nvidia(\d+) rw$", text, flags=re.M)
    assert len(gpus) == n and sorted(nodes) == sorted(gpus) and 32 % n == 0
    for line in ("Type=notify", "NotifyAccess=main", "KillMode=mixed", "WatchdogSec=", "DevicePolicy=closed",
                 "DeviceAllow=/dev/nvidiactl rw", "DeviceAllow=/dev/nvidia-uvm rw", "Restart=on-failure"):
        assert line in text, line
