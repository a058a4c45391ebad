"""Prompts encoded on a thread of their own, so that no denoising step waits for the text encoder.

The scheduler asks, before it starts a stream's chunk, whether the chunk's prompts are encoded (`ready`). When one
is not, the stream waits and the others keep stepping; the prompt is queued here and encoded on this module's
thread, which then wakes the engine (`on_ready`). A text encoder that lives on the CPU (UMT5-XXL takes seconds a
prompt there) thus delays only the stream whose prompt changed, and only until its embeddings exist; they then
move to the DiT's device when the chunk begins, and stay in the prompt cache for later chunks.

Bounds: at most `MAX_QUEUED` prompts wait to be encoded (a newer request pushes out the oldest, whose stream asks
again at its next chunk boundary); one prompt is encoded at a time; the cache keeps its own bound.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable

import torch

from ..lograte import Occurrences
from ..model.text import PromptCache

log = logging.getLogger(__name__)

MAX_QUEUED = 16  # prompts waiting to be encoded


class PromptEncoder:
    """Encodes prompts into a `PromptCache` on a daemon thread. `ready` and `wait` may be called from any thread."""

    def __init__(self, cache: PromptCache, on_ready: Callable[[], None] | None = None,
                 max_queued: int = MAX_QUEUED) -> None:
        self.cache = cache
        self.on_ready = on_ready  # called (without any lock of this object held) after each prompt is encoded
        self.max_queued = max_queued
        self._queue: deque[str] = deque()
        self._current: str | None = None
        self._failed: set[str] = set()  # prompts whose encoding raised: the engine thread encodes them itself
        self._errors = Occurrences()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def ready(self, prompts: Iterable[str]) -> bool:
        """Whether every prompt is encoded (or failed to encode here); queues those that are not."""
        missing = [p for p in prompts if p not in self.cache]
        with self._cond:
            missing = [p for p in missing if p not in self._failed]
            for prompt in missing:
                if prompt != self._current and prompt not in self._queue:
                    if len(self._queue) >= self.max_queued:
                        self._queue.popleft()
                    self._queue.append(prompt)
            if missing:
                self._cond.notify_all()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="streamd-prompts", daemon=True)
                    self._thread.start()
        return not missing

    @property
    def busy(self) -> bool:
        """Whether a prompt is being encoded or waits to be."""
        with self._cond:
            return self._current is not None or bool(self._queue)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no prompt is queued or in progress; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._current is None and not self._queue, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                prompt = self._current = self._queue.popleft()
            try:
                # as the engine thread encodes (begin_denoise runs under inference mode): the same kind of tensor,
                # so a compiled block's guards see no difference between a prompt encoded here and there
                with torch.inference_mode():
                    self.cache.get(prompt)
            except Exception as exc:  # the chunk that needs it encodes it on the engine thread and fails there
                with self._cond:
                    self._failed.add(prompt)
                    if len(self._failed) > self.max_queued:
                        self._failed.pop()
                n = self._errors.due(type(exc).__name__)
                if n is not None:
                    log.warning("encoding a prompt failed (%d times so far): %s", n, exc)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()
            if self.on_ready is not None:
                self.on_ready()
