"""Meaning: the trained embedded `tiny` model continues the video it is shown, as a viewer would check it.

These tests assert what is seen, not shapes. On held-out procedural clips (never trained on) the continuation
is of the scene that conditioned it, far closer to that scene's true next frames than to another scene's (a
daemon or pipeline that conditioned on stale, foreign or no frames fails); colours follow the conditioning
channel for channel (a channel mix-up fails); and `streamd continue` continues its input file.

What these tests do not claim yet: the shipped weights do not beat copy-last at frames 5-16, and reversing the
conditioning does not reverse the predicted motion (the model has not learned velocity). `streamd bench
quality` measures both; see the README's embedded-model section for the figures.

Everything is seeded (clips by `clip_seed("heldout", i)`, noise by the chunk seed) and runs on the CPU in fp32,
so each figure is the same on every run; thresholds are set from measured values with a wide margin (see the
comments next to them). They hold only for trained weights: with the random-weight preset they fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamd.bench.quality import moving_clips, pool, psnr
from streamd.media import read_video, write_video
from streamd.pipeline import ContinuationPipeline
from streamd.train.data import render_scene

H, W = 64, 112  # the trained model's native size
COND, CHUNK = 13, 16  # 4 conditioning latents, one chunk of 4 latents
CLIPS = 8
# PSNR at 1/8 scale over a chunk: own scene against another scene's true frames. Measured on the shipped
# weights: about 10 dB apart on average; a model that ignores its conditioning scores 0 dB apart.
OWN_SCENE_MARGIN_DB = 4.0


@pytest.fixture(scope="module")
def pipe() -> ContinuationPipeline:
    pipe = ContinuationPipeline.from_spec("tiny")
    assert pipe.bundle.trained and (pipe.bundle.height, pipe.bundle.width) == (H, W)
    return pipe


# ------------------------------------------------------------------------------------------ the scene shown
def _chunk_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR at 1/8 scale of two chunks of frames."""
    return float(psnr(pool(a), pool(b)).mean())


@pytest.fixture(scope="module")
def continuations(pipe: ContinuationPipeline) -> list[tuple[np.ndarray, np.ndarray]]:
    """(generated, true) chunks of CLIPS held-out moving clips."""
    out = []
    for n, (_, scene) in enumerate(moving_clips(CLIPS, H, W)):
        video = render_scene(scene, COND + CHUNK, H, W)
        gen = pipe.generate_chunk(video[:COND], scene.caption, pipe.default_params(seed=n)).frames
        out.append((gen, video[COND:]))
    return out


def test_the_continuation_is_of_the_scene_it_was_shown(continuations: list[tuple[np.ndarray, np.ndarray]]) -> None:
    own = [_chunk_psnr(gen, truth) for gen, truth in continuations]
    other = [_chunk_psnr(gen, continuations[(i + 1) % CLIPS][1]) for i, (gen, _) in enumerate(continuations)]
    margins = np.array(own) - np.array(other)
    assert margins.mean() > OWN_SCENE_MARGIN_DB and (margins > 0).all(), (own, other)


def test_colours_follow_the_conditioning_channel_for_channel(pipe: ContinuationPipeline) -> None:
    """Conditioning with red and blue swapped gives a continuation with red and blue swapped."""
    checked = 0
    for n, (_, scene) in enumerate(moving_clips(CLIPS, H, W)):
        cond = render_scene(scene, COND, H, W)
        means = cond.reshape(-1, 3).mean(axis=0)
        if abs(means[0] - means[2]) < 40:  # only scenes whose red and blue differ clearly
            continue
        params = pipe.default_params(seed=n)
        straight = pipe.generate_chunk(cond, "", params).frames.reshape(-1, 3).mean(axis=0)
        swapped = pipe.generate_chunk(np.ascontiguousarray(cond[..., ::-1]), "", params).frames
        swapped_means = swapped.reshape(-1, 3).mean(axis=0)
        gap = abs(straight[0] - straight[2])
        # the swapped run's red is the straight run's blue (and back), within a quarter of the red-blue gap
        assert abs(swapped_means[0] - straight[2]) < 0.25 * gap and abs(swapped_means[2] - straight[0]) < 0.25 * gap, (
            n, straight, swapped_means)
        checked += 1
    assert checked >= 3


def test_continue_command_continues_its_input(tmp_path: Path) -> None:
    (_, scene), (_, other) = moving_clips(2, H, W)
    video = render_scene(scene, COND + CHUNK, H, W)
    src, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, video[:COND], fps=15.0, crf=0)
    proc = subprocess.run([sys.executable, "-m", "streamd.cli", "continue", str(src), "-o", str(out),
                           "--segments", "1", "--prompt", scene.caption, "--seed", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" not in proc.stderr
    result = read_video(out).frames
    assert result.shape == (COND + CHUNK, H, W, 3)
    own = _chunk_psnr(result[COND:], video[COND:])
    foreign = _chunk_psnr(result[COND:], render_scene(other, COND + CHUNK, H, W)[COND:])
    assert own > foreign + OWN_SCENE_MARGIN_DB, (own, foreign)
