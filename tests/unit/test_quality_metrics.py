"""The numpy metrics of `streamd bench quality`: PSNR, SSIM, pooling, baselines, motion measures, scoring."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamd.bench.quality import (
    copy_last,
    crossing_scenes,
    linear_extrapolation,
    object_centroids,
    phase_shift,
    pool,
    psnr,
    score_chunks,
    ssim,
    swap_direction,
)
from streamd.media import synthetic_clip
from streamd.train.data import COLOURS, Obj, Scene, render_scene


def rng_frames(n: int = 3, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_psnr_known_values() -> None:
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[1] += 10  # MSE 100 -> 10 log10(255^2 / 100)
    np.testing.assert_allclose(psnr(a, b), [100.0, 10 * np.log10(255**2 / 100)])


def test_ssim_identity_noise_and_symmetry() -> None:
    a, b = rng_frames(seed=1), rng_frames(seed=2)
    np.testing.assert_allclose(ssim(a, a), 1.0)
    assert (ssim(a, b) < 0.1).all()
    np.testing.assert_allclose(ssim(a, b), ssim(b, a))
    smooth = synthetic_clip(2, 32, 48).frames
    slightly = np.clip(smooth.astype(int) + 3, 0, 255).astype(np.uint8)
    assert (ssim(smooth, slightly) > 0.95).all()
    tiny = pool(a)  # 4x6 frames: the Gaussian window is wider than the frame, mirrored
    assert ssim(tiny, tiny).shape == (3,)


def test_pool_means_blocks() -> None:
    x = np.arange(16 * 16, dtype=np.float64).reshape(1, 16, 16, 1).repeat(3, axis=3)
    p = pool(x.astype(np.uint8), 8)
    assert p.shape == (1, 2, 2, 3)
    assert p[0, 0, 0, 0] == pytest.approx(x[0, :8, :8, 0].astype(np.uint8).mean())


def test_baselines() -> None:
    cond = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 20, 50)])
    assert (copy_last(cond, 4) == 50).all() and copy_last(cond, 4).shape == (4, 2, 2, 3)
    lin = linear_extrapolation(cond, 8)
    assert [int(f[0, 0, 0]) for f in lin] == [80, 110, 140, 170, 200, 230, 255, 255]  # clipped at 255


def test_phase_shift_recovers_a_translation() -> None:
    frame = synthetic_clip(1, 64, 112, seed=4).frames[0]
    for dx, dy in [(5, -3), (-7, 2), (0, 0)]:
        moved = np.roll(frame, (dy, dx), axis=(0, 1))
        mx, my = phase_shift(frame, moved)
        assert mx == pytest.approx(dx, abs=0.5) and my == pytest.approx(dy, abs=0.5)


def test_object_centroids_track_a_disc() -> None:
    h, w = 64, 112
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.zeros((3, h, w, 3), np.uint8)  # a black background
    red = (np.array(COLOURS["red"]) * 255).astype(np.uint8)
    for i, cx in enumerate((20, 40, 60)):
        frames[i][(xx - cx) ** 2 + (yy - 30) ** 2 <= 64] = red
    disc = Obj("disc", "red", 8.0, 20.0, 30.0, 20.0, 0.0)
    scene = Scene(kind="objects", texture="plain", colour_a="black", colour_b="white", tex_params=(20.0,),
                  objects=(disc,))
    np.testing.assert_allclose(object_centroids(frames, scene), [[20, 30], [40, 30], [60, 30]], atol=0.01)
    assert np.isnan(object_centroids(frames, replace(scene, objects=(replace(disc, colour="green"),)))).all()


def test_object_centroids_find_a_dimmed_blurred_object_and_not_the_background() -> None:
    scene = crossing_scenes(1, 112, 64)[0]  # one object over a background of two colours far from its own
    frame = render_scene(scene, 1, 64, 112)[0].astype(np.float64)
    background = render_scene(replace(scene, objects=()), 1, 64, 112)[0].astype(np.float64)
    exact = object_centroids(frame[None].astype(np.uint8), scene)[0]
    np.testing.assert_allclose(exact, [scene.objects[0].x, scene.objects[0].y], atol=0.5)
    # 55 % object, 45 % background: what a blurred continuation makes of it
    faded = (0.55 * frame + 0.45 * background).astype(np.uint8)[None]
    np.testing.assert_allclose(object_centroids(faded, scene)[0], exact, atol=0.5)
    assert np.isnan(object_centroids(background.astype(np.uint8)[None], scene)).all()


def test_crossing_scenes_alternate_and_never_touch_an_edge() -> None:
    scenes = crossing_scenes(8, 112, 64)
    assert [np.sign(s.objects[0].vx) for s in scenes] == [1, -1] * 4
    for s in scenes:
        o = s.objects[0]
        assert o.vy == 0 and abs(o.vx) >= 1 and len(s.objects) == 1
        for x in (o.x, o.x + 28 * o.vx):
            assert o.radius < x < 112 - o.radius
        assert abs(o.x + 14 * o.vx - 56) < 1e-9  # crosses the centre at frame 14


def test_score_chunks_ranks_a_perfect_prediction_above_copy_last() -> None:
    clip = synthetic_clip(29, 64, 112, seed=2).frames
    cond, truth = clip[:13], clip[13:]
    perfect = score_chunks([(cond, truth, truth)])
    assert perfect.model_db == pytest.approx(100.0) and perfect.margin_db > 50 and perfect.chunks == 1
    frozen = score_chunks([(cond, copy_last(cond, 16), truth)])
    assert frozen.margin_db == pytest.approx(0.0) and frozen.linear_db != frozen.copy_last_db
    with pytest.raises(ValueError, match="no chunks"):
        score_chunks([])
    with pytest.raises(ValueError, match="shapes"):
        score_chunks([(cond, truth[:, :32], truth)])


def test_swap_direction() -> None:
    assert swap_direction("a red disc moving left over blue stripes", "left") == \
        "a red disc moving right over blue stripes"
    assert swap_direction("camera panning up over red and blue noise", "up") == \
        "camera panning down over red and blue noise"
    with pytest.raises(ValueError):
        swap_direction("still plain red", "left")
