"""Which parts make a runnable model: the DiT, a text encoder, a codec and their defaults.

A model is named either by an embedded preset (`tiny`, `small`: no file needed) or by a LongCat-Video checkpoint
folder laid out as published (`dit/`, `text_encoder/`, `tokenizer/`, `vae/`, `scheduler/`, optional `lora/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .dit import LongCatVideoDiT
from .loading import CheckpointError
from .presets import PRESETS, build_dit, get_preset
from .text import EmbeddedTextEncoder, PromptCache, UMT5TextEncoder
from .vae import EmbeddedCodec, VideoCodec, WanVAECodec

DISTILL_LORA = Path("lora") / "cfg_step_lora.safetensors"
# Prompt embeddings kept per model; a live daemon sees a handful of prompts at a time.
PROMPT_CACHE_ENTRIES = 64


@dataclass(frozen=True)
class SamplingDefaults:
    """What a chunk uses when the caller does not say: schedule name, step count and guidance scale."""

    schedule: str
    steps: int
    guidance: float


@dataclass
class ModelBundle:
    """A loaded model: DiT, cached text encoder, codec, native resolution and sampling defaults."""

    name: str
    description: str
    dit: LongCatVideoDiT
    text: PromptCache
    codec: VideoCodec
    height: int
    width: int
    defaults: SamplingDefaults
    root: Path | None  # checkpoint folder, None for an embedded preset

    @property
    def embedded(self) -> bool:
        """True for an embedded (untrained, random-weight) preset."""
        return self.root is None


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the published precision), fp32 on CPU (bf16 matmuls are slow and inexact there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    spec: str | Path,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = None,
    distilled: bool | None = None,
) -> ModelBundle:
    """Load an embedded preset by name or a checkpoint folder.

    For a checkpoint, `distilled=None` merges the 16-step distilled LoRA when the folder has it (and then
    defaults to its schedule: 16 steps, guidance 1); True requires it; False never merges it.
    `device=None` picks CUDA when available.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_dtype(device)
    if isinstance(spec, str) and spec in PRESETS:
        preset = get_preset(spec)
        return ModelBundle(
            name=preset.name,
            description=preset.description,
            dit=build_dit(preset, device=device, dtype=dtype),
            text=PromptCache(
                EmbeddedTextEncoder(preset.config.caption_channels, max_length=preset.text_max_length),
                capacity=PROMPT_CACHE_ENTRIES,
            ),
            codec=EmbeddedCodec(device=device, dtype=torch.float32),
            height=preset.height,
            width=preset.width,
            defaults=SamplingDefaults(preset.schedule, preset.steps, preset.guidance),
            root=None,
        )
    root = Path(spec)
    if not root.is_dir():
        raise CheckpointError(f"{spec!r} is neither an embedded model ({', '.join(PRESETS)}) nor a checkpoint folder")
    for part in ("dit", "text_encoder", "tokenizer", "vae"):
        if not (root / part).is_dir():
            raise CheckpointError(f"checkpoint {root} lacks its {part}/ folder")
    lora = root / DISTILL_LORA
    if distilled and not lora.is_file():
        raise CheckpointError(f"distilled sampling asked for, but {lora} is missing")
    use_lora = lora.is_file() if distilled is None else distilled
    dit = LongCatVideoDiT.from_pretrained(root / "dit", device=device, dtype=dtype,
                                          loras=[(lora, 1.0)] if use_lora else [])
    text = UMT5TextEncoder.from_pretrained(root, device=device, dtype=dtype)
    defaults = SamplingDefaults("distilled", 16, 1.0) if use_lora else SamplingDefaults("enhance_hf", 50, 4.0)
    return ModelBundle(
        name=root.name,
        description=f"LongCat-Video checkpoint {root}" + (" + distilled LoRA" if use_lora else ""),
        dit=dit,
        text=PromptCache(text, capacity=PROMPT_CACHE_ENTRIES),
        codec=WanVAECodec.from_pretrained(root / "vae", device=device, dtype=dtype),
        height=480,
        width=832,
        defaults=defaults,
        root=root,
    )
