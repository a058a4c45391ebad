"""A model's shape for the memory plan, read from its configs alone: no weight file is opened.

`model_shape(spec)` accepts what `load_model` accepts (an embedded preset, `longcat-13.6b-random`, a checkpoint
folder, a `streamd train` folder) and `longcat-video`, the published checkpoint's configs shipped in
`streamd/model/published/longcat-video/` so that `streamd plan` answers before anyone downloads 40 GB.

The DiT's parameters are counted from `dit/config.json` (engine.plan.DiTParams, checked against a meta-device
build in the tests), the text encoder's from `text_encoder/config.json` (UMT5 arithmetic, checked against
transformers' meta-device build), the VAE's by building diffusers' AutoencoderKLWan on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.plan import MemoryPlan, ModelShape, PlanError, PlanSettings, cheapest_fix, make_plan, parse_bytes, refusal
from .config import DiTConfig
from .loading import CheckpointError
from .presets import LONGCAT_PRESET, PRESETS, Preset

if TYPE_CHECKING:
    from .bundle import ModelBundle

PUBLISHED = Path(__file__).resolve().parent / "published" / "longcat-video"
PUBLISHED_NAME = "longcat-video"
EMBEDDED_VOCAB = 4096  # EmbeddedTextEncoder's default vocabulary (its table has one more row, <empty>)
UMT5_MAX_LENGTH = 512  # prompts padded to this many tokens for a checkpoint (UMT5TextEncoder's default)


def umt5_params(cfg: Mapping[str, Any]) -> int:
    """Parameters of a UMT5 encoder from its config.json: shared embedding; per layer q/k/v/o, its own relative
    attention bias, two RMSNorm weights, the (gated) feed-forward; the final norm."""
    d, inner = int(cfg["d_model"]), int(cfg["num_heads"]) * int(cfg["d_kv"])
    ff = int(cfg["d_ff"])
    gated = str(cfg.get("feed_forward_proj", "relu")).startswith("gated") or bool(cfg.get("is_gated_act", False))
    per_layer = (4 * d * inner + int(cfg.get("relative_attention_num_buckets", 32)) * int(cfg["num_heads"])
                 + 2 * d + (3 if gated else 2) * d * ff)
    return int(cfg["vocab_size"]) * d + int(cfg["num_layers"]) * per_layer + d


def wan_vae_params(cfg: Mapping[str, Any]) -> int:
    """Parameters of diffusers' AutoencoderKLWan built from `cfg` on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(dict(cfg))
    return sum(p.numel() for p in vae.parameters())


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return raw


def preset_shape(preset: Preset, name: str | None = None) -> ModelShape:
    """An embedded preset: the stand-in text encoder (a fp32 table on the host) and the embedded codec."""
    return ModelShape(name=name or preset.name, dit=preset.config,
                      text_params=(EMBEDDED_VOCAB + 1) * preset.config.caption_channels, text_embedded=True,
                      text_tokens=preset.text_max_length, vae_params=0, vae_base_dim=None,
                      height=preset.height, width=preset.width)


def checkpoint_shape(root: Path, name: str | None = None) -> ModelShape:
    """A LongCat-Video checkpoint folder (only its dit/, text_encoder/ and vae/ config.json files are read)."""
    dit = DiTConfig.from_json(root / "dit" / "config.json")
    vae = _read(root / "vae" / "config.json")
    return ModelShape(name=name or root.name, dit=dit, text_params=umt5_params(_read(root / "text_encoder" /
                                                                                     "config.json")),
                      text_embedded=False, text_tokens=UMT5_MAX_LENGTH, vae_params=wan_vae_params(vae),
                      vae_base_dim=int(vae.get("base_dim", 96)), height=480, width=832,
                      spatial_factor=int(vae.get("scale_factor_spatial") or 8),
                      temporal_factor=int(vae.get("scale_factor_temporal") or 4))


def model_shape(spec: str | Path) -> ModelShape:
    """The shape of what `load_model(spec)` would load (or of the published checkpoint, `longcat-video`)."""
    if isinstance(spec, str) and spec in PRESETS:
        return preset_shape(PRESETS[spec])
    if isinstance(spec, str) and spec == LONGCAT_PRESET.name:
        return preset_shape(LONGCAT_PRESET)
    if isinstance(spec, str) and spec == PUBLISHED_NAME:
        return checkpoint_shape(PUBLISHED, name="LongCat-Video 13.6B (published configs)")
    root = Path(spec)
    if not root.is_dir():
        known = ", ".join([*PRESETS, LONGCAT_PRESET.name, PUBLISHED_NAME])
        raise CheckpointError(f"{spec!r} is neither an embedded model ({known}) nor a checkpoint folder")
    if (root / "dit").is_dir() and not (root / "text_encoder").is_dir():  # a `streamd train` folder
        config = DiTConfig.from_json(root / "dit" / "config.json")
        for preset in PRESETS.values():
            if preset.config == config:
                return preset_shape(preset, name=str(root))
        raise CheckpointError(f"{root / 'dit'} has no text_encoder/ beside it and its config matches no embedded "
                              f"preset ({', '.join(PRESETS)})")
    for part in ("dit", "text_encoder", "vae"):
        if not (root / part / "config.json").is_file():
            raise CheckpointError(f"checkpoint {root} lacks {part}/config.json")
    return checkpoint_shape(root)


def bundle_shape(bundle: ModelBundle) -> ModelShape:
    """The shape of a loaded model, as `model_shape` gives it before loading (the executor's plan numbers)."""
    if bundle.root is not None:
        return checkpoint_shape(bundle.root, name=bundle.name)
    if bundle.preset is None:  # pragma: no cover - every bundle is a checkpoint or a preset
        raise ValueError(f"model {bundle.name} is neither a checkpoint nor an embedded preset")
    preset = LONGCAT_PRESET if bundle.preset == LONGCAT_PRESET.name else PRESETS[bundle.preset]
    return preset_shape(preset, name=bundle.name)


def device_capacity(device: str) -> int:
    """Bytes a plan may use on `device` when none is given: the GPU's free memory now (before loading), or the
    host's available RAM (MemAvailable) on the CPU."""
    from ..engine.memory import available_ram

    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return available_ram()


def run_plan(spec: str | Path, device: str | None, *, ranks: int = 1, max_streams: int = 1, weights: str = "bf16",
             text_encoder: str = "auto", shard_weights: str = "auto", gpu_memory: str | int | None = None,
             cond_latents: int = 4, chunk_latents: int = 4) -> MemoryPlan:
    """The plan of a run (`serve`, `continue`), checked before any weight loads.

    `device` None: cuda when available. The capacity is `gpu_memory`, else `device_capacity` (on the CPU shared by
    the ranks). Raises PlanError (with the cheapest fix) when the plan does not fit. `plan.sharded` says whether
    the run shards the DiT's weights (`shard_weights` auto resolves to what the plan needs).
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    capacity = parse_bytes(gpu_memory) if gpu_memory is not None else device_capacity(device) // (
        ranks if kind == "cpu" else 1)
    settings = PlanSettings(capacity=capacity, device=kind, ranks=ranks, weights=weights,
                            shard_weights=shard_weights, text_encoder=text_encoder, max_streams=max_streams,
                            cond_latents=cond_latents, chunk_latents=chunk_latents)
    if weights == "fp8":  # the plan holds for any GPU; whether this one has fp8 hardware is its own question
        from .quant import check_weights

        try:
            check_weights(weights, device)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    shape = model_shape(spec)
    plan = make_plan(shape, settings)
    if not plan.fits:
        raise PlanError(refusal(plan, cheapest_fix(shape, settings)))
    return plan


__all__ = ["PUBLISHED", "PUBLISHED_NAME", "bundle_shape", "checkpoint_shape",
           "device_capacity", "run_plan", "model_shape", "preset_shape",
           "umt5_params", "wan_vae_params"]
