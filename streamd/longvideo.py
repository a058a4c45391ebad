"""Long-video continuation of a file, LongCat style, run through the streaming engine.

A file is a stream that is never late: its last 13 frames are the live input of the first chunk; every later
segment is conditioned on the stream's own output (the engine's autoregressive continuation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .engine.core import EngineCore
from .engine.params import EngineConfig, StreamParams
from .engine.ranks import RankGroup
from .engine.window import Policy, Source, cond_frames_for
from .media import VideoWriter, fit_frames, read_video
from .pipeline import ContinuationPipeline

STREAM_ID = "file"


@dataclass(frozen=True)
class ContinueReport:
    """What a file continuation produced."""

    output: Path
    input_frames: int
    generated_frames: int
    segments: int
    fps: float
    height: int
    width: int
    seconds: float


def continue_file(
    pipeline: ContinuationPipeline,
    source: Path,
    output: Path,
    params: StreamParams,
    segments: int,
    chunk_latents: int = 4,
    use_kv_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    ranks: RankGroup | None = None,
) -> ContinueReport:
    """Continue `source` by `segments` chunks and write [conditioning frames ; continuation] to `output` (MP4).

    Frames are scaled and centre-cropped to the model's resolution. `progress(done, total)` counts denoising
    steps over the whole run. `ranks`: a connected context-parallel group (streamd.engine.ranks) to run on.
    """
    if segments < 1:
        raise ValueError("segments must be at least 1")
    engine = EngineCore(pipeline, EngineConfig(chunk_latents=chunk_latents, use_kv_cache=use_kv_cache, max_streams=1,
                                            realtime=False), ranks=ranks)
    params = params.updated(policy=Policy.AUTO)
    engine.add_stream(STREAM_ID, params)
    height, width = engine.frame_size(STREAM_ID)
    cond_frames = cond_frames_for(engine.config.cond_latents, pipeline.codec.temporal_factor)
    clip = read_video(source, last=cond_frames)
    if clip.frames.shape[0] < cond_frames:
        raise ValueError(f"{source} has {clip.frames.shape[0]} frames; continuation needs at least {cond_frames}")
    window = fit_frames(clip.frames, height, width)
    for frame in window:
        engine.push_frame(STREAM_ID, frame)
    steps = len(pipeline.schedule(engine.executor.chunk_params(params)).timesteps)
    started = time.perf_counter()
    generated = 0
    with VideoWriter(output, fps=clip.fps or 15.0) as writer:
        writer.write(window)
        for segment in range(segments):
            def step_progress(done: int, total: int, _seg: int = segment) -> None:
                if progress is not None:
                    progress(_seg * steps + done, segments * steps)

            chunk = engine.run_chunk(progress=step_progress)
            assert chunk is not None and chunk.source is (Source.LIVE if segment == 0 else Source.SELF)
            writer.write(chunk.frames)
            generated += len(chunk.frames)
    return ContinueReport(output, cond_frames, generated, segments, clip.fps or 15.0, height, width,
                          time.perf_counter() - started)
