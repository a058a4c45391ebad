"""Video files and frames: MP4 in and out through PyAV, resizing, a synthetic test clip, contact sheets (and
continuation sheets: conditioning frames beside the frames generated from them).

Frames are numpy uint8 RGB arrays [F, H, W, 3] (or [H, W, 3] for a single frame). Nothing here imports torch, so
clients and tools can use these helpers without the model stack.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from PIL import Image

DEFAULT_FPS = 15.0  # LongCat-Video's native rate; used when a file does not say its own
SEPARATOR = 2  # contact-sheet gap in pixels
SEPARATOR_VALUE = 24  # dark grey, visible against both black and white frames


class MediaError(ValueError):
    """A video file or frame array that cannot be read, written or processed."""


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames and their frame rate."""

    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    fps: float


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")


def _as_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    """Validate uint8 RGB frames, promoting one frame [H, W, 3] to [1, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(f"{what} must be uint8 RGB [F, H, W, 3] or [H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def read_video(path: str | Path, max_frames: int | None = None, last: int | None = None) -> VideoClip:
    """Decode the first video stream of a file to RGB frames.

    `max_frames` stops decoding after that many frames from the start. `last` keeps only the final N of the
    decoded frames; they are held in a ring of N while decoding, so memory stays bounded by N frames however
    long the file is (the whole file is still decoded, as MP4 cannot be entered mid-GOP). With both, the result
    is the last `last` of the first `max_frames` frames.

    Raises MediaError for a missing file, a file without a video stream, data that cannot be decoded, or a
    video stream with no frames.
    """
    _check_count("max_frames", max_frames)
    _check_count("last", last)
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"no video file at {path}")
    keep: deque[np.ndarray] = deque(maxlen=last)  # maxlen None: unbounded
    decoded = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threading; decoding dominates reading long files
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else DEFAULT_FPS
            for frame in container.decode(stream):
                keep.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
                decoded += 1
                if max_frames is not None and decoded >= max_frames:
                    break
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from None
    if not keep:
        raise MediaError(f"{path} holds no decodable video frames")
    try:
        frames = np.stack(list(keep))  # [F, H, W, 3]
    except ValueError:
        raise MediaError(f"{path} changes frame size mid-stream; streamd needs one size per clip") from None
    return VideoClip(frames, fps)


def _even(frames: np.ndarray) -> np.ndarray:
    # yuv420p subsamples chroma 2x2, so H.264 needs even sizes: an odd size loses its last row/column. Cropping one
    # pixel is invisible, where padding would add a border and resizing would blur every frame.
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return frames[:, :h, :w]


class VideoWriter:
    """Writes frames to an H.264 (libx264, yuv420p) MP4 chunk by chunk, for videos too long to hold in memory.

    Use as a context manager; the file is opened at the first `write` (which fixes the frame size) and finalised
    by `close`. An odd height or width loses its last row or column (yuv420p needs even sizes).
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a finite positive number, got {fps!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = crf
        self.frames_written = 0
        # 29.97 and friends become their exact NTSC fractions (30000/1001) rather than 2997/100
        self._rate = Fraction(self.fps).limit_denominator(1001)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of the video once the first frames are written, else None."""
        if self._stream is None:
            return None
        return self._stream.height, self._stream.width

    def _open(self, height: int, width: int) -> tuple[av.container.OutputContainer, av.video.stream.VideoStream]:
        if height < 2 or width < 2:
            raise MediaError(f"frames of {width}x{height} are too small for H.264")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream("libx264", rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._container, self._stream = container, stream
        return container, stream

    def write(self, frames: np.ndarray) -> None:
        """Append one frame [H, W, 3] or several [F, H, W, 3] (uint8 RGB, all the size of the first)."""
        frames = _even(_as_frames(frames))  # [F, H, W, 3]
        if self._container is None or self._stream is None:
            container, stream = self._open(frames.shape[1], frames.shape[2])
        else:
            container, stream = self._container, self._stream
        if (frames.shape[1], frames.shape[2]) != (stream.height, stream.width):
            raise MediaError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the video's "
                             f"{stream.width}x{stream.height}")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            # explicit timestamps: one tick of 1/fps per frame, so the file's rate is exact
            vf.pts, vf.time_base = self.frames_written, 1 / self._rate
            for packet in stream.encode(vf):
                container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finalise the file; safe to call twice. Without any frame no file is made."""
        container, stream = self._container, self._stream
        if container is None or stream is None:
            return
        self._container = None
        try:
            for packet in stream.encode():  # flush delayed frames
                container.mux(packet)
        finally:
            container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # finalise even on error, so what was generated up to the failure stays playable
        self.close()


def write_video(
    path: str | Path, frames: Iterable[np.ndarray] | np.ndarray, fps: float, crf: int = 18
) -> None:
    """Write frames ([F, H, W, 3], or an iterable of [H, W, 3] frames or [F, H, W, 3] chunks) to an MP4.

    H.264 yuv420p at constant quality `crf`; odd sizes lose their last row/column (see VideoWriter).
    """
    with VideoWriter(path, fps, crf) as writer:
        if isinstance(frames, np.ndarray):
            writer.write(frames)
        else:
            for chunk in frames:
                writer.write(chunk)
        if writer.frames_written == 0:
            raise MediaError(f"no frames to write to {path}")


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize frames [F, H, W, 3] (or one [H, W, 3]) to height x width with Pillow's bicubic filter.

    The aspect ratio is not preserved (see `fit_frames`). Pillow widens the filter when shrinking, so
    downscaling is antialiased. Returns the input itself when it already has the size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    single = np.asarray(frames).ndim == 3
    batch = _as_frames(frames)  # [F, H, W, 3]
    if batch.shape[1:3] == (height, width):
        return frames
    out = np.stack([
        np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in batch
    ])  # [F, height, width, 3]
    return out[0] if single else out


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale frames [F, H, W, 3] (or [H, W, 3]) to cover height x width, then centre-crop to exactly that.

    The aspect ratio is kept (no distortion, no borders); whatever sticks out of the target is cut evenly from
    both sides. Returns the input itself when it already has the size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    single = np.asarray(frames).ndim == 3
    batch = _as_frames(frames)  # [F, H, W, 3]
    h, w = batch.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    # rounding may land one pixel short of the target; max() keeps the cover guarantee
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    scaled = resize_frames(batch, sh, sw)  # [F, sh, sw, 3]
    top, left = (sh - height) // 2, (sw - width) // 2
    out = np.ascontiguousarray(scaled[:, top:top + height, left:left + width])
    return out[0] if single else out


def _bounce(x: np.ndarray | float) -> np.ndarray:
    """Triangle wave of period 2 mapping any real to [0, 1]: a position that bounces between two walls."""
    return 1.0 - np.abs(np.mod(x, 2.0) - 1.0)


def synthetic_clip(num_frames: int, height: int, width: int, fps: float = DEFAULT_FPS, seed: int = 0) -> VideoClip:
    """A deterministic, visibly moving test pattern: a drifting colour gradient, a disc and a square.

    The shapes move at constant speed and bounce off the frame edges (never jump), so a continuation model has
    smooth motion to continue. The same arguments always give the same frames.
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need at least one frame of at least 1x1, got {num_frames} of {width}x{height}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite positive number, got {fps!r}")
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0.0, 2.0 * np.pi, 3)  # per colour channel
    start = rng.uniform(0.0, 2.0, (2, 2))  # (shape, axis) position along the bounce wave
    # at least 0.01 of the travel per frame, so every seed moves visibly, at most 0.03 so motion stays smooth
    speed = rng.uniform(0.01, 0.03, (2, 2)) * rng.choice([-1.0, 1.0], (2, 2))
    colours = rng.integers(30, 256, (2, 3)).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
    yn, xn = y / max(height, 1), x / max(width, 1)
    radius = 0.15 * min(height, width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / fps
        # background: diagonal sine bands per channel, drifting with time
        img = 127.5 + 100.0 * np.sin(
            2.0 * np.pi * (xn + 0.5 * yn)[..., None] + phase + 1.5 * t
        )  # [H, W, 3]
        for k in range(2):
            # keep the whole shape inside the frame: centres bounce within [radius, size - radius]
            cy = radius + _bounce(start[k, 0] + speed[k, 0] * i) * max(height - 2 * radius, 0.0)
            cx = radius + _bounce(start[k, 1] + speed[k, 1] * i) * max(width - 2 * radius, 0.0)
            if k == 0:
                mask = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2  # disc
            else:
                mask = (np.abs(y - cy) <= radius * 0.8) & (np.abs(x - cx) <= radius * 0.8)  # square
            img[mask] = colours[k]
        frames[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return VideoClip(frames, float(fps))


def contact_sheet(
    frames: np.ndarray, columns: int = 8, max_frames: int = 32, path: str | Path | None = None
) -> np.ndarray:
    """Tile up to `max_frames` evenly spaced frames (first and last included) into one RGB image.

    Frames go left to right, top to bottom, `columns` per row, with thin dark separators between them; unused
    cells of the last row stay dark. Returns the image [rows*H + gaps, cols*W + gaps, 3] uint8 and also writes it
    as a PNG when `path` is given.
    """
    if columns < 1 or max_frames < 1:
        raise ValueError(f"columns and max_frames must be >= 1, got {columns} and {max_frames}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise MediaError(f"a contact sheet needs frames [F >= 1, H, W, 3], got shape {frames.shape}")
    frames = _as_frames(frames)
    picks = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(np.int64)
    chosen = frames[picks]  # [n, H, W, 3]
    n, h, w, _ = chosen.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = np.full(
        (rows * h + (rows - 1) * SEPARATOR, cols * w + (cols - 1) * SEPARATOR, 3), SEPARATOR_VALUE, dtype=np.uint8
    )
    for i, frame in enumerate(chosen):
        r, c = divmod(i, cols)
        top, left = r * (h + SEPARATOR), c * (w + SEPARATOR)
        sheet[top:top + h, left:left + w] = frame
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path, format="PNG")
    return sheet


CONTINUATION_GAP = 8  # pixels between the conditioning frames and the generated frames of a row
CONTINUATION_GAP_VALUE = 235  # a light bar: where the model's own frames begin


def continuation_sheet(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    cond_shown: int = 4,
    generated_shown: int = 8,
    scale: int = 1,
    path: str | Path | None = None,
) -> np.ndarray:
    """Conditioning frames beside the frames generated from them, one continuation per row.

    Each row is (conditioning [Fc, H, W, 3], generated [Fg, H, W, 3], truth [Fg, H, W, 3] or None). A row shows
    the last `cond_shown` conditioning frames, a light bar, then `generated_shown` evenly spaced generated frames
    (first and last included). With a truth, a second line under it shows the true frames at the same times
    (its conditioning cells stay dark), so a viewer can see whether the motion continued. `scale` enlarges every
    frame by pixel repetition (small model frames are hard to see). Returns the image and writes a PNG when
    `path` is given.
    """
    if not rows or cond_shown < 1 or generated_shown < 1 or scale < 1:
        raise ValueError("need at least one row, and cond_shown, generated_shown and scale >= 1")
    lines: list[tuple[np.ndarray, np.ndarray | None]] = []  # (generated or true frames, conditioning or None)
    size: tuple[int, int] | None = None
    for cond, gen, truth in rows:
        cond, gen = _as_frames(cond, "conditioning frames"), _as_frames(gen, "generated frames")
        if size is None:
            size = cond.shape[1:3]
        for part in (cond, gen, *([] if truth is None else [_as_frames(truth, "true frames")])):
            if part.shape[1:3] != size:
                raise MediaError(f"every frame of a continuation sheet must be {size[1]}x{size[0]}, "
                                 f"got {part.shape[2]}x{part.shape[1]}")
        picks = np.linspace(0, len(gen) - 1, min(generated_shown, len(gen))).round().astype(np.int64)
        lines.append((gen[picks], cond[-cond_shown:]))
        if truth is not None:
            if len(truth) != len(gen):
                raise MediaError(f"truth has {len(truth)} frames, the generated chunk {len(gen)}")
            lines.append((truth[picks], None))
    assert size is not None
    h, w = size[0] * scale, size[1] * scale
    cells = generated_shown
    width = cond_shown * w + (cond_shown - 1) * SEPARATOR + CONTINUATION_GAP + cells * w + (cells - 1) * SEPARATOR
    height = len(lines) * h + (len(lines) - 1) * SEPARATOR
    sheet = np.full((height, width, 3), SEPARATOR_VALUE, dtype=np.uint8)
    left_of_gen = cond_shown * (w + SEPARATOR) - SEPARATOR + CONTINUATION_GAP
    sheet[:, left_of_gen - CONTINUATION_GAP:left_of_gen] = CONTINUATION_GAP_VALUE
    for r, (gen_frames, cond_frames) in enumerate(lines):
        top = r * (h + SEPARATOR)
        if cond_frames is not None:
            # right-aligned, so the newest conditioning frame always touches the bar
            offset = cond_shown - len(cond_frames)
            for i, frame in enumerate(cond_frames):
                left = (offset + i) * (w + SEPARATOR)
                sheet[top:top + h, left:left + w] = frame.repeat(scale, 0).repeat(scale, 1)
        for i, frame in enumerate(gen_frames):
            left = left_of_gen + i * (w + SEPARATOR)
            sheet[top:top + h, left:left + w] = frame.repeat(scale, 0).repeat(scale, 1)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(path, format="PNG")
    return sheet
