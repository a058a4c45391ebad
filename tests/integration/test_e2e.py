"""`streamd demo` and `streamd bench e2e`: the whole flow, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamd.media import read_video


def test_demo_writes_video_and_contact_sheet(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamd.cli", "demo", "--out", str(tmp_path), "--seconds", "6",
                           "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model: tiny" in proc.stderr and "frames/s out" in proc.stdout and "exit status 0" in proc.stdout
    assert "quality:" in proc.stdout and "copy-last" in proc.stdout
    clip = read_video(tmp_path / "generated.mp4")
    assert clip.frames.shape[0] >= 32 and clip.frames.shape[1:] == (64, 112, 3)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 1000
    assert (tmp_path / "continuation_sheet.png").stat().st_size > 1000


def test_bench_e2e_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamd.cli", "bench", "e2e", "--json", "--seconds", "5",
                           "--steps", "1", "--guidance", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("fps_out", "engine_fps", "overlap", "latency_p50_s", "latency_p95_s"):
        assert result[key] is not None and result[key] > 0, key
    assert result["frames_out"] > 0 and result["daemon_exit"] == 0
