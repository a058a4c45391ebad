"""Long-video continuation of a file, LongCat style: the last 13 frames condition each next segment."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .media import VideoWriter, fit_frames, read_video
from .pipeline import ChunkParams, ContinuationPipeline

COND_FRAMES = 13  # 4 latent frames, as LongCat-Video conditions its continuation


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
    prompt: str,
    params: ChunkParams,
    segments: int,
    cond_frames: int = COND_FRAMES,
    progress: Callable[[int, int], None] | None = None,
) -> ContinueReport:
    """Continue `source` by `segments` chunks and write [conditioning frames ; continuation] to `output` (MP4).

    Frames are scaled and centre-cropped to the model's resolution. Each segment is conditioned on the last
    `cond_frames` frames of what exists so far (pixel-space chaining, as the reference long-video demo does).
    `progress(done, total)` counts denoising steps over the whole run.
    """
    if segments < 1:
        raise ValueError("segments must be at least 1")
    clip = read_video(source, last=cond_frames)
    if clip.frames.shape[0] < cond_frames:
        raise ValueError(f"{source} has {clip.frames.shape[0]} frames; continuation needs at least {cond_frames}")
    height, width = pipeline.bundle.height, pipeline.bundle.width
    window = fit_frames(clip.frames, height, width)
    fps = clip.fps or 15.0
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    steps_per_segment = len(pipeline.schedule(params).timesteps)
    started = time.perf_counter()
    generated = 0
    with VideoWriter(output, fps=fps) as writer:
        writer.write(window)
        for segment in range(segments):
            def step_progress(done: int, total: int, _seg: int = segment) -> None:
                if progress is not None:
                    progress(_seg * steps_per_segment + done, segments * steps_per_segment)

            chunk = pipeline.generate_chunk(window, prompt, params, generator=generator, progress=step_progress)
            writer.write(chunk.frames)
            generated += len(chunk.frames)
            window = np.concatenate([window, chunk.frames])[-cond_frames:]
    return ContinueReport(output, cond_frames, generated, segments, fps, height, width,
                          time.perf_counter() - started)
