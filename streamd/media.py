"""Video files and frames: reading and writing MP4 through PyAV, resizing, synthetic clips, contact sheets.

Frames are numpy uint8 RGB arrays [F, H, W, 3] (or [H, W, 3] for one). Nothing here imports torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterable

import av
import numpy as np
from PIL import Image


class MediaError(ValueError):
    """A video file that cannot be read or written."""


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames and their frame rate."""

    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: float


def read_video(path: str | Path, max_frames: int | None = None, last: int | None = None) -> VideoClip:
    """Decode a video file to RGB frames.

    max_frames stops after that many frames; last keeps only the final N frames while decoding (memory bounded
    by N frames however long the file is).
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"no video file at {path}")
    keep: deque[np.ndarray] = deque(maxlen=last) if last else deque()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 15.0)
            for frame in container.decode(stream):
                keep.append(frame.to_ndarray(format="rgb24"))
                if max_frames and not last and len(keep) >= max_frames:
                    break
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from None
    if not keep:
        raise MediaError(f"{path} holds no decodable video frames")
    return VideoClip(np.stack(list(keep)), fps)


def _even(frames: np.ndarray) -> np.ndarray:
    # yuv420p needs even sizes: drop a last odd row/column rather than distort the picture
    h, w = frames.shape[-3] // 2 * 2, frames.shape[-2] // 2 * 2
    return frames[..., :h, :w, :]


class VideoWriter:
    """Writes frames to an H.264 MP4 (yuv420p) chunk by chunk. Odd sizes lose their last row/column."""

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    def _open(self, height: int, width: int) -> None:
        from fractions import Fraction

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Append one frame [H, W, 3] or several [F, H, W, 3] (uint8 RGB)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise MediaError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
        frames = _even(frames)
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        assert self._stream is not None and self._container is not None
        if (frames.shape[1], frames.shape[2]) != (self._stream.height, self._stream.width):
            raise MediaError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the video's "
                             f"{self._stream.width}x{self._stream.height}")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self._container is None:
            return
        assert self._stream is not None
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_video(path: str | Path, frames: Iterable[np.ndarray] | np.ndarray, fps: float, crf: int = 18) -> None:
    """Write frames to an MP4 in one call."""
    with VideoWriter(path, fps, crf) as writer:
        for frame in frames:
            writer.write(frame)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [F, H, W, 3] frames to height x width (bicubic; aspect not preserved)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([
        np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames
    ])


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale [F, H, W, 3] frames to cover height x width, then centre-crop: no distortion, no borders."""
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    scaled = resize_frames(frames, sh, sw)
    top, left = (sh - height) // 2, (sw - width) // 2
    return np.ascontiguousarray(scaled[:, top:top + height, left:left + width])


def synthetic_clip(num_frames: int, height: int, width: int, fps: float = 15.0, seed: int = 0) -> VideoClip:
    """A deterministic moving test pattern: a drifting colour gradient with two moving discs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    centres = rng.uniform(0.2, 0.8, (2, 2))
    velocity = rng.uniform(-0.02, 0.02, (2, 2))
    colours = rng.integers(40, 255, (2, 3))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / max(fps, 1.0)
        img = np.stack([
            127 + 100 * np.sin(2 * np.pi * (x / width + y / height * 0.5) + phase[c] + 1.5 * t)
            for c in range(3)
        ], axis=-1)
        for k in range(2):
            cy, cx = (centres[k] + velocity[k] * i) % 1.0
            r = 0.18 * min(height, width)
            disc = (y - cy * height) ** 2 + (x - cx * width) ** 2 < r * r
            img[disc] = colours[k]
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return VideoClip(frames, fps)


def contact_sheet(
    frames: np.ndarray, columns: int = 8, max_frames: int = 32, path: str | Path | None = None
) -> np.ndarray:
    """Tile up to `max_frames` evenly spaced frames into one image (2-pixel dark separators); PNG if `path`."""
    if len(frames) == 0:
        raise MediaError("a contact sheet needs at least one frame")
    picks = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    chosen = frames[picks]
    n, h, w, _ = chosen.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    gap = 2
    sheet = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 24, dtype=np.uint8)
    for i, frame in enumerate(chosen):
        r, c = divmod(i, cols)
        sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = frame
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path)
    return sheet
