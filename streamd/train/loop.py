"""`streamd train`: teach a small LongCat-architecture DiT to continue procedural video.

The objective is LongCat-Video's continuation objective. A clip is encoded by the embedded codec; its first T_c
latent frames are clean conditioning (timestep 0, block-causal attention, no cross-attention) and the next
`noise_latents` are noised with one sigma per sample, x_sigma = (1 - sigma) x0 + sigma n. The DiT's raw output
is trained towards x0 - n, the sign the sampler negates before its Euler step, on the noise frames only. sigma is
drawn as the sampler visits it: uniform, then time-shifted with the model's shift (12: most samples sit at
high noise, where the motion of the next chunk is decided). T_c is drawn per batch from 1..max_cond_latents,
weighted towards a full window (the engine's usual case), so one model serves every window length it meets.

Most batches are crops (48x64 pixels, 12 tokens a latent frame instead of 28, on the codec's 8-pixel grid, so
a crop's latents are the whole frame's latents there): about 2.7 times the clips per second, and the model's
attention is relative (RoPE), so what it learns on a crop holds on the whole frame. Every 4th batch is whole
frames, so the frame's edges and the bounces off them are seen as they are at inference.

Recipe choices (measured by `streamd bench quality`): AdamW with warm-up and cosine decay, an EMA of the weights
(the EMA is what ships), caption dropout so classifier-free guidance has an unconditional branch, slight noise
on the conditioning latents so the model tolerates its own imperfect output when it continues itself, and a
per-channel loss weight that follows what a latent error costs in pixels. The embedded codec's channels differ
in pixel weight by a factor of about 300 (colour means against chroma details); a plain latent MSE spent most of
the model on details a viewer barely sees (measured: 4,500 steps reached 15.5 dB at 1/8 scale against
17.1 dB for copy-last). The weight blends the codec's pixel gain (normalised to mean 1) with a uniform share.

Deterministic by seed: batch s is built from clips `seed * 10**9 + s * batch ..` (the next `batch` of them) of
the training split and from a generator seeded with (seed, s), so a resumed run sees exactly the batches an
uninterrupted run sees, and runs with other seeds (a continued run: `init`) see other clips.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..model.dit import LongCatVideoDiT
from ..model.presets import Preset, get_preset, init_training
from ..model.text import EmbeddedTextEncoder
from ..model.vae import SPATIAL_FACTOR, EmbeddedCodec, pixel_frames
from ..pipeline import frames_to_video
from ..sampling import shift_sigmas
from .data import clip_seed, make_clip

STATE_FILE = "train_state.pt"
CLIPS_PER_SEED = 10**9  # seed s trains on clips s * CLIPS_PER_SEED onwards: other seeds, other clips
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the defaults made the shipped `tiny` weights)."""

    preset: str = "tiny"
    steps: int = 5500
    batch: int = 24  # clips per crop batch
    lr: float = 6e-4
    warmup: int = 300
    final_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_cond_latents: int = 4
    # how often each T_c = 1..max_cond_latents is drawn: the engine's window is mostly full (T_c = 4)
    cond_weights: tuple[float, ...] = (0.15, 0.15, 0.2, 0.5)
    noise_latents: int = 4
    caption_dropout: float = 0.15
    cond_noise: float = 0.05  # conditioning latents get N(0, a^2) noise with a ~ U(0, cond_noise)
    pixel_weighting: float = 0.8  # loss weight per latent channel: this share follows its pixel gain, the rest 1
    crop: tuple[int, int] = (48, 64)  # most batches are crops of this many pixels (rows, cols) of a full frame
    full_frame_every: int = 4  # every n-th batch is whole frames instead (0: never)
    full_frame_batch: int = 8  # clips in a whole-frame batch
    seed: int = 0
    checkpoint_every: int = 500
    # start from the weights of an earlier run's export (its dit/ folder, through the strict loader) instead of
    # a fresh initialisation; the optimiser, EMA warm-up and schedule start afresh
    init: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "max_cond_latents", "noise_latents", "checkpoint_every", "full_frame_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("caption_dropout and ema_decay must be in [0, 1)")
        if not 0 <= self.pixel_weighting <= 1:
            raise ValueError("pixel_weighting must be in [0, 1]")
        preset = get_preset(self.preset)
        rows, cols = self.crop
        # a crop must be whole DiT patches of whole codec cells (SPATIAL_FACTOR pixels per latent)
        grid_h, grid_w = (SPATIAL_FACTOR * p for p in preset.config.patch_size[1:])
        if rows < grid_h or cols < grid_w or rows % grid_h or cols % grid_w or rows > preset.height \
                or cols > preset.width:
            raise ValueError(f"crop must be multiples of {grid_h}x{grid_w} pixels inside "
                             f"{preset.height}x{preset.width}, got {self.crop}")
        if len(self.cond_weights) != self.max_cond_latents or min(self.cond_weights) < 0 \
                or sum(self.cond_weights) <= 0:
            raise ValueError(f"cond_weights needs {self.max_cond_latents} non-negative weights with a positive "
                             f"sum, got {self.cond_weights}")
        if self.full_frame_every < 0:
            raise ValueError(f"full_frame_every must be >= 0, got {self.full_frame_every}")

    def lr_at(self, step: int) -> float:
        """Learning rate of `step` (0-based): linear warm-up, then cosine decay to final_lr_ratio * lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        ratio = self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.lr * ratio


@dataclass
class Batch:
    """One training batch: clean latents [B, C, T_c + T_n, h, w], captions, and T_c."""

    latents: torch.Tensor
    captions: list[str]
    cond_latents: int


class Trainer:
    """Model, EMA, optimiser and data of one run; `step()` trains one batch."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.preset: Preset = get_preset(config.preset)
        torch.manual_seed(config.seed)
        self.model = init_training(LongCatVideoDiT.from_config(self.preset.config), seed=config.seed)
        if config.init is not None:
            start = LongCatVideoDiT.from_pretrained(Path(config.init) / "dit", dtype=torch.float32)
            if start.config != self.preset.config:
                raise ValueError(f"{config.init}/dit is not a {config.preset} checkpoint")
            self.model.load_state_dict(start.state_dict())
        self.model.requires_grad_(True)  # from_config builds an inference model
        self.ema = init_training(LongCatVideoDiT.from_config(self.preset.config), seed=config.seed)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        decay, no_decay = [], []
        for _name, param in self.model.named_parameters():
            (decay if param.ndim >= 2 else no_decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.99),
        )
        self.codec = EmbeddedCodec()
        gains = self.codec.pixel_gains()
        blend = config.pixel_weighting
        # channel weights [1, C, 1, 1, 1], mean 1: a share follows the pixel cost of a latent error
        self.channel_weights = (blend * gains / gains.mean() + (1 - blend)).view(1, -1, 1, 1, 1)
        self.text = EmbeddedTextEncoder(self.preset.config.caption_channels, max_length=self.preset.text_max_length)
        self.step_index = 0
        self.samples = 0
        self.seconds = 0.0
        self.losses: list[float] = []  # mean loss per 100 steps

    # ---------------------------------------------------------------------------------------------- data
    def batch(self, step: int) -> tuple[Batch, torch.Generator]:
        """The batch of `step` and the generator that draws its noise (both functions of seed and step)."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rng = np.random.default_rng([cfg.seed, step])
        p = np.asarray(cfg.cond_weights, dtype=np.float64)
        t_c = 1 + int(rng.choice(cfg.max_cond_latents, p=p / p.sum()))
        frames = pixel_frames(t_c + cfg.noise_latents)
        height, width = self.preset.height, self.preset.width
        full = cfg.full_frame_every > 0 and step % cfg.full_frame_every == 0
        rows, cols = (height, width) if full else cfg.crop
        clips, captions = [], []
        for j in range(cfg.full_frame_batch if full else cfg.batch):
            # crops sit on the codec's grid, so a crop's latents are the full frame's latents there
            top = SPATIAL_FACTOR * int(rng.integers(0, (height - rows) // SPATIAL_FACTOR + 1))
            left = SPATIAL_FACTOR * int(rng.integers(0, (width - cols) // SPATIAL_FACTOR + 1))
            index = cfg.seed * CLIPS_PER_SEED + step * cfg.batch + j
            clip, caption = make_clip(clip_seed("train", index), frames, height, width,
                                      window=(top, left, rows, cols))
            clips.append(frames_to_video(clip, torch.device("cpu")))
            captions.append("" if rng.random() < cfg.caption_dropout else caption)
        latents = self.codec.encode(torch.cat(clips))  # latents: [B, C, T_c + T_n, h, w]
        return Batch(latents, captions, t_c), gen

    # ---------------------------------------------------------------------------------------------- one step
    def loss(self, model: LongCatVideoDiT, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """Flow-matching continuation loss of `model` on `batch` (noise frames only)."""
        cfg = self.config
        x0 = batch.latents
        b, _, t_all, _, _ = x0.shape
        t_c = batch.cond_latents
        u = torch.rand(b, generator=gen, dtype=torch.float64).numpy()
        sigma = torch.from_numpy(shift_sigmas(u, self.preset.shift)).float()  # sigma: [B]
        noise = torch.randn(x0[:, :, t_c:].shape, generator=gen)
        target = x0[:, :, t_c:]
        s = sigma.view(b, 1, 1, 1, 1)
        noisy = (1 - s) * target + s * noise
        amp = torch.rand(b, generator=gen).view(b, 1, 1, 1, 1) * cfg.cond_noise
        cond = x0[:, :, :t_c] + amp * torch.randn(x0[:, :, :t_c].shape, generator=gen)
        latents = torch.cat([cond, noisy], dim=2)
        timestep = torch.zeros(b, t_all)
        timestep[:, t_c:] = 1000.0 * sigma.view(b, 1)
        text, mask = self.text.encode(batch.captions)
        out = model(latents, timestep, text, mask, num_cond_latents=t_c)[:, :, t_c:]
        return ((out - (target - noise)).pow(2) * self.channel_weights).mean()

    def step(self) -> float:
        """Train on the next batch; returns its loss."""
        cfg = self.config
        started = time.perf_counter()
        batch, gen = self.batch(self.step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step_index)
        self.model.train()
        loss = self.loss(self.model, batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            # warm the EMA up: early on, average over the steps seen so far
            decay = min(cfg.ema_decay, (1 + self.step_index) / (10 + self.step_index))
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - decay)
        self.step_index += 1
        self.samples += batch.latents.shape[0]
        self.seconds += time.perf_counter() - started
        return float(loss.detach())

    # ---------------------------------------------------------------------------------------------- state
    def save_state(self, path: Path) -> None:
        """Write everything a resumed run needs (atomically)."""
        tmp = path.with_suffix(".tmp")
        torch.save({
            "config": asdict(self.config), "step": self.step_index, "samples": self.samples,
            "seconds": self.seconds, "losses": self.losses, "model": self.model.state_dict(),
            "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
        }, tmp)
        tmp.replace(path)

    def load_state(self, path: Path) -> None:
        """Resume from `save_state`'s file; the run's config must match."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        # a setting added since the state was written reads as its default
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        changed = sorted(k for k, v in asdict(self.config).items() if state["config"].get(k, defaults[k]) != v)
        if changed:
            raise ValueError(f"{path} was written by a run with other settings ({', '.join(changed)}); "
                             "use another --out folder or --fresh")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index, self.samples = state["step"], state["samples"]
        self.seconds, self.losses = state["seconds"], state["losses"]

    def export(self, out: Path) -> Path:
        """Write the EMA weights as a checkpoint in the published layout (`dit/config.json` + safetensors).

        Weights are stored in float16 (half the bytes; the loader casts to the run's dtype).
        """
        dit_dir = out / "dit"
        dit_dir.mkdir(parents=True, exist_ok=True)
        (dit_dir / "config.json").write_text(json.dumps(self.preset.config.to_dict(), indent=2) + "\n")
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in self.ema.state_dict().items()}
        save_file(tensors, str(dit_dir / WEIGHTS_FILE))
        sched = out / "scheduler"
        sched.mkdir(exist_ok=True)
        (sched / "scheduler_config.json").write_text(json.dumps({"shift": self.preset.shift}) + "\n")
        record = {
            "recipe": asdict(self.config), "steps_done": self.step_index, "samples_seen": self.samples,
            "train_seconds": round(self.seconds, 1), "loss_per_100_steps": [round(x, 5) for x in self.losses],
            "parameters": sum(p.numel() for p in self.ema.parameters()),
            "resolution": [self.preset.height, self.preset.width],
            "command": f"streamd train --out {out} --steps {self.config.steps} --seed {self.config.seed} "
                       f"--lr {self.config.lr:g}" + (f" --init {self.config.init}" if self.config.init else ""),
        }
        earlier = Path(self.config.init) / "train.json" if self.config.init else None
        if earlier is not None and earlier.is_file():
            # a continued run: the record of the run it started from, and the totals of both
            before = json.loads(earlier.read_text())
            record["continued_from"] = before
            for key in ("steps_done", "samples_seen", "train_seconds"):
                record[f"total_{key}"] = round(before.get(f"total_{key}", before[key]) + record[key], 1)
        (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
        return dit_dir


def train(
    config: TrainConfig,
    out: Path,
    fresh: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> Trainer:
    """Run (or resume) training into `out`; export the EMA checkpoint at the end.

    `progress(step, steps, smoothed_loss)` is called after every step. A state file is written every
    `checkpoint_every` steps, so an interrupted run resumes where it stopped.
    """
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config)
    state = out / STATE_FILE
    if state.exists() and not fresh:
        trainer.load_state(state)
    smoothed: float | None = None
    window: list[float] = []
    while trainer.step_index < config.steps:
        loss = trainer.step()
        smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
        window.append(loss)
        if len(window) == 100:
            trainer.losses.append(sum(window) / len(window))
            window.clear()
        if trainer.step_index % config.checkpoint_every == 0:
            trainer.save_state(state)
        if progress is not None:
            progress(trainer.step_index, config.steps, smoothed)
    trainer.save_state(state)
    trainer.export(out)
    return trainer
