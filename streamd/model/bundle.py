"""Which parts make a runnable model: the DiT, a text encoder, a codec and their defaults.

A model is named either by an embedded preset or by a LongCat-Video checkpoint folder laid out as published
(`dit/`, `text_encoder/`, `tokenizer/`, `vae/`, `scheduler/`, optional `lora/`).

Embedded presets need no download. A preset with `weights` (the default `tiny`) is trained: its DiT loads through
the same strict loader as a published checkpoint, from `streamd/model/weights/<weights>/dit`, and its sampler
shift from that folder's `scheduler/scheduler_config.json`. A preset without weights (`tiny-random`, `small`) is
the architecture with deterministic random weights, for equivalence tests and benchmarks.

`weights` (bf16 | int8 | fp8) quantizes the DiT's block Linears through torchao once loaded (model/quant.py);
bf16 leaves the model dtype (bf16 on a GPU, fp32 on a CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.plan import PROMPT_CACHE_ENTRIES as PLAN_PROMPT_CACHE_ENTRIES
from ..sampling import read_shift
from .config import DiTConfig
from .dit import LongCatVideoDiT
from .loading import CheckpointError
from .presets import PRESETS, Preset, build_dit, get_preset
from .quant import check_weights, quantize_dit
from .text import EmbeddedTextEncoder, PromptCache, UMT5TextEncoder
from .vae import EmbeddedCodec, VideoCodec, WanVAECodec

# Trained weights of the embedded presets ship inside the package, one checkpoint folder per preset.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
DISTILL_LORA = Path("lora") / "cfg_step_lora.safetensors"
# Prompt embeddings kept per model; a live daemon sees a handful of prompts at a time.
PROMPT_CACHE_ENTRIES = PLAN_PROMPT_CACHE_ENTRIES


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
    shift: float  # flow-matching time shift of the sampler (from the scheduler config, or the preset's)
    trained: bool  # learned weights (a checkpoint, or a preset shipped with weights); False: random weights
    preset: str | None = None  # the embedded preset's name; None for a checkpoint folder
    weights_dir: Path | None = None  # where the DiT weights came from; None for random weights
    weights: str = "bf16"  # the DiT block weights' format (model/quant.py): bf16 (the model dtype), int8 or fp8


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the published precision), fp32 on CPU (bf16 matmuls are slow and inexact there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    spec: str | Path,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = None,
    distilled: bool | None = None,
    text_device: torch.device | str | None = None,
    weights: str = "bf16",
) -> ModelBundle:
    """Load an embedded preset by name or a checkpoint folder.

    `text_device`: where a checkpoint's UMT5 encoder lives (None: with the DiT). On the CPU it encodes there, in
    the model's dtype, and `begin_denoise` moves the embeddings to the DiT's device; an embedded preset's
    stand-in encoder always lives on the CPU.

    For a checkpoint, `distilled=None` merges the 16-step distilled LoRA when the folder has it (and then
    defaults to its schedule: 16 steps, guidance 1); True requires it; False never merges it.
    `device=None` picks CUDA when available. `weights`: bf16 | int8 | fp8, the DiT block Linears quantized
    after loading and merging (fp8 needs CUDA compute capability 8.9+: a ValueError before anything loads).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_dtype(device)
    check_weights(weights, device)  # refuse before loading gigabytes
    if weights != "bf16" and not _is_checkpoint(spec):  # embedded: small, quantized where it loaded
        bundle = load_model(spec, device, dtype, distilled, text_device)
        quantize_dit(bundle.dit, weights)
        bundle.weights = weights
        return bundle
    if isinstance(spec, str) and spec in PRESETS:
        return _load_preset(get_preset(spec), device, dtype)
    root = Path(spec)
    if not root.is_dir():
        raise CheckpointError(f"{spec!r} is neither an embedded model ({', '.join(PRESETS)}) nor a checkpoint folder")
    if (root / "dit").is_dir() and not (root / "text_encoder").is_dir():
        # a folder written by `streamd train`: an embedded architecture, with the embedded text encoder and codec
        return _load_preset(_preset_of(root / "dit"), device, dtype, folder=root)
    for part in ("dit", "text_encoder", "tokenizer", "vae"):
        if not (root / part).is_dir():
            raise CheckpointError(f"checkpoint {root} lacks its {part}/ folder")
    lora = root / DISTILL_LORA
    if distilled and not lora.is_file():
        raise CheckpointError(f"distilled sampling asked for, but {lora} is missing")
    use_lora = lora.is_file() if distilled is None else distilled
    dit = _load_dit(root, device, dtype, use_lora, weights)
    text = UMT5TextEncoder.from_pretrained(root, device=text_device or device, dtype=dtype)
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
        shift=read_shift(root / SCHEDULER_CONFIG),
        trained=True,
        weights_dir=root / "dit",
        weights=weights,
    )


def _is_checkpoint(spec: str | Path) -> bool:
    """A published checkpoint folder (with its UMT5 text encoder), as against an embedded model."""
    return not (isinstance(spec, str) and spec in PRESETS) and (Path(spec) / "text_encoder").is_dir()


def _load_dit(root: Path, device: torch.device, dtype: torch.dtype, use_lora: bool, weights: str) -> LongCatVideoDiT:
    """A checkpoint's DiT on `device` with its block weights in `weights`.

    Quantized weights on a GPU are staged: the bf16 DiT loads into host memory and each block is quantized on
    its way to the GPU, so the GPU never holds more than one bf16 block beside the quantized ones (a 24 GB card
    could not hold the 27 GB bf16 model even for a moment).
    """
    stage = weights != "bf16" and device.type == "cuda"
    dit = LongCatVideoDiT.from_pretrained(root / "dit", device="cpu" if stage else device, dtype=dtype,
                                          loras=[(root / DISTILL_LORA, 1.0)] if use_lora else [])
    quantize_dit(dit, weights, device=device if stage else None)
    return dit


def load_dit_only(
    spec: str | Path,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = None,
    distilled: bool | None = None,
    weights: str = "bf16",
) -> LongCatVideoDiT:
    """The DiT of `load_model(spec, ...)` alone, for a context-parallel worker rank (no text encoder, no codec).

    A checkpoint folder merges the distilled LoRA by the same rule as `load_model`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_dtype(device)
    check_weights(weights, device)
    root = Path(spec)
    if (isinstance(spec, str) and spec in PRESETS) or not (root / "text_encoder").is_dir():
        # embedded: small parts
        return load_model(spec, device=device, dtype=dtype, distilled=distilled, weights=weights).dit
    lora = root / DISTILL_LORA
    if distilled and not lora.is_file():
        raise CheckpointError(f"distilled sampling asked for, but {lora} is missing")
    return _load_dit(root, device, dtype, lora.is_file() if distilled is None else distilled, weights)


def preset_weights(preset: Preset) -> Path | None:
    """The checkpoint folder shipped for `preset` (holding `dit/` and `scheduler/`), None if it has none."""
    return WEIGHTS_DIR / preset.weights if preset.weights else None


def _preset_of(dit_dir: Path) -> Preset:
    """The embedded preset whose DiT config `dit_dir/config.json` has (trained presets first)."""
    config = DiTConfig.from_dict(json.loads((dit_dir / "config.json").read_text()))
    for preset in sorted(PRESETS.values(), key=lambda p: p.weights is None):
        if preset.config == config:
            return preset
    raise CheckpointError(f"{dit_dir} has no text_encoder/ beside it and its config matches no embedded preset "
                          f"({', '.join(PRESETS)})")


def _load_preset(
    preset: Preset, device: torch.device, dtype: torch.dtype, folder: Path | None = None
) -> ModelBundle:
    """An embedded preset: trained weights through the strict loader, or deterministic random ones.

    The weights come from `folder` (a `streamd train` output) when given, else from the preset's shipped folder.
    """
    folder = folder or preset_weights(preset)
    if folder is None:
        dit, shift = build_dit(preset, device=device, dtype=dtype), preset.shift
    else:
        if not (folder / "dit").is_dir():
            raise CheckpointError(f"the weights of preset {preset.name!r} are missing: no {folder / 'dit'} "
                                  "(a broken install; reinstall streamd or run `streamd train`)")
        dit = LongCatVideoDiT.from_pretrained(folder / "dit", device=device, dtype=dtype)
        if dit.config != preset.config:
            # the strict loader checked the weights against dit/config.json; the preset's own resolution,
            # text length and defaults assume its config, so a different one is a packaging error
            raise CheckpointError(f"{folder / 'dit' / 'config.json'} does not match preset {preset.name!r}")
        if not (folder / SCHEDULER_CONFIG).is_file():
            # read_shift would fall back to 12, a schedule these weights were not trained for
            raise CheckpointError(f"the weights of preset {preset.name!r} lack {folder / SCHEDULER_CONFIG}")
        shift = read_shift(folder / SCHEDULER_CONFIG)
    trained_elsewhere = folder is not None and folder != preset_weights(preset)
    return ModelBundle(
        name=str(folder) if trained_elsewhere else preset.name,
        description=(f"the {preset.name} architecture trained by `streamd train` into {folder}" if trained_elsewhere
                     else preset.description),
        dit=dit,
        text=PromptCache(
            EmbeddedTextEncoder(preset.config.caption_channels, max_length=preset.text_max_length),
            capacity=PROMPT_CACHE_ENTRIES,
        ),
        codec=EmbeddedCodec(device=device, dtype=torch.float32),
        height=preset.height,
        width=preset.width,
        defaults=SamplingDefaults(preset.schedule, preset.steps, preset.guidance),
        root=None,
        shift=shift,
        trained=folder is not None,
        preset=preset.name,
        weights_dir=folder / "dit" if folder is not None else None,
    )
