"""Device memory for streams: what a stream's preallocated buffers take, and admission against a fixed budget.

GPU memory is fixed when a stream starts: its KV cache (sized from the window and the resolution), its latent and
frame windows. Streams run one chunk at a time, so the activation working set of one chunk is reserved once for
the whole engine. A stream whose buffers would not fit in what is left is refused before anything is allocated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ..model.config import DiTConfig
from ..model.kvcache import KVCache


class AdmissionError(RuntimeError):
    """A stream that cannot be admitted (memory, stream limit, duplicate id)."""


@dataclass(frozen=True)
class StreamFootprint:
    """Bytes a stream holds for its whole life."""

    kv_cache: int
    latents: int
    frames: int

    @property
    def total(self) -> int:
        """All of the stream's bytes."""
        return self.kv_cache + self.latents + self.frames


def stream_footprint(
    config: DiTConfig,
    height: int,
    width: int,
    cond_latents: int,
    chunk_latents: int,
    cond_frames: int,
    dtype: torch.dtype,
    spatial_factor: int = 8,
) -> StreamFootprint:
    """The buffers of one stream at a resolution: KV cache, latents of [cond ; chunk], live + own frame rings."""
    h, w = height // spatial_factor, width // spatial_factor
    tokens = cond_latents * (h // config.patch_size[1]) * (w // config.patch_size[2])
    kv = KVCache.bytes_needed(config, tokens, batch=1, dtype=dtype)
    latents = config.in_channels * (cond_latents + chunk_latents) * h * w * 4  # fp32
    frames = 2 * cond_frames * height * width * 3  # live ring + own-output ring, uint8
    return StreamFootprint(kv, latents, frames)


def activation_reserve(config: DiTConfig, tokens: int, text_tokens: int, batch: int, dtype: torch.dtype) -> int:
    """A generous estimate of one forward's transient memory (shared by all streams: one chunk runs at a time).

    Per block the largest live tensors are the fused qkv output, the SwiGLU hidden pair and the concatenated K/V
    of [cache ; noise]; they are freed block by block, so a few blocks' worth is the peak.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = 3 * config.hidden_size + 2 * config.ffn_hidden + 4 * config.hidden_size
    return 4 * batch * (tokens + text_tokens) * per_token * itemsize


class MemoryBudget:
    """A fixed pool of bytes from which streams are admitted. Thread-safe.

    Bound: `total` bytes, set at construction; `admit` refuses what would exceed it.
    """

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a memory budget must be positive")
        self.total = total
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes held by admitted streams."""
        with self._lock:
            return sum(self._held.values())

    def admit(self, stream_id: str, nbytes: int) -> None:
        """Reserve `nbytes` for a stream or raise AdmissionError saying how much is missing."""
        with self._lock:
            if stream_id in self._held:
                raise AdmissionError(f"stream {stream_id!r} already holds memory")
            used = sum(self._held.values())
            if used + nbytes > self.total:
                raise AdmissionError(
                    f"stream {stream_id!r} needs {nbytes / 2**20:.1f} MiB but only "
                    f"{(self.total - used) / 2**20:.1f} MiB of the {self.total / 2**20:.1f} MiB stream budget is free"
                )
            self._held[stream_id] = nbytes

    def release(self, stream_id: str) -> None:
        """Return a stream's bytes (no-op for an unknown stream)."""
        with self._lock:
            self._held.pop(stream_id, None)


def default_budget(device: torch.device, reserve: int) -> int:
    """Stream memory available by default: 90% of free device memory (CUDA) or half of available RAM (CPU),
    less the activation reserve."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        avail = int(free * 0.9)
    else:
        avail = _available_ram() // 2
    return max(avail - reserve, 1)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30
