"""LongCat-Video's transformer and the parts around it: config, KV cache, text encoders, codecs, loading, presets.

`load_model(spec)` gives a `ModelBundle` (DiT + text encoder + codec + defaults) for an embedded preset name or a
checkpoint folder; the rest is what the pipeline, the engine and the tests build on.
"""

from __future__ import annotations

# ruff: noqa: E402  (the library logs are quieted before the imports below load diffusers)
from .libraries import quiet_library_logs

quiet_library_logs()  # before anything below imports diffusers (and with it torchao)

from .bundle import ModelBundle, SamplingDefaults, load_model
from .config import LONGCAT_13B, DiTConfig
from .dit import LongCatVideoDiT
from .kvcache import KVCache
from .loading import CheckpointError
from .presets import PRESETS, Preset, build_dit, get_preset
from .text import EmbeddedTextEncoder, PromptCache, TextEncoder, UMT5TextEncoder
from .vae import EmbeddedCodec, VideoCodec, WanVAECodec, latent_frames, pixel_frames

__all__ = [
    "LONGCAT_13B", "PRESETS", "CheckpointError", "DiTConfig", "EmbeddedCodec", "EmbeddedTextEncoder", "KVCache",
    "LongCatVideoDiT", "ModelBundle", "Preset", "PromptCache", "SamplingDefaults", "TextEncoder",
    "UMT5TextEncoder", "VideoCodec", "WanVAECodec", "build_dit", "get_preset", "latent_frames", "load_model",
    "pixel_frames",
]
