"""Received WebRTC frames are resized once, at ingest, by libswscale: cover the target, keep aspect, crop centre."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from streamd.config import WebRtcSettings
from streamd.edges.webrtc import MAX_FRAME_SIDE, FrameSizeError, WhipSession, frame_to_rgb


def rgb_frame(pixels: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, dtype=np.uint8), format="rgb24")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def squares(height: int, width: int, side: int) -> np.ndarray:
    """A checkerboard of side x side squares, black and white."""
    y, x = np.indices((height, width))
    cell = ((y // side + x // side) % 2 * 255).astype(np.uint8)
    return np.repeat(cell[..., None], 3, axis=2)


def edges_along(profile: np.ndarray) -> list[int]:
    """Indices where a black/white profile crosses mid-grey (a square's boundary lies between i-1 and i)."""
    high = profile > 127
    return [i for i in range(1, len(profile)) if high[i] != high[i - 1]]


def test_exact_size_is_only_converted() -> None:
    pixels = noise(128, 224)
    out = frame_to_rgb(rgb_frame(pixels), (128, 224))
    assert out.dtype == np.uint8 and out.shape == (128, 224, 3)
    np.testing.assert_array_equal(out, pixels)


def test_no_target_keeps_the_received_size() -> None:
    pixels = noise(241, 321)
    out = frame_to_rgb(rgb_frame(pixels))
    np.testing.assert_array_equal(out, pixels)


def test_scale_one_crop_is_the_exact_centre() -> None:
    # 100 rows x 400 columns into 100 x 100: the height already covers, so no scaling; 150 columns cut each side
    pixels = noise(100, 400)
    out = frame_to_rgb(rgb_frame(pixels), (100, 100))
    np.testing.assert_array_equal(out, pixels[:, 150:250])
    # and a tall frame loses rows evenly at top and bottom
    tall = noise(300, 64, seed=1)
    np.testing.assert_array_equal(frame_to_rgb(rgb_frame(tall), (64, 64)), tall[118:182])


def test_cover_keeps_aspect_and_crops_the_centre() -> None:
    # 4:3 source of 80 px squares into 128 x 224 (7:4): the width must cover, scale 0.7 -> 168 x 224, then
    # 20 rows are cut at the top and 20 at the bottom. Squares stay square (56 px) and the crop is centred.
    out = frame_to_rgb(rgb_frame(squares(240, 320, 80)), (128, 224))
    assert out.shape == (128, 224, 3)
    grey = out[..., 0].astype(int)
    columns = edges_along(grey[10])  # a row inside the first visible band of squares
    rows = edges_along(grey[:, 10])
    assert len(columns) == 3 and all(abs(c - e) <= 1 for c, e in zip(columns, (56, 112, 168))), columns
    # source rows 80 and 160 land at 56 and 112 before the crop, 36 and 92 after it
    assert len(rows) == 2 and all(abs(r - e) <= 1 for r, e in zip(rows, (36, 92))), rows
    # the top-left corner shows the (black) first square, the colour it has in the source
    assert grey[:20, :40].mean() < 30


@pytest.mark.parametrize("transpose", [False, True])
def test_elongated_frames_keep_the_centre(transpose: bool) -> None:
    # 8 x 4096 into 128 x 224 would scale to 128 x 65536 before the crop; the kept part is cut first instead.
    # Scale 16: the kept source columns are the centre 14 (2041..2055), the white block 2044..2052 inside them
    # lands at columns 3/14 and 11/14 of the output.
    pixels = np.zeros((8, 4096, 3), np.uint8)
    pixels[:, 2044:2052] = 255
    target = (128, 224)
    if transpose:
        pixels, target = pixels.transpose(1, 0, 2), (224, 128)
    out = frame_to_rgb(rgb_frame(pixels), target)
    assert out.shape == (*target, 3)
    profile = (out[64, :, 0] if not transpose else out[:, 64, 0]).astype(int)
    found = edges_along(profile)
    assert len(found) == 2 and abs(found[0] - 48) <= 3 and abs(found[1] - 176) <= 3, found


def test_downscaling_is_antialiased() -> None:
    # a one-pixel checkerboard averages to grey; a nearest-neighbour scaler would keep stark black and white
    out = frame_to_rgb(rgb_frame(squares(1080, 1920, 1)), (128, 224)).astype(float)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 5


@pytest.mark.parametrize("source", [(241, 321), (2, 2), (2, 4096), (4096, 2), (720, 1280), (1080, 1920)])
@pytest.mark.parametrize("target", [(128, 224), (64, 112), (127, 223)])
def test_odd_and_extreme_sizes_reach_the_target(source: tuple[int, int], target: tuple[int, int]) -> None:
    out = frame_to_rgb(rgb_frame(noise(*source)), target)
    assert out.shape == (*target, 3) and out.dtype == np.uint8


def test_odd_sized_yuv_frames_as_a_decoder_gives_them() -> None:
    # decoders hand out yuv420p; with odd sides the chroma planes round up
    frame = rgb_frame(noise(241, 321)).reformat(format="yuv420p")
    assert (frame.height, frame.width) == (241, 321)
    out = frame_to_rgb(frame, (128, 224))
    assert out.shape == (128, 224, 3)
    flat = rgb_frame(np.full((241, 321, 3), 200, np.uint8)).reformat(format="yuv420p")
    assert np.abs(frame_to_rgb(flat, (64, 112)).astype(int) - 200).max() <= 3


@pytest.mark.parametrize("source", [(1, 64), (64, 1), (2, MAX_FRAME_SIDE + 1), (MAX_FRAME_SIDE + 1, 2)])
def test_frames_outside_the_bounds_are_refused(source: tuple[int, int]) -> None:
    with pytest.raises(FrameSizeError, match="outside 2..4096"):
        frame_to_rgb(rgb_frame(noise(*source)), (128, 224))
    with pytest.raises(FrameSizeError):  # refused whatever the target, even none
        frame_to_rgb(rgb_frame(noise(*source)))


def test_a_target_outside_the_bounds_is_refused() -> None:
    with pytest.raises(FrameSizeError):
        frame_to_rgb(rgb_frame(noise(64, 64)), (1, 64))


class ScriptedTrack:
    """A video track that yields the given frames, then ends."""

    kind = "video"

    def __init__(self, frames: list[av.VideoFrame]) -> None:
        self._frames = list(frames)

    async def recv(self) -> av.VideoFrame:
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


def test_session_resizes_every_frame_and_drops_and_counts_bad_ones() -> None:
    received: list[tuple[str, np.ndarray]] = []
    ended: list[str] = []

    async def on_close(session: WhipSession, reason: str) -> None:
        ended.append(reason)

    async def scenario() -> WhipSession:
        session = WhipSession("sid", "cam", WebRtcSettings(), lambda s, f: received.append((s, f)), on_close,
                              lambda s: None, frame_size=(64, 112))
        session.connected.set()
        frames = [rgb_frame(noise(480, 640)), rgb_frame(noise(1, 64)), rgb_frame(noise(64, 112)),
                  rgb_frame(noise(2, MAX_FRAME_SIDE + 1)), rgb_frame(noise(241, 321))]
        await session._read_video(ScriptedTrack(frames))  # type: ignore[arg-type]  # noqa: SLF001
        return session

    session = asyncio.run(scenario())
    assert [s for s, _ in received] == ["cam"] * 3
    assert all(f.shape == (64, 112, 3) and f.dtype == np.uint8 for _, f in received)
    assert session.frames == 3 and session.frames_refused == 2
    assert ended == ["peer-closed"]


def test_session_refuses_an_impossible_working_size() -> None:
    async def scenario() -> None:
        async def on_close(session: WhipSession, reason: str) -> None:
            pass

        with pytest.raises(FrameSizeError):
            WhipSession("sid", "cam", WebRtcSettings(), lambda s, f: None, on_close, lambda s: None,
                        frame_size=(0, 112))

    asyncio.run(scenario())
