"""Run two interleaved streams for several chunks through the engine on N ranks; save what every chunk made.

`python -m tests.distributed.cp_chunks N cached|uncached OUT.pt [sharded] [bf16|int8]` (run from the repository
root; `sharded`: the DiT blocks sharded over the ranks with FSDP2; int8: torchao int8 weights on every rank). Stream `a`
continues with pixel chaining, stream `b` with latent chaining and noise on its conditioning latents, each with
a fixed seed, so every configuration must produce the same chunks. Ranks 1..N-1 are worker processes started
here (gloo); this process is rank 0 and keeps torch's default thread count when N = 1, so the comparison also
covers one process on all cores against ranks that share the cores.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from streamd.engine.core import EngineCore
from streamd.engine.params import EngineConfig, StreamParams
from streamd.engine.ranks import RankGroup
from streamd.engine.window import Chaining, Policy, Source
from streamd.media import synthetic_clip
from streamd.pipeline import ContinuationPipeline

MODEL = "tiny"
CHUNKS = 3  # per stream
STREAMS: dict[str, StreamParams] = {
    "a": StreamParams(seed=7, chaining=Chaining.PIXEL, policy=Policy.SELF),
    "b": StreamParams(seed=11, chaining=Chaining.LATENT, cond_noise=0.1, policy=Policy.SELF),
}


def run(world: int, cached: bool, sharded: bool = False, weights: str = "bf16") -> dict[str, Any]:
    """Every stream's chunks: frames [F, H, W, 3] uint8, new latents [1, C, T, h, w], source; the step order."""
    pipeline = ContinuationPipeline.from_spec(MODEL, weights=weights)
    ranks = None
    if world > 1:
        ranks = RankGroup.launch(world, MODEL, shard_weights=sharded, weights=weights)
        ranks.connect(pipeline.dit)
    latents: list[torch.Tensor] = []
    decode = pipeline.decode_continuation

    def recording_decode(cond: torch.Tensor, new: torch.Tensor) -> np.ndarray:
        latents.append(new.detach().clone())
        return decode(cond, new)

    pipeline.decode_continuation = recording_decode  # type: ignore[method-assign]
    engine = EngineCore(pipeline, EngineConfig(use_kv_cache=cached, max_streams=len(STREAMS), realtime=False),
                        ranks=ranks)
    out: dict[str, Any] = {"order": [], "threads": torch.get_num_threads()}
    try:
        for n, (sid, params) in enumerate(STREAMS.items()):
            engine.add_stream(sid, params)
            out[sid] = {"frames": [], "latents": [], "source": []}
            height, width = engine.frame_size(sid)
            for frame in synthetic_clip(13, height, width, seed=n).frames:
                engine.push_frame(sid, frame)
        while min(len(out[sid]["frames"]) for sid in STREAMS) < CHUNKS:
            outcome = engine.step()
            assert outcome is not None, "the engine stopped before every stream had its chunks"
            out["order"].append(outcome.plan.stream_id)
            if outcome.chunk is not None:
                rec = out[outcome.plan.stream_id]
                rec["frames"].append(outcome.chunk.frames.copy())
                rec["latents"].append(latents[-1])
                rec["source"].append(Source(outcome.chunk.source).value)
    finally:
        if ranks is not None:
            ranks.close()
    return out


def main(argv: list[str]) -> int:
    world, path, out = int(argv[0]), argv[1], argv[2]
    sharded = len(argv) > 3 and argv[3] == "sharded"
    weights = argv[4] if len(argv) > 4 else "bf16"
    torch.save(run(world, path == "cached", sharded, weights), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
