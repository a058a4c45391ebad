"""A prompt change is encoded off the engine thread: no denoising step waits for the text encoder, the stream whose
prompt changed starts its next chunk once the embeddings exist, and the other streams keep stepping meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import torch

from streamd.engine.core import EngineCore
from streamd.engine.params import EngineConfig, StreamParams
from streamd.engine.prompts import PromptEncoder
from streamd.media import synthetic_clip
from streamd.model.text import PromptCache
from streamd.pipeline import ContinuationPipeline

H, W = 32, 48
SLOW_S = 3.0  # what the stand-in for a CPU-hosted UMT5-XXL takes per prompt here (a step takes ~0.02-0.5 s)


class SlowEncoder:
    """The embedded encoder, slowed down for prompts that start with "slow" (a big encoder on a CPU)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.max_length = inner.max_length
        self.threads: list[str] = []

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.threads.append(threading.current_thread().name)
        if any(p.startswith("slow") for p in prompts):
            time.sleep(SLOW_S)
        return self.inner.encode(prompts)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


@pytest.fixture
def core() -> EngineCore:
    pipe = ContinuationPipeline.from_spec("tiny-random")
    pipe.text.encoder = SlowEncoder(pipe.text.encoder)
    core = EngineCore(pipe, EngineConfig(memory_budget_bytes=2**30, realtime=False))
    for n, sid in enumerate("ab"):
        core.add_stream(sid, StreamParams(steps=1, guidance=1.0, seed=1), H, W)
        for frame in synthetic_clip(13, H, W, seed=n).frames:
            core.push_frame(sid, frame)
    return core


def test_a_slow_prompt_delays_only_its_own_stream(core: EngineCore) -> None:
    encoder = core.pipeline.text.encoder
    assert core.run_chunk() is not None and core.run_chunk() is not None  # both streams ran once
    core.update_params("a", prompt="slow sunset over the sea")
    changed = time.monotonic()
    steps, chunks = [], {"a": [], "b": []}
    while not chunks["a"]:
        started = time.monotonic()
        outcome = core.step(wait_for_prompts=False)  # as the runner steps: never waits for an encoder
        steps.append(time.monotonic() - started)
        if outcome is not None and outcome.chunk is not None:
            chunks[outcome.plan.stream_id].append((time.monotonic() - changed, outcome.chunk.params.prompt))
        if outcome is None:
            time.sleep(0.01)
        assert time.monotonic() - changed < 30, "stream a never got its new prompt"
    first_a, prompt = chunks["a"][0]
    print(f"stream a's first chunk with the new prompt after {first_a:.2f} s; stream b made {len(chunks['b'])} "
          f"chunks meanwhile; the longest step took {max(steps) * 1000:.0f} ms")
    assert prompt == "slow sunset over the sea" and first_a >= SLOW_S * 0.9
    assert len(chunks["b"]) >= 3  # b kept going while a's prompt was encoded
    assert max(steps) < SLOW_S / 2  # no step waited for the encoder
    assert encoder.threads[-1] == "streamd-prompts"  # the new prompt was encoded on the prompt thread


def test_stepping_alone_waits_for_the_prompt(core: EngineCore) -> None:
    """File continuation and benchmarks step by themselves: a chunk then waits for its prompt."""
    core.remove_stream("b")
    core.update_params("a", prompt="slow dawn")
    out = core.run_chunk()
    assert out is not None and out.params.prompt == "slow dawn"


def test_the_queue_is_bounded_and_a_pushed_out_prompt_is_asked_again() -> None:
    started = threading.Event()
    release = threading.Event()

    class Blocking:
        max_length = 4

        def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            started.set()
            release.wait(10)
            return torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.int64)

    woken: list[int] = []
    enc = PromptEncoder(PromptCache(Blocking()), on_ready=lambda: woken.append(1), max_queued=2)  # type: ignore[arg-type]
    assert not enc.ready(["p0"]) and started.wait(5)  # p0 is being encoded
    for p in ("p1", "p2", "p3"):
        assert not enc.ready([p])
    assert list(enc._queue) == ["p2", "p3"]  # bounded: p1 was pushed out
    release.set()
    assert enc.wait(10) and not enc.busy
    assert enc.ready(["p0", "p2", "p3"]) and not enc.ready(["p1"])  # p1 is asked again
    assert enc.wait(10) and enc.ready(["p1"]) and len(woken) == 4
