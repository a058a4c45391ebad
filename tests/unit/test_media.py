"""Video file helpers (PyAV) and frame utilities."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streamd.media import (
    MediaError,
    VideoClip,
    VideoWriter,
    contact_sheet,
    continuation_sheet,
    fit_frames,
    read_video,
    resize_frames,
    synthetic_clip,
    write_video,
)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VideoClip]:
    clip = synthetic_clip(30, 64, 96, fps=15.0, seed=1)
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    write_video(path, clip.frames, fps=clip.fps)
    return path, clip


def test_round_trip(clip_file: tuple[Path, VideoClip]) -> None:
    path, clip = clip_file
    back = read_video(path)
    assert back.frames.shape == (30, 64, 96, 3) and back.frames.dtype == np.uint8
    assert back.fps == pytest.approx(15.0)
    assert np.abs(back.frames.astype(np.int16) - clip.frames).mean() < 6


def test_last_keeps_the_final_frames(clip_file: tuple[Path, VideoClip]) -> None:
    path, _ = clip_file
    full = read_video(path)
    tail = read_video(path, last=13)
    assert tail.fps == full.fps
    assert np.array_equal(tail.frames, full.frames[-13:])
    assert np.array_equal(read_video(path, last=500).frames, full.frames)  # more than there is: all of it
    assert np.array_equal(read_video(path, max_frames=5).frames, full.frames[:5])
    assert np.array_equal(read_video(path, max_frames=10, last=3).frames, full.frames[7:10])


def test_bad_counts(clip_file: tuple[Path, VideoClip]) -> None:
    path, _ = clip_file
    for kwargs in ({"last": 0}, {"max_frames": 0}, {"last": -2}):
        with pytest.raises(ValueError):
            read_video(path, **kwargs)  # type: ignore[arg-type]


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no video file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="no video file"):
        read_video(tmp_path)  # a directory is not a video
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError):
        read_video(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError):
        read_video(empty)


def test_file_without_a_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, dtype=np.int16).tobytes())
    with pytest.raises(MediaError, match="no video stream"):
        read_video(path)


def test_video_stream_without_frames(tmp_path: Path) -> None:
    # AVI keeps a header for a stream that never got a packet (MP4/MKV drop such a stream or fail to open)
    path = tmp_path / "noframes.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises(MediaError, match="no decodable video frames"):
        read_video(path)


@pytest.mark.parametrize("fps", [15.0, 24.0, 30000 / 1001])
def test_fps_round_trips(tmp_path: Path, fps: float) -> None:
    path = tmp_path / "rate.mp4"
    write_video(path, synthetic_clip(8, 32, 32).frames, fps=fps)
    assert read_video(path).fps == pytest.approx(fps, rel=1e-6)


def test_streaming_writer_in_chunks_and_single_frames(tmp_path: Path) -> None:
    clip = synthetic_clip(12, 48, 64, seed=2)
    with VideoWriter(tmp_path / "chunks.mp4", fps=10) as writer:
        assert writer.size is None
        writer.write(clip.frames[:5])  # [F, H, W, 3]
        writer.write(clip.frames[5])  # [H, W, 3]
        writer.write(clip.frames[6:])
        assert writer.frames_written == 12 and writer.size == (48, 64)
    writer.close()  # a second close is harmless
    back = read_video(tmp_path / "chunks.mp4")
    assert back.frames.shape == (12, 48, 64, 3) and back.fps == pytest.approx(10.0)
    assert np.abs(back.frames.astype(np.int16) - clip.frames).mean() < 6


def test_write_video_from_an_iterable(tmp_path: Path) -> None:
    clip = synthetic_clip(6, 32, 48)
    write_video(tmp_path / "gen.mp4", (f for f in clip.frames), fps=15.0)
    assert read_video(tmp_path / "gen.mp4").frames.shape == (6, 32, 48, 3)
    with pytest.raises(MediaError, match="no frames"):
        write_video(tmp_path / "none.mp4", [], fps=15.0)


def test_writer_odd_sizes_are_cropped_by_one_pixel(tmp_path: Path) -> None:
    frames = synthetic_clip(3, 65, 97).frames
    write_video(tmp_path / "odd.mp4", frames, fps=10)
    back = read_video(tmp_path / "odd.mp4").frames.astype(np.int16)
    assert back.shape == (3, 64, 96, 3)
    cropped_error = np.abs(back - frames[:, :64, :96]).mean()
    assert cropped_error < 6
    assert cropped_error < np.abs(back - resize_frames(frames, 64, 96)).mean()  # cropped, not resized


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "w.mp4", fps=10) as writer:
        writer.write(synthetic_clip(2, 32, 32).frames)
        with pytest.raises(MediaError, match="differs"):
            writer.write(synthetic_clip(1, 64, 64).frames)
        with pytest.raises(MediaError, match="uint8"):
            writer.write(np.zeros((2, 32, 32, 3), dtype=np.float32))
        with pytest.raises(MediaError, match="uint8"):
            writer.write(np.zeros((2, 32, 32, 4), dtype=np.uint8))
    assert read_video(tmp_path / "w.mp4").frames.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "x.mp4", fps=15, crf=60)


def test_resize_shapes() -> None:
    frames = synthetic_clip(4, 60, 80).frames
    out = resize_frames(frames, 30, 50)
    assert out.shape == (4, 30, 50, 3) and out.dtype == np.uint8
    assert resize_frames(frames[0], 120, 160).shape == (120, 160, 3)
    assert resize_frames(frames, 60, 80) is frames
    flat = np.full((2, 10, 10, 3), 77, dtype=np.uint8)
    assert (resize_frames(flat, 25, 7) == 77).all()  # a flat image stays flat: no ringing or shifts
    with pytest.raises(ValueError):
        resize_frames(frames, 0, 10)


def test_fit_covers_and_centre_crops() -> None:
    frames = synthetic_clip(5, 100, 300).frames
    assert fit_frames(frames, 128, 224).shape == (5, 128, 224, 3)
    assert fit_frames(frames[0], 64, 64).shape == (64, 64, 3)
    assert fit_frames(frames, 100, 300) is frames
    # a wide frame with a tall target: the middle third survives, the sides are cut, nothing is squeezed
    wide = np.zeros((1, 10, 30, 3), dtype=np.uint8)
    wide[:, :, 10:20] = 255
    fitted = fit_frames(wide, 10, 10)
    assert fitted.shape == (1, 10, 10, 3) and (fitted == 255).all()
    # a pure downscale to the same aspect equals a plain resize
    np.testing.assert_array_equal(fit_frames(frames, 50, 150), resize_frames(frames, 50, 150))


def test_synthetic_clip_is_deterministic_and_moves() -> None:
    a = synthetic_clip(10, 48, 64, fps=15.0, seed=3)
    b = synthetic_clip(10, 48, 64, fps=15.0, seed=3)
    assert a.frames.shape == (10, 48, 64, 3) and a.frames.dtype == np.uint8 and a.fps == 15.0
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, synthetic_clip(10, 48, 64, seed=4).frames)
    steps = np.abs(np.diff(a.frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # [F - 1]
    assert (steps > 1.0).all()  # every frame differs visibly from the one before
    assert (steps < 40.0).all()  # and smoothly: no jumps
    assert a.frames.std() > 20  # not a flat field


def test_contact_sheet(tmp_path: Path) -> None:
    frames = synthetic_clip(5, 100, 300).frames
    sheet = contact_sheet(frames, columns=3, path=tmp_path / "sub" / "s.png")
    assert sheet.shape == (2 * 100 + 2, 3 * 300 + 2 * 2, 3) and sheet.dtype == np.uint8
    png = Image.open(tmp_path / "sub" / "s.png")
    assert png.format == "PNG" and png.size == (904, 202)
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), sheet)
    np.testing.assert_array_equal(sheet[:100, :300], frames[0])
    np.testing.assert_array_equal(sheet[102:, 302:602], frames[4])  # the last frame, second row
    assert (sheet[100:102] == 24).all()  # separator row


def test_contact_sheet_picks_evenly_spaced_frames() -> None:
    frames = np.arange(40, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    sheet = contact_sheet(frames, columns=4, max_frames=4)
    assert sheet.shape == (4, 4 * 4 + 3 * 2, 3)
    assert [int(sheet[0, c * 6, 0]) for c in range(4)] == [0, 13, 26, 39]
    with pytest.raises(MediaError):
        contact_sheet(frames[:0])
    with pytest.raises(ValueError):
        contact_sheet(frames, columns=0)


def test_continuation_sheet_puts_conditioning_beside_generated(tmp_path: Path) -> None:
    def const(values: list[int]) -> np.ndarray:  # one flat 4x6 frame per value
        return np.array(values, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(6, 2).repeat(3, 3)

    cond, gen, truth = const(list(range(1, 14))), const(list(range(100, 116))), const(list(range(200, 216)))
    sheet = continuation_sheet([(cond, gen, truth), (cond, gen, None)], cond_shown=4, generated_shown=8,
                               path=tmp_path / "c.png")
    cell = 6 + 2  # frame width + separator
    left_of_gen = 4 * cell - 2 + 8  # four conditioning cells, then the light bar
    assert sheet.shape == (3 * 4 + 2 * 2, left_of_gen + 8 * cell - 2, 3)
    # the newest conditioning frames, oldest first, touching the bar
    assert [int(sheet[0, c * cell, 0]) for c in range(4)] == [10, 11, 12, 13]
    assert (sheet[:, left_of_gen - 8:left_of_gen] == 235).all()
    # 8 evenly spaced generated frames (first and last included), the truth at the same times under them
    picks = [int(sheet[0, left_of_gen + c * cell, 0]) for c in range(8)]
    assert picks[0] == 100 and picks[-1] == 115 and picks == sorted(picks)
    assert [int(sheet[6, left_of_gen + c * cell, 0]) for c in range(8)] == [p + 100 for p in picks]
    assert (sheet[6, :4 * cell - 2] == 24).all()  # no conditioning on the truth line
    assert int(sheet[12, 0, 0]) == 10  # the second continuation, without truth, is one line
    assert Image.open(tmp_path / "c.png").size == (sheet.shape[1], sheet.shape[0])
    big = continuation_sheet([(cond, gen, None)], scale=3)
    assert big.shape[0] == 12 and int(big[11, 17, 0]) == 10
    with pytest.raises(MediaError, match="must be"):
        continuation_sheet([(cond, gen[:, :2], None)])
    with pytest.raises(MediaError, match="truth has"):
        continuation_sheet([(cond, gen, truth[:3])])
    with pytest.raises(ValueError):
        continuation_sheet([])
