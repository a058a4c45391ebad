"""The LongCat-Video transformer's configuration: the published `dit/config.json` keys, typed and validated once."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

# Keys of the published config.json that configure kernels or parallelism rather than the architecture. streamd
# chooses its attention kernel at run time and runs on one device, so these are accepted and ignored.
_RUNTIME_KEYS = frozenset(
    {"enable_flashattn2", "enable_flashattn3", "enable_xformers", "enable_bsa", "bsa_params", "cp_split_hw"}
)


@dataclass(frozen=True)
class DiTConfig:
    """Architecture hyper-parameters of the LongCat-Video DiT (defaults: the published 13.6B model)."""

    in_channels: int = 16
    out_channels: int = 16
    hidden_size: int = 4096
    depth: int = 48
    num_heads: int = 32
    caption_channels: int = 4096
    mlp_ratio: float = 4.0
    adaln_tembed_dim: int = 512
    frequency_embedding_size: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_tokens_zero_pad: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "hidden_size", "depth", "num_heads", "caption_channels",
                     "adaln_tembed_dim", "frequency_embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 8:
            # 3D RoPE rotates pairs in three sections; an odd or tiny head cannot be split that way.
            raise ConfigError(f"head_dim {self.head_dim} must be even and at least 8 for 3D RoPE")
        if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
            raise ConfigError(f"patch_size must be three positive integers, got {self.patch_size!r}")
        if self.patch_size[0] != 1:
            raise ConfigError("patch_size[0] must be 1: LongCat-Video never patches time")
        if self.frequency_embedding_size % 2:
            raise ConfigError("frequency_embedding_size must be even")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden width: 2/3 of mlp_ratio * hidden, rounded up to a multiple of 256 (11008 for 4096)."""
        width = int(2 * int(self.hidden_size * self.mlp_ratio) / 3)
        return 256 * ((width + 255) // 256)

    @property
    def patch_channels(self) -> int:
        """Output channels of the final linear layer: one patch of every output channel."""
        pt, ph, pw = self.patch_size
        return pt * ph * pw * self.out_channels

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DiTConfig:
        """Build from a published config.json mapping; unknown keys are tolerated (logged at debug level)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in raw if k not in known and k not in _RUNTIME_KEYS and not k.startswith("_"))
        if unknown:
            log.debug("ignoring unknown DiT config keys: %s", ", ".join(unknown))
        kwargs: dict[str, Any] = {k: raw[k] for k in known if k in raw}
        if "patch_size" in kwargs:
            patch = kwargs["patch_size"]
            if isinstance(patch, int):
                patch = (1, patch, patch)
            kwargs["patch_size"] = tuple(patch)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        """Read a `config.json` file, with a clear error for a missing or malformed file."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no DiT config at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The config as the published config.json keys."""
        out = asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out


LONGCAT_13B = DiTConfig()
