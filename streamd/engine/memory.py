"""Memory admission as numbers (torch-free): what a stream holds, and a fixed budget streams are admitted from.

GPU memory is fixed when a stream starts: its KV cache (sized from the window and the resolution), its latent and
frame windows. The executor computes a stream's bytes with the memory plan's arithmetic (plan.stream_bytes);
the scheduler admits or refuses streams against the `MemoryBudget` with plain integers, so admission never waits
for the engine thread. Streams run one denoising step at a time, so one step's activations are reserved once for
the whole engine (outside the budget).

An out-of-memory error in one stream's step is that stream's problem: `is_out_of_memory` recognises one.
"""

from __future__ import annotations

import threading


class AdmissionError(RuntimeError):
    """A stream that cannot be admitted (memory, stream limit, duplicate id)."""


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


def available_ram() -> int:
    """Bytes of host memory available now (MemAvailable), or 4 GiB when /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says memory ran out: MemoryError (host), torch.OutOfMemoryError (a RuntimeError subclass), or
    a RuntimeError whose message says "out of memory" (CUDA and CPU allocators before torch had the class)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and (type(exc).__name__ == "OutOfMemoryError"
                                              or "out of memory" in str(exc).lower())
