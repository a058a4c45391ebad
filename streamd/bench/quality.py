"""`streamd bench quality`: does the model continue video? Scores against the truth and two baselines.

On held-out procedural clips (`clip_seed("heldout", i)`, never seen in training) of moving content (moving
objects, camera pans, zooms, rotation), the model continues 13 true frames (4 latents) by one chunk of 16 frames
(4 latents), seeded, and the chunk is scored against the clip's true next 16 frames. In the same run and on the
same clips it scores:

- copy-last: every future frame is the last conditioning frame (what a frozen stream shows);
- linear: f[-1] + k * (f[-1] - f[-2]), clipped to 0..255 (pixel-wise linear extrapolation);
- codec: the true frames through the embedded codec (encode + decode), the ceiling the model's output format allows.

PSNR and SSIM are computed per frame and averaged over frames and clips, at horizons 1-4, 5-8, 9-16 (and 5-16, the
goal's figure), at full resolution and at 1/8 scale (8x8 mean pooling: the coarse layout and motion, where small
texture detail that no model can predict after a few frames no longer dominates).

Two more figures:

- drift: 60 s (900 frames at 15 fps) of self-continuation from one held-out clip with no live input. Per 10 s, the
  output's mean, standard deviation and mean absolute frame-to-frame change, beside the same for the real scene
  rendered for the same 60 s. A collapse to grey shows as a falling std and change; a blow-up to noise as a
  rising change.
- prompt effect: one conditioning frame (one latent: no motion in it), guidance on, and captions that name a
  direction ("a red disc moving left ...", "camera panning up ..."). Each scene is generated with its caption and
  with the caption's direction swapped; the generated motion (object centroid or whole-frame phase correlation)
  either agrees with the prompt it was given, with the opposite direction, or is too small to say.

Every metric is plain numpy, written here (no image library): SSIM uses a Gaussian window (sigma 1.5, 7 taps) on
luma. `score_chunks` scores any (conditioning, generated, truth) triples against copy-last, for other tests.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..model.bundle import load_model
from ..pipeline import ChunkParams, ContinuationPipeline, frames_to_video, video_to_frames
from ..train.data import COLOURS, Scene, clip_seed, make_scene, render_scene

MOVING_KINDS = ("objects", "pan", "zoom", "rotate")
COND_FRAMES = 13  # 4 latents
CHUNK_LATENTS = 4  # 16 frames
CHUNK_FRAMES = 4 * CHUNK_LATENTS
# (first, last) frame numbers of each horizon, 1-based and inclusive, counted from the first generated frame
HORIZONS: dict[str, tuple[int, int]] = {"1-4": (1, 4), "5-8": (5, 8), "9-16": (9, 16), "5-16": (5, 16)}
POOL = 8
FPS = 15.0
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# a motion smaller than this (pixels over the chunk) is "undetermined" in the prompt test
MIN_MOTION_PX = 1.0
# Pans whose motion phase correlation measures without ambiguity: stripes and checkers repeat within a few
# pixels (a 4-frame hop of a fast pan can alias to the opposite direction) and stripes hide motion along them.
PAN_TEXTURES = ("noise", "blobs")


# ---------------------------------------------------------------------------------------------------- metrics
def pool(frames: np.ndarray, k: int = POOL) -> np.ndarray:
    """Mean-pool k x k blocks: [F, H, W, C] -> [F, H // k, W // k, C] float64 (a ragged edge is cut)."""
    f, h, w, c = frames.shape
    h, w = h // k * k, w // k * k
    x = frames[:, :h, :w].astype(np.float64).reshape(f, h // k, k, w // k, k, c)
    return x.mean(axis=(2, 4))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Per-frame PSNR in dB of [F, H, W, C] arrays (capped at 100 dB for identical frames): [F]."""
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(err > 0, 10.0 * np.log10(peak**2 / np.maximum(err, 1e-10)), 100.0)


def _luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB [F, H, W, 3] (0..255): [F, H, W] float64."""
    x = frames.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _gaussian_taps(sigma: float = 1.5, radius: int = 3) -> np.ndarray:
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def _blur(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable filter over the last two axes of [F, H, W], mirrored at the edges (same size out)."""
    r = len(taps) // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="symmetric")  # symmetric copes with sides < r
    h, w = x.shape[1:]
    rows = sum(t * padded[:, i:i + h, :] for i, t in enumerate(taps))  # [F, H, W + 2r]
    return sum(t * rows[:, :, i:i + w] for i, t in enumerate(taps))  # [F, H, W]


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004) on luma, Gaussian window sigma 1.5 (7 taps), K1 0.01, K2 0.03: [F]."""
    x, y = _luma(a), _luma(b)
    taps = _gaussian_taps()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _blur(x, taps), _blur(y, taps)
    vx = _blur(x * x, taps) - mx * mx
    vy = _blur(y * y, taps) - my * my
    cov = _blur(x * y, taps) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(len(a), -1).mean(axis=1)


def copy_last(cond: np.ndarray, frames: int) -> np.ndarray:
    """Baseline: the last conditioning frame repeated: [frames, H, W, 3] uint8."""
    return np.repeat(cond[-1:], frames, axis=0)


def linear_extrapolation(cond: np.ndarray, frames: int) -> np.ndarray:
    """Baseline: f[-1] + k (f[-1] - f[-2]) for k = 1..frames, clipped to 0..255: [frames, H, W, 3] uint8."""
    last, prev = cond[-1].astype(np.float64), cond[-2].astype(np.float64)
    k = np.arange(1, frames + 1, dtype=np.float64)[:, None, None, None]
    return np.clip(np.rint(last + k * (last - prev)), 0, 255).astype(np.uint8)


def horizon_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """{"full" | "pool8": {"psnr" | "ssim": {horizon: mean}}} of one predicted chunk against the truth."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scale, (p, t) in {"full": (pred, truth), f"pool{POOL}": (pool(pred), pool(truth))}.items():
        per_frame = {"psnr": psnr(p, t), "ssim": ssim(p, t)}
        out[scale] = {name: {h: float(v[a - 1:b].mean()) for h, (a, b) in HORIZONS.items() if b <= len(v)}
                      for name, v in per_frame.items()}
    return out


@dataclass(frozen=True)
class ContinuationScore:
    """PSNR (dB, at 1/8 scale over frames first..last of each chunk) of a model and of two baselines."""

    model_db: float
    copy_last_db: float
    linear_db: float
    chunks: int

    @property
    def margin_db(self) -> float:
        """How far the model is above copy-last (positive: it follows the motion better than a frozen frame)."""
        return self.model_db - self.copy_last_db


def score_chunks(
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], first: int = 5, last: int = 16, scale: int = POOL
) -> ContinuationScore:
    """Score (conditioning, generated, truth) triples against copy-last and linear extrapolation.

    Each triple is the frames that conditioned a chunk (uint8 [>= 2, H, W, 3], oldest first), the chunk's
    generated frames [F, H, W, 3] and the true frames at the same times [F, H, W, 3]. PSNR is taken per frame
    over frames `first..last` (1-based, inclusive) of each chunk after `scale` x `scale` mean pooling (1: none),
    and averaged over every scored frame.
    """
    model, copy, lin = [], [], []
    n = 0
    for cond, gen, truth in chunks:
        if gen.shape != truth.shape or cond.shape[1:] != gen.shape[1:]:
            raise ValueError(f"shapes differ: cond {cond.shape}, generated {gen.shape}, truth {truth.shape}")
        sel = slice(first - 1, min(last, len(gen)))
        prep = (lambda f: pool(f, scale)) if scale > 1 else (lambda f: f.astype(np.float64))
        t = prep(truth[sel])
        model.append(psnr(prep(gen[sel]), t))
        copy.append(psnr(prep(copy_last(cond, len(gen))[sel]), t))
        lin.append(psnr(prep(linear_extrapolation(cond, len(gen))[sel]), t))
        n += 1
    if not n:
        raise ValueError("no chunks to score")
    return ContinuationScore(float(np.concatenate(model).mean()), float(np.concatenate(copy).mean()),
                             float(np.concatenate(lin).mean()), n)


# ---------------------------------------------------------------------------------------------------- motion
def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Global displacement (dx, dy) in pixels of the content of frame b relative to frame a, by phase correlation.

    Both are [H, W, 3] uint8; a Hann window tames the frame edges; the peak is refined to sub-pixel precision
    with a parabola through its neighbours. Positive dx: content moved right; positive dy: down.
    """
    ya, yb = _luma(a[None])[0], _luma(b[None])[0]  # [H, W]
    h, w = ya.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((ya - ya.mean()) * window)
    fb = np.fft.fft2((yb - yb.mean()) * window)
    cross = np.conj(fa) * fb
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real  # [H, W]: a delta at the displacement
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)

    def refine(c_minus: float, c0: float, c_plus: float) -> float:
        denom = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(denom) < 1e-12 else 0.5 * (c_minus - c_plus) / denom

    dy = py + refine(corr[(py - 1) % h, px], corr[py, px], corr[(py + 1) % h, px])
    dx = px + refine(corr[py, (px - 1) % w], corr[py, px], corr[py, (px + 1) % w])
    # displacements beyond half the frame wrap around to negative ones
    return float((dx + w / 2) % w - w / 2), float((dy + h / 2) % h - h / 2)


def object_centroids(frames: np.ndarray, scene: Scene) -> np.ndarray:
    """Centroid (x, y) per frame of the pixels nearer the first object's colour than any blend of the scene's
    two background colours: [F, 2], NaN where fewer than 4 pixels are.

    A fixed colour tolerance would lose an object that a continuation has blurred or dimmed; this finds it as
    long as it is more object than background. `trackable` scenes keep the two apart.
    """
    x = frames.astype(np.float64) / 255.0  # [F, H, W, 3]
    obj = np.array(COLOURS[scene.objects[0].colour])
    a, b = np.array(COLOURS[scene.colour_a]), np.array(COLOURS[scene.colour_b])
    ab = b - a
    t = np.clip(((x - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)[..., None]  # [F, H, W, 1]
    to_background = np.linalg.norm(x - (a + t * ab), axis=-1)
    mask = np.linalg.norm(x - obj, axis=-1) < to_background  # [F, H, W]
    ys, xs = np.mgrid[0:frames.shape[1], 0:frames.shape[2]]
    count = mask.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([(mask * xs).sum(axis=(1, 2)) / count, (mask * ys).sum(axis=(1, 2)) / count], axis=1)
    out[count < 4] = np.nan
    return out


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from point p to the segment a-b (RGB, 0..1)."""
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def trackable(scene: Scene, min_distance: float = 0.35) -> bool:
    """True when the first object's colour is far from every blend of the background's two colours, so that
    `object_centroids` finds the object and nothing else."""
    if not scene.objects:
        return False
    a, b = np.array(COLOURS[scene.colour_a]), np.array(COLOURS[scene.colour_b])
    return _segment_distance(np.array(COLOURS[scene.objects[0].colour]), a, b) > min_distance


def motion(scene: Scene, start: np.ndarray, frames: np.ndarray) -> np.ndarray | None:
    """Displacement (dx, dy) in pixels from frame `start` [H, W, 3] to the mean over the last 4 of `frames`.

    Object scenes track the first object (`object_centroids`; meant for one-object scenes). Camera motion sums
    phase correlations over hops of 4 frames (start -> frame 4 -> 8 -> ...), each hop short enough never to wrap
    around the frame. None when the object is not found.
    """
    if scene.kind == "objects":
        c = object_centroids(np.concatenate([start[None], frames[-4:]]), scene)
        if np.isnan(c).any():
            return None
        return c[1:].mean(axis=0) - c[0]
    hops = [start, *frames[3::4]]
    return np.sum([phase_shift(a, b) for a, b in zip(hops[:-1], hops[1:])], axis=0)


# ---------------------------------------------------------------------------------------------------- clips
def moving_clips(count: int, height: int, width: int, start: int = 0) -> list[tuple[int, Scene]]:
    """The first `count` held-out scenes (index, scene) of a moving kind (MOVING_KINDS), from index `start`."""
    out: list[tuple[int, Scene]] = []
    i = start
    while len(out) < count:
        scene = make_scene(clip_seed("heldout", i), height, width)
        if scene.kind in MOVING_KINDS:
            out.append((i, scene))
        i += 1
    return out


def direction_scene(scene: Scene, width: int, height: int) -> tuple[Scene, str] | None:
    """A prompt-test version of a held-out scene, and the direction word its caption names.

    Objects: only the first object, started at the frame's centre and moving straight along its named direction
    at its own speed (so it cannot bounce within a chunk); pans over PAN_TEXTURES are kept as they are. Other
    scenes: None.
    """
    if scene.kind == "pan" and scene.texture in PAN_TEXTURES:
        word = next(w for w in _OPPOSITE if f"panning {w} " in scene.caption)
        return scene, word
    if scene.kind != "objects" or not trackable(scene):
        return None
    obj = scene.objects[0]
    speed = math.hypot(obj.vx, obj.vy)
    word = next(w for w in _OPPOSITE if f"moving {w}" in scene.caption)
    dx, dy = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}[word]
    obj = replace(obj, x=width / 2, y=height / 2, vx=speed * dx, vy=speed * dy)
    return replace(scene, objects=(obj,)), word


def swap_direction(caption: str, word: str) -> str:
    """The caption with its direction word replaced by the opposite one."""
    for lead in ("moving ", "panning "):
        if lead + word in caption:
            return caption.replace(lead + word, lead + _OPPOSITE[word], 1)
    raise ValueError(f"{caption!r} does not name the direction {word!r}")


def crossing_scenes(count: int, width: int, height: int, start: int = 0) -> list[Scene]:
    """`count` held-out single-object scenes re-aimed to move horizontally through the frame's centre.

    The first object of each trackable held-out object scene keeps its shape, colour, size and speed (at least
    1 px per frame, so the motion over a chunk is well above measurement noise); it moves along x, crossing the
    centre at frame 14, rightwards in even-numbered scenes and leftwards in odd ones (a model with a bias to
    one side scores no better than chance). Over 29 frames it never reaches an edge, so it cannot bounce: the
    true motion is the same forwards and, reversed, backwards.
    """
    out: list[Scene] = []
    i = start
    while len(out) < count:
        scene = make_scene(clip_seed("heldout", i), height, width)
        i += 1
        if scene.kind != "objects" or not trackable(scene):
            continue
        obj = scene.objects[0]
        speed = max(1.0, math.hypot(obj.vx, obj.vy))
        sign = 1.0 if len(out) % 2 == 0 else -1.0
        x0 = width / 2 - sign * speed * (COND_FRAMES + 1)
        ends = (x0, x0 + sign * speed * (COND_FRAMES + CHUNK_FRAMES - 1))  # frames 0 and 28
        if not all(obj.radius < x < width - obj.radius for x in ends):
            continue  # too fast or too big to cross without touching an edge
        out.append(replace(scene, objects=(replace(obj, x=x0, y=height / 2, vx=sign * speed, vy=0.0),)))
    return out


def motion_reversal(pipe: ContinuationPipeline, count: int, params: ChunkParams) -> dict[str, Any]:
    """Forward and reversed conditioning: does the predicted motion follow the frames' order?

    Each `crossing_scenes` clip is continued from its 13 frames in order and from the same 13 frames reversed
    (no prompt). The generated x displacement (object centroid, last conditioning frame to the chunk's last 4
    frames) agrees when its sign is the true motion's (forwards) or the opposite (reversed).
    """
    h, w = pipe.bundle.height, pipe.bundle.width
    counts = {"forward_agrees": 0, "reversed_agrees": 0, "both": 0, "lost": 0}
    moved: dict[str, list[float]] = {"true": [], "forward": [], "reversed": []}
    for n, scene in enumerate(crossing_scenes(count, w, h)):
        video = render_scene(scene, COND_FRAMES + CHUNK_FRAMES, h, w)
        cond = video[:COND_FRAMES]
        back = np.ascontiguousarray(cond[::-1])
        truth = float(motion(scene, cond[-1], video[COND_FRAMES:])[0])  # type: ignore[index]
        p = replace(params, seed=params.seed + n)
        fwd = motion(scene, cond[-1], pipe.generate_chunk(cond, "", p).frames)
        rev = motion(scene, back[-1], pipe.generate_chunk(back, "", p).frames)
        if fwd is None or rev is None:
            counts["lost"] += 1
            continue
        f_ok, r_ok = bool(np.sign(fwd[0]) == np.sign(truth)), bool(np.sign(rev[0]) == -np.sign(truth))
        counts["forward_agrees"] += f_ok
        counts["reversed_agrees"] += r_ok
        counts["both"] += f_ok and r_ok
        for key, value in (("true", truth), ("forward", fwd[0]), ("reversed", rev[0])):
            moved[key].append(round(float(value), 2))
    return {"scenes": count, **counts, "x_displacement_px": moved}


def _axis_sign(word: str) -> tuple[int, int]:
    """(axis, sign) of a direction word on screen: axis 0 = x, 1 = y."""
    return {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}[word]


# ---------------------------------------------------------------------------------------------------- the bench
@dataclass(frozen=True)
class QualityBenchConfig:
    """What to measure (the defaults take about a minute on 2 CPU cores)."""

    model: str = "tiny"
    clips: int = 24
    prompt_scenes: int = 16
    reversal_scenes: int = 12
    drift_seconds: float = 60.0
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    device: str | None = None
    weights: str = "bf16"  # DiT block weights: bf16 (the model dtype), int8 or fp8 (model/quant.py)

    def __post_init__(self) -> None:
        if self.clips < 1 or self.prompt_scenes < 0 or self.reversal_scenes < 0 or self.drift_seconds < 0:
            raise ValueError("clips must be >= 1; prompt_scenes, reversal_scenes and drift_seconds >= 0")


def _mean_nested(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of equally shaped nested dicts of floats."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_nested([it[k] for it in items]) for k in first}
    return round(float(np.mean(items)), 4)  # type: ignore[return-value]


def _regroup(per_method: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{method: {scale: {metric: {h: v}}}} -> {metric: {scale: {method: {h: v}}}} (methods side by side)."""
    out: dict[str, Any] = {}
    for method, scales in per_method.items():
        for scale, metrics in scales.items():
            for metric, horizons in metrics.items():
                out.setdefault(metric, {}).setdefault(scale, {})[method] = horizons
    return out


def continuation_table(pipe: ContinuationPipeline, clips: list[tuple[int, Scene]], params: ChunkParams,
                       ) -> dict[str, Any]:
    """Model, copy-last, linear and codec scores on `clips` (each continued from its first 13 frames)."""
    h, w = pipe.bundle.height, pipe.bundle.width
    scores: dict[str, list[dict[str, Any]]] = {"model": [], "copy_last": [], "linear": [], "codec": []}
    per_kind: dict[str, dict[str, list[float]]] = {}
    for n, (_index, scene) in enumerate(clips):
        video = render_scene(scene, COND_FRAMES + CHUNK_FRAMES, h, w)  # [29, H, W, 3]
        cond, truth = video[:COND_FRAMES], video[COND_FRAMES:]
        gen = pipe.generate_chunk(cond, scene.caption, replace(params, seed=params.seed + n)).frames
        with torch.inference_mode():
            # the codec ceiling: the true 29 frames encoded and decoded as one causal clip
            latents = pipe.codec.encode(frames_to_video(video, pipe.codec.device, pipe.codec.dtype))
            codec = video_to_frames(pipe.codec.decode(latents))[COND_FRAMES:]
        preds = {"model": gen, "copy_last": copy_last(cond, CHUNK_FRAMES),
                 "linear": linear_extrapolation(cond, CHUNK_FRAMES), "codec": codec}
        for method, pred in preds.items():
            s = horizon_scores(pred, truth)
            scores[method].append(s)
            per_kind.setdefault(scene.kind, {}).setdefault(method, []).append(s[f"pool{POOL}"]["psnr"]["5-16"])
    table = _regroup({m: _mean_nested(v) for m, v in scores.items()})
    p = table["psnr"][f"pool{POOL}"]
    table["goal_5_16_pool8_db"] = {
        "model_minus_copy_last": round(p["model"]["5-16"] - p["copy_last"]["5-16"], 3),
        "model_minus_linear": round(p["model"]["5-16"] - p["linear"]["5-16"], 3),
        "clips_where_model_beats_copy_last": int(sum(
            a > b for kind in per_kind.values() for a, b in zip(kind["model"], kind["copy_last"]))),
    }
    table["per_kind_psnr_pool8_5_16"] = {
        kind: {"clips": len(v["model"]), **{m: round(float(np.mean(x)), 3) for m, x in v.items()}}
        for kind, v in per_kind.items()
    }
    return table


def _window_stats(frames: np.ndarray, window: int, prev: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per window of `window` frames: mean, std and mean |frame-to-frame change| (0..255 units)."""
    out = []
    x = frames.astype(np.float32)
    for start in range(0, len(x) - window + 1, window):
        part = x[start:start + window]
        before = x[start - 1:start] if start else (prev.astype(np.float32)[None] if prev is not None else part[:1])
        change = np.abs(np.diff(np.concatenate([before, part]), axis=0)).mean()
        out.append({"second": round(start / FPS, 1), "mean": round(float(part.mean()), 2),
                    "std": round(float(part.std()), 2), "change": round(float(change), 3)})
    return out


def drift(pipe: ContinuationPipeline, scene: Scene, params: ChunkParams, seconds: float) -> dict[str, Any]:
    """Self-continuation for `seconds` from the scene's first 13 frames (no live input), beside the real scene."""
    h, w = pipe.bundle.height, pipe.bundle.width
    total = int(round(seconds * FPS))
    chunks = -(-total // CHUNK_FRAMES)
    real = render_scene(scene, COND_FRAMES + chunks * CHUNK_FRAMES, h, w)  # [13 + 16 n, H, W, 3]
    history = real[:COND_FRAMES]
    out = []
    for c in range(chunks):
        # reference long-video chaining: the last 13 output frames are re-encoded as the next conditioning
        gen = pipe.generate_chunk(history[-COND_FRAMES:], scene.caption, replace(params, seed=params.seed + c)).frames
        out.append(gen)
        history = np.concatenate([history[-COND_FRAMES:], gen])
    generated = np.concatenate(out)[:total]
    window = int(10 * FPS)
    return {
        "caption": scene.caption, "kind": scene.kind, "seconds": seconds, "frames": int(total), "chunks": chunks,
        "per_10s": {"model": _window_stats(generated, window, real[COND_FRAMES - 1]),
                    "real": _window_stats(real[COND_FRAMES:COND_FRAMES + total], window, real[COND_FRAMES - 1])},
    }


def prompt_effect(pipe: ContinuationPipeline, count: int, params: ChunkParams) -> dict[str, Any]:
    """With one conditioning frame, does the direction a caption names steer the generated motion?"""
    h, w = pipe.bundle.height, pipe.bundle.width
    results = {"agrees_with_prompt": 0, "agrees_with_opposite": 0, "undetermined": 0}
    by_kind: dict[str, Counter[str]] = {}
    scenes = []
    i = 0
    while len(scenes) < count:
        made = direction_scene(make_scene(clip_seed("heldout", i), h, w), w, h)
        i += 1
        if made is not None:
            scenes.append(made)
    runs = 0
    for n, (scene, word) in enumerate(scenes):
        first = render_scene(scene, 1, h, w)  # [1, H, W, 3]: one frame, one latent, no motion information
        for prompt_word in (word, _OPPOSITE[word]):
            caption = scene.caption if prompt_word == word else swap_direction(scene.caption, word)
            gen = pipe.generate_chunk(first, caption, replace(params, seed=params.seed + n)).frames
            moved = motion(scene, first[0], gen)
            axis, sign = _axis_sign(prompt_word)
            if scene.kind == "pan":
                sign = -sign  # the camera panning right moves the content left on screen
            if moved is None or abs(moved[axis]) < MIN_MOTION_PX:
                verdict = "undetermined"
            else:
                verdict = "agrees_with_prompt" if np.sign(moved[axis]) == sign else "agrees_with_opposite"
            results[verdict] += 1
            by_kind.setdefault(scene.kind, Counter())[verdict] += 1
            runs += 1
    return {
        "scenes": len(scenes), "runs": runs, "cond_frames": 1, "guidance": params.guidance,
        **{k: round(v / max(runs, 1), 3) for k, v in results.items()},
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
    }


def run_quality_bench(config: QualityBenchConfig) -> dict[str, Any]:
    """Every figure of `streamd bench quality`, as one JSON-ready dict."""
    started = time.perf_counter()
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_model(config.model, device=device, weights=config.weights)
    pipe = ContinuationPipeline(bundle)
    overrides: dict[str, Any] = {"seed": config.seed * 100_003, "noise_latents": CHUNK_LATENTS}
    if config.steps is not None:
        overrides["steps"] = config.steps
    if config.guidance is not None:
        overrides["guidance"] = config.guidance
    params = pipe.default_params(**overrides)
    clips = moving_clips(config.clips, bundle.height, bundle.width)
    result: dict[str, Any] = {
        "model": bundle.name, "trained": bundle.trained, "weights": bundle.weights,
        "training": _training_record(bundle),
        "resolution": [bundle.height, bundle.width], "steps": params.steps, "schedule": params.schedule,
        "guidance": params.guidance, "shift": pipe.shift, "seed": config.seed,
        "cond_frames": COND_FRAMES, "generated_frames": CHUNK_FRAMES, "prompt": "the clip's caption",
        "clips": len(clips), "clip_kinds": dict(Counter(s.kind for _, s in clips)),
        "heldout_indices": [i for i, _ in clips],
    }
    t0 = time.perf_counter()
    result.update(continuation_table(pipe, clips, params))
    result["continuation_seconds"] = round(time.perf_counter() - t0, 1)
    if config.drift_seconds > 0:
        t0 = time.perf_counter()
        result["drift"] = drift(pipe, clips[0][1], params, config.drift_seconds)
        result["drift"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if config.prompt_scenes > 0:
        result["prompt_effect"] = prompt_effect(pipe, config.prompt_scenes, params)
    if config.reversal_scenes > 0:
        result["motion_reversal"] = motion_reversal(pipe, config.reversal_scenes, params)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _training_record(bundle: Any) -> dict[str, Any] | None:
    """Steps, samples and time from the weights' train.json (written by `streamd train`), when there is one."""
    if bundle.weights_dir is None:
        return None
    path = bundle.weights_dir.parent / "train.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    runs, earlier = 1, record
    while "continued_from" in earlier:  # a continued run (`streamd train --init`) counts the runs before it
        runs, earlier = runs + 1, earlier["continued_from"]
    totals = {k: record.get(f"total_{k}", record.get(k)) for k in ("steps_done", "samples_seen", "train_seconds")}
    return {**totals, "parameters": record.get("parameters"), "runs": runs}


# ---------------------------------------------------------------------------------------------------- the demo
@dataclass
class DemoContinuations:
    """What `streamd demo` shows beside the daemon's output: continuations by the bare pipeline and a score."""

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (13 conditioning, 16 generated, 16 true) frames
    labels: list[str]
    score: ContinuationScore  # over every held-out clip scored (the rows' and more)
    scored_clips: int
    params: ChunkParams  # how the chunks were sampled (the seed is per chunk)


def demo_continuations(pipe: ContinuationPipeline, clips: int = 8, shown: int = 3, seed: int = 0,
                       live_pattern: np.ndarray | None = None, steps: int | None = None,
                       guidance: float | None = None) -> DemoContinuations:
    """Continue `clips` held-out moving clips (their captions as prompts) and score them against copy-last.

    The first `shown` become sheet rows; `live_pattern` (29 frames of the demo's live input at the model's
    size, when given) is continued too, with an empty prompt as the daemon runs by default, and shown first.
    `steps` and `guidance` override the model's defaults (None: the model's).
    """
    h, w = pipe.bundle.height, pipe.bundle.width
    overrides: dict[str, Any] = {"noise_latents": CHUNK_LATENTS}
    if steps is not None:
        overrides["steps"] = steps
    if guidance is not None:
        overrides["guidance"] = guidance
    params = pipe.default_params(**overrides)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    labels: list[str] = []
    scored = []
    if live_pattern is not None:
        cond, truth = live_pattern[:COND_FRAMES], live_pattern[COND_FRAMES:COND_FRAMES + CHUNK_FRAMES]
        gen = pipe.generate_chunk(cond, "", replace(params, seed=seed)).frames
        rows.append((cond, gen, truth))
        labels.append("the demo's live test pattern (no prompt)")
    for n, (index, scene) in enumerate(moving_clips(clips, h, w)):
        video = render_scene(scene, COND_FRAMES + CHUNK_FRAMES, h, w)
        cond, truth = video[:COND_FRAMES], video[COND_FRAMES:]
        gen = pipe.generate_chunk(cond, scene.caption, replace(params, seed=seed + 1 + n)).frames
        scored.append((cond, gen, truth))
        if n < shown:
            rows.append((cond, gen, truth))
            labels.append(f"held-out clip {index}: {scene.caption}")
    return DemoContinuations(rows, labels, score_chunks(scored), len(scored), params)
