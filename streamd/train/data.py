"""Procedural training video, made on the fly: the motions a webcam or a camera shows, with captions.

Every clip is a pure function of its seed. A scene is a background texture seen through a moving camera (pan,
zoom, rotation), zero to three objects moving at constant velocity and bouncing off the frame edges, and a
brightness drift. Textures are analytic functions of the plane (stripes, checkers, gradients, multi-octave
sinusoid noise, soft blobs), so the camera can move anywhere without running off a canvas. The caption is built
from the scene's parameters ("a red disc moving left over blue stripes, camera still"), so a prompt names what
the model should produce.

Seeds are split: `clip_seed("train", i)` and `clip_seed("heldout", i)` never meet, so a benchmark on held-out
clips measures continuation, not memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.12, 0.1),
    "green": (0.15, 0.75, 0.2),
    "blue": (0.12, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.15),
    "cyan": (0.1, 0.8, 0.85),
    "magenta": (0.85, 0.15, 0.75),
    "orange": (0.95, 0.5, 0.1),
    "white": (0.95, 0.95, 0.95),
    "black": (0.06, 0.06, 0.06),
    "grey": (0.5, 0.5, 0.5),
}
TEXTURES = ("stripes", "checkers", "gradient", "noise", "blobs", "plain")
SHAPES = ("disc", "square")
KINDS = ("objects", "pan", "zoom", "rotate", "static", "drift")
# Fraction of each scene kind in the mix; moving objects and camera pans dominate a webcam's motion.
KIND_WEIGHTS = (0.4, 0.2, 0.1, 0.1, 0.1, 0.1)
_SPLITS = {"train": 0, "heldout": 1}
_DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}


def clip_seed(split: str, index: int) -> int:
    """The seed of clip `index` of a split ('train' or 'heldout'); the two splits never share a seed."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return int(np.random.SeedSequence([_SPLITS[split], index]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Obj:
    """A moving object: shape, colour name, radius and start position in pixels, velocity in pixels per frame."""

    shape: str
    colour: str
    radius: float
    x: float
    y: float
    vx: float
    vy: float


@dataclass(frozen=True)
class Scene:
    """Everything a clip is rendered from (one seed -> one scene)."""

    kind: str
    texture: str
    colour_a: str
    colour_b: str
    tex_params: tuple[float, ...]
    pan: tuple[float, float] = (0.0, 0.0)  # camera velocity, pixels per frame
    zoom: float = 0.0  # log-scale change per frame (> 0 zooms in)
    spin: float = 0.0  # radians per frame
    gain: float = 0.0  # brightness change per frame
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    @property
    def caption(self) -> str:
        """A sentence naming the scene's content and motion."""
        background = (f"{self.colour_a} and {self.colour_b} {self.texture}" if self.texture != "plain"
                      else f"a plain {self.colour_a} background")
        if self.kind == "objects" and self.objects:
            head = _object_phrase(self.objects[0])
            more = len(self.objects) - 1
            things = head + (f" and {more} more {'shape' if more == 1 else 'shapes'}" if more else "")
            return f"{things} over {background}"
        if self.kind == "pan":
            return f"camera panning {_direction_word(self.pan[0], self.pan[1])} over {background}"
        if self.kind == "zoom":
            return f"camera zooming {'in' if self.zoom > 0 else 'out'} on {background}"
        if self.kind == "rotate":
            return f"{background} rotating {'clockwise' if self.spin > 0 else 'anticlockwise'}"
        if self.kind == "drift":
            return f"{background} getting {'brighter' if self.gain > 0 else 'darker'}"
        return f"still {background}"


def _direction_word(dx: float, dy: float) -> str:
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _object_phrase(obj: Obj) -> str:
    return f"a {obj.colour} {obj.shape} moving {_direction_word(obj.vx, obj.vy)}"


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def make_scene(seed: int, height: int, width: int) -> Scene:
    """The scene of `seed` for frames of `height` x `width` pixels."""
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
    names = list(COLOURS)
    colour_a = _pick(rng, names)
    colour_b = _pick(rng, [c for c in names if c != colour_a])
    texture = _pick(rng, TEXTURES if kind in ("objects", "static", "drift") else TEXTURES[:-1])
    # texture parameters: a period (pixels), an angle, a phase and 8 free values for noise and blob layouts
    tex_params = (float(rng.uniform(14, 40)), float(rng.uniform(0, math.pi)), float(rng.uniform(0, 1)),
                  *map(float, rng.uniform(0, 1, 8)))
    scene = Scene(kind=kind, texture=texture, colour_a=colour_a, colour_b=colour_b, tex_params=tex_params)
    speed = float(rng.uniform(0.6, 2.2))
    if kind == "objects":
        count = int(rng.choice([1, 1, 1, 2, 3]))
        objects = []
        for i in range(count):
            obj_colour = _pick(rng, [c for c in names if c not in (colour_a, colour_b)])
            radius = float(rng.uniform(0.14, 0.3) * height)
            direction = _pick(rng, tuple(_DIRECTIONS))
            dx, dy = _DIRECTIONS[direction]
            # mostly along the named direction, with a smaller sideways part so bounces happen at angles
            side = float(rng.uniform(-0.35, 0.35))
            vx, vy = speed * (dx + side * dy), speed * (dy + side * dx)
            if i:
                vx, vy = float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))
            objects.append(Obj(_pick(rng, SHAPES), obj_colour, radius, float(rng.uniform(radius, width - radius)),
                               float(rng.uniform(radius, height - radius)), vx, vy))
        scene = _replace(scene, objects=tuple(objects))
    elif kind == "pan":
        dx, dy = _DIRECTIONS[_pick(rng, tuple(_DIRECTIONS))]
        scene = _replace(scene, pan=(speed * dx, speed * dy))
    elif kind == "zoom":
        scene = _replace(scene, zoom=float(rng.choice([-1, 1]) * rng.uniform(0.008, 0.025)))
    elif kind == "rotate":
        scene = _replace(scene, spin=float(rng.choice([-1, 1]) * rng.uniform(0.01, 0.035)))
    elif kind == "drift":
        scene = _replace(scene, gain=float(rng.choice([-1, 1]) * rng.uniform(0.006, 0.015)))
    return scene


def _replace(scene: Scene, **changes: object) -> Scene:
    from dataclasses import replace

    return replace(scene, **changes)  # type: ignore[arg-type]


def _texture(scene: Scene, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] between colour_a (0) and colour_b (1) at plane points (u, v): [F, H, W]."""
    period, angle, phase, *free = scene.tex_params
    if scene.texture == "plain":
        return np.zeros_like(u)
    if scene.texture == "stripes":
        s = (u * math.cos(angle) + v * math.sin(angle)) / period + phase
        return 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * math.pi * s))
    if scene.texture == "checkers":
        a = np.sin(2 * math.pi * (u / period + phase)) * np.sin(2 * math.pi * (v / period + phase))
        return 0.5 + 0.5 * np.tanh(4.0 * a)
    if scene.texture == "gradient":
        s = (u * math.cos(angle) + v * math.sin(angle)) / (6 * period) + phase
        return 0.5 + 0.5 * np.sin(2 * math.pi * s)
    if scene.texture == "noise":
        total = np.zeros_like(u)
        for octave in range(3):  # 3 octaves, 2 sinusoids each, amplitude halving per octave
            for k in range(2):
                a = free[2 * k + octave % 2] * 2 * math.pi + octave
                f = (2**octave) / (3 * period)
                total += 0.5**octave * np.sin(2 * math.pi * f * (u * math.cos(a) + v * math.sin(a)) + 7 * free[k + 4])
        return 0.5 + 0.5 * np.tanh(1.2 * total)
    # blobs: four soft Gaussian spots on a periodic lattice of cells of 3 periods
    cell = 3 * period
    total = np.zeros_like(u)
    for k in range(4):
        cx, cy = free[k] * cell, free[k + 4] * cell
        du = (u - cx + cell / 2) % cell - cell / 2
        dv = (v - cy + cell / 2) % cell - cell / 2
        total += np.exp(-(du**2 + dv**2) / (2 * (0.25 * period + 2) ** 2))
    return np.clip(total, 0, 1)


def _bounce(p0: float, velocity: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Position over time of a point moving at constant speed between walls lo and hi, reflecting off them."""
    span = max(hi - lo, 1e-6)
    s = (p0 - lo + velocity * t) % (2 * span)
    return lo + np.where(s <= span, s, 2 * span - s)


def render_scene(scene: Scene, frames: int, height: int, width: int,
                 window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Render `frames` frames of `scene` on a `height` x `width` frame: uint8 [F, H, W, 3].

    `window` = (top, left, rows, cols) renders only that part of the frame, [F, rows, cols, 3], exactly the
    pixels a full render would give there (objects still bounce off the full frame's edges). Training renders
    crops this way, at a quarter of the cost.
    """
    top, left, rows, cols = window if window is not None else (0, 0, height, width)
    if top < 0 or left < 0 or rows < 1 or cols < 1 or top + rows > height or left + cols > width:
        raise ValueError(f"window {window} does not lie inside a {height}x{width} frame")
    t = np.arange(frames, dtype=np.float64)[:, None, None]  # t: [F, 1, 1]
    y, x = np.mgrid[top:top + rows, left:left + cols].astype(np.float64)
    x, y = x[None] - width / 2, y[None] - height / 2  # centred pixel coordinates [1, rows, cols]
    # camera: screen point -> plane point (rotate, scale about the centre, then translate)
    scale = np.exp(-scene.zoom * t)
    ang = scene.spin * t
    u = scale * (x * np.cos(ang) - y * np.sin(ang)) + scene.pan[0] * t
    v = scale * (x * np.sin(ang) + y * np.cos(ang)) + scene.pan[1] * t
    weight = _texture(scene, u, v)[..., None]  # weight: [F, H, W, 1]
    a, b = np.array(COLOURS[scene.colour_a]), np.array(COLOURS[scene.colour_b])
    image = (1 - weight) * a + weight * b  # image: [F, H, W, 3]
    px, py = x + width / 2, y + height / 2
    for obj in scene.objects:
        cx = _bounce(obj.x, obj.vx, obj.radius, width - obj.radius, t)
        cy = _bounce(obj.y, obj.vy, obj.radius, height - obj.radius, t)
        if obj.shape == "disc":
            dist = np.sqrt((px - cx) ** 2 + (py - cy) ** 2) - obj.radius
        else:
            dist = np.maximum(np.abs(px - cx), np.abs(py - cy)) - obj.radius
        cover = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel antialiased edge
        image = (1 - cover) * image + cover * np.array(COLOURS[obj.colour])
    image = image * (1.0 + scene.gain * t[..., None])
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_clip(seed: int, frames: int, height: int, width: int,
              window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, str]:
    """One procedural clip and its caption: (uint8 [F, H, W, 3], caption); `window` as in `render_scene`."""
    scene = make_scene(seed, height, width)
    return render_scene(scene, frames, height, width, window), scene.caption
