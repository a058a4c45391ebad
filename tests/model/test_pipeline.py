"""ContinuationPipeline on the random-weight tiny-random model (arbitrary weights, 128x224), and the `continue` /
`bench denoise` commands; tests/model/test_meaning.py checks the trained `tiny`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streamd.media import read_video, synthetic_clip, write_video
from streamd.pipeline import ChunkParams, ContinuationPipeline


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    return ContinuationPipeline.from_spec("tiny-random")


def cond_frames(pipe: ContinuationPipeline, h: int = 64, w: int = 96) -> np.ndarray:
    return synthetic_clip(13, h, w, seed=3).frames


def test_generate_chunk_shapes_and_determinism(pipe: ContinuationPipeline) -> None:
    frames = cond_frames(pipe)
    params = pipe.default_params(steps=3, seed=11)
    a = pipe.generate_chunk(frames, "a red fox", params)
    b = pipe.generate_chunk(frames, "a red fox", params)
    assert a.frames.shape == (16, 64, 96, 3) and a.frames.dtype == np.uint8
    assert a.latents.shape == (1, 16, 4, 8, 12) and a.cond_latents.shape == (1, 16, 4, 8, 12)
    assert np.array_equal(a.frames, b.frames)
    assert a.frames.std() > 1.0  # not a flat image
    other = pipe.generate_chunk(frames, "a blue whale", params)
    assert not torch.equal(other.latents, a.latents)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_cached_and_uncached_samples_agree(pipe: ContinuationPipeline, guidance: float) -> None:
    frames = cond_frames(pipe)
    cached = pipe.generate_chunk(frames, "waves", pipe.default_params(steps=4, seed=5, guidance=guidance))
    uncached = pipe.generate_chunk(
        frames, "waves", pipe.default_params(steps=4, seed=5, guidance=guidance, use_kv_cache=False)
    )
    err = (cached.latents - uncached.latents).abs().max() / uncached.latents.abs().max()
    assert float(err) < 1e-4


def test_chunk_params_validation() -> None:
    with pytest.raises(ValueError, match="schedule"):
        ChunkParams(steps=4, schedule="nope", guidance=1.0)
    with pytest.raises(ValueError, match="steps"):
        ChunkParams(steps=0, schedule="base", guidance=1.0)
    with pytest.raises(ValueError, match="guidance"):
        ChunkParams(steps=4, schedule="base", guidance=-1.0)


def test_bad_frames_are_refused(pipe: ContinuationPipeline) -> None:
    with pytest.raises(ValueError, match="4k\\+1|4k \\+ 1|frames"):
        pipe.generate_chunk(cond_frames(pipe)[:12], "", pipe.default_params(steps=1))
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe.generate_chunk(synthetic_clip(13, 60, 96).frames, "", pipe.default_params(steps=1))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_continue_command_writes_the_continuation(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    clip = synthetic_clip(20, 96, 160, fps=15.0)
    write_video(src, clip.frames, fps=clip.fps)
    out = tmp_path / "out.mp4"
    proc = run_cli("continue", str(src), "-o", str(out), "--segments", "2", "--steps", "2", "--prompt", "fox",
                   "--model", "tiny-random")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stderr and str(out) in proc.stdout
    result = read_video(out)
    assert result.frames.shape == (13 + 2 * 16, 128, 224, 3)
    assert result.fps == pytest.approx(15.0)


def test_continue_command_reports_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    proc = run_cli("continue", str(bad), "-o", str(tmp_path / "o.mp4"))
    assert proc.returncode == 2 and "error" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("continue", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o.mp4"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bench_denoise_json() -> None:
    proc = run_cli("bench", "denoise", "--json", "--model", "tiny-random", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("cached_step_s", "uncached_step_s", "speedup", "flop_speedup", "max_abs_diff", "output_rms",
                "peak_rss_bytes"):
        assert key in result
    assert result["max_abs_diff"] < 1e-4 and result["output_rms"] > 0.1
    assert result["flop_speedup"] > 1.5


def test_bench_stream_json() -> None:
    proc = run_cli("bench", "stream", "--json", "--streams", "2", "--chunks", "12", "--steps", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("chunks", "frames_out", "rtf", "chunk_latency_p50_s", "chunk_latency_p95_s", "frames_dropped",
                "rss_growth_bytes"):
        assert key in result
    assert result["chunks"] == 12 and result["frames_out"] == 12 * 16 and result["rtf"] > 0
