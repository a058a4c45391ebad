"""The systemd units: `systemd-analyze verify` without a single warning, and an exposure score <= 4.5."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing; install it with: apt-get install -y systemd", pytrace=False)
    return tool


def staged(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart names an executable that exists here (verify checks it exists):
    the streamd path is replaced by /bin/true; everything else is the unit as shipped."""
    out = []
    for unit, name in (("streamd.service", "streamd.service"), ("streamd@.service", "streamd@0.service"),
                       ("streamd-route.service", "streamd-route.service")):
        text = (UNITS / unit).read_text()
        assert "ExecStart=/usr/local/bin/streamd " + ("route" if "route" in unit else "serve") in text
        target = tmp_path / name
        target.write_text(text.replace("/usr/local/bin/streamd", "/bin/true"))
        out.append(target)
    return out


def test_units_verify_without_warnings(tmp_path: Path) -> None:
    tool = analyze()
    for unit in staged(tmp_path):
        proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", (unit.name, proc.stderr)


def test_security_exposure_at_most_4_5(tmp_path: Path) -> None:
    tool = analyze()
    for unit in staged(tmp_path):
        proc = subprocess.run([tool, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                              cwd=tmp_path)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
        assert match, proc.stdout[-500:] + proc.stderr
        assert float(match.group(1)) <= 4.5, f"{unit.name}: exposure {match.group(1)}"


def test_units_are_notify_with_watchdog_and_gpu_access() -> None:
    for unit in ("streamd.service", "streamd@.service"):
        text = (UNITS / unit).read_text()
        for line in ("Type=notify", "WatchdogSec=", "TimeoutStopSec=", "DynamicUser=yes", "StateDirectory=",
                     "CacheDirectory=", "ProtectSystem=strict", "DeviceAllow=/dev/nvidiactl rw"):
            assert line in text, (unit, line)
        assert "PrivateDevices=yes" not in text and "MemoryDenyWriteExecute=yes" not in text
    assert "CUDA_VISIBLE_DEVICES=%i" in (UNITS / "streamd@.service").read_text()


def test_units_take_the_token_as_a_credential_never_in_argv() -> None:
    from streamd.config import ServeConfig

    units = sorted(path.name for path in UNITS.glob("*.service"))
    assert {"streamd.service", "streamd@.service"} <= set(units)
    for unit in units:
        text = (UNITS / unit).read_text()
        assert re.search(r"^LoadCredential=http-token:/etc/streamd/", text, flags=re.M), unit
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert "--token" not in exec_start and "TOKEN" not in text.replace("http-token", ""), unit
    # the example config parses, and names no secret in clear
    example = UNITS / "streamd.toml"
    assert "password =" not in example.read_text() and "token =" not in example.read_text()
    ServeConfig.load(example)
