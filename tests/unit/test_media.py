"""Video file helpers (PyAV) and frame utilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamd.media import MediaError, VideoWriter, contact_sheet, fit_frames, read_video, synthetic_clip, write_video


def test_round_trip_and_last_frames(tmp_path: Path) -> None:
    clip = synthetic_clip(30, 64, 96, fps=15.0, seed=1)
    write_video(tmp_path / "a.mp4", clip.frames, fps=clip.fps)
    full = read_video(tmp_path / "a.mp4")
    assert full.frames.shape == (30, 64, 96, 3) and full.fps == pytest.approx(15.0)
    assert np.abs(full.frames.astype(int) - clip.frames).mean() < 6
    tail = read_video(tmp_path / "a.mp4", last=13)
    assert np.array_equal(tail.frames, full.frames[-13:])
    assert read_video(tmp_path / "a.mp4", max_frames=5).frames.shape[0] == 5


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no video file"):
        read_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError):
        read_video(garbage)


def test_writer_odd_sizes_and_mismatch(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "odd.mp4", fps=10) as w:
        w.write(synthetic_clip(3, 33, 47).frames)
        with pytest.raises(MediaError, match="differs"):
            w.write(synthetic_clip(1, 64, 64).frames)
        with pytest.raises(MediaError, match="uint8"):
            w.write(np.zeros((2, 32, 32, 3), dtype=np.float32))
    assert read_video(tmp_path / "odd.mp4").frames.shape == (3, 32, 46, 3)


def test_fit_and_sheet(tmp_path: Path) -> None:
    frames = synthetic_clip(5, 100, 300).frames
    assert fit_frames(frames, 128, 224).shape == (5, 128, 224, 3)
    assert fit_frames(frames, 100, 300) is frames
    sheet = contact_sheet(frames, columns=3, path=tmp_path / "s.png")
    assert sheet.shape == (2 * 100 + 2, 3 * 300 + 4, 3)
    assert Image.open(tmp_path / "s.png").size == (904, 202)
    with pytest.raises(MediaError):
        contact_sheet(frames[:0])
