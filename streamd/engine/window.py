"""Per-stream conditioning-window bookkeeping, free of torch: which frames condition the next chunk, where they
came from, which output frame numbers and timestamps the chunk gets, and what leaves the window.

Lengths are in latent frames. A window of `cond_latents` latents covers 4*(cond_latents-1)+1 pixel frames (the
codec is causal: the first latent is one frame, each later latent four); a chunk of `chunk_latents` latents yields
4*chunk_latents new frames. The defaults follow LongCat-Video: 4 conditioning latents = 13 frames; 4 new latents =
16 frames per chunk.

Every bound here is fixed at construction: the live ring holds `cond_frames` frames, the own-output history holds
`cond_frames` frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")
NS_PER_S = 1_000_000_000


class Source(str, Enum):
    """Where the conditioning frames of a chunk came from."""

    LIVE = "live"  # frames received from the stream's client
    SELF = "self"  # the stream's own latest output (autoregressive continuation)


class Policy(str, Enum):
    """How a stream chooses its conditioning source at each chunk boundary."""

    AUTO = "auto"  # live when enough unused live frames arrived since the last live chunk, else own output
    LIVE = "live"  # live whenever a full live window exists (stale or not), else own output
    SELF = "self"  # own output once there is any; live only to start


class Chaining(str, Enum):
    """How own output conditions the next chunk."""

    PIXEL = "pixel"  # re-encode the last decoded frames (the reference behaviour)
    LATENT = "latent"  # reuse the last latents directly, skipping decode/re-encode


def cond_frames_for(cond_latents: int, temporal_factor: int = 4) -> int:
    """Pixel frames covered by a window of `cond_latents` latents (4 -> 13)."""
    return temporal_factor * (cond_latents - 1) + 1


@dataclass(frozen=True)
class FrameRef(Generic[T]):
    """One frame in a window: its number in its own sequence (input or output), timestamp and payload."""

    number: int
    pts_ns: int
    source: Source
    payload: T = field(compare=False, repr=False)


class Ring(Generic[T]):
    """A bounded FIFO of the newest `capacity` items; counts what it pushed out."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[T] = deque(maxlen=capacity)
        self.evicted = 0

    def push(self, item: T) -> T | None:
        """Append; returns the item pushed out when full."""
        out = self._items[0] if len(self._items) == self.capacity else None
        if out is not None:
            self.evicted += 1
        self._items.append(item)
        return out

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.push(item)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[T]:
        """Oldest first."""
        return list(self._items)


@dataclass(frozen=True)
class ChunkPlan(Generic[T]):
    """What the next chunk of a stream conditions on and which output frames it will produce."""

    chunk: int  # chunk number within the stream's current generation
    source: Source
    cond: tuple[FrameRef[T], ...]  # conditioning frames, oldest first (cond_frames of them)
    first_output: int  # output frame number of the chunk's first frame
    num_output: int  # frames the chunk yields
    live_fresh: int  # live frames that arrived since the previous live-conditioned chunk
    evicted: tuple[int, ...]  # output/input numbers of frames that left the window since the previous plan

    def output_numbers(self) -> range:
        """Output frame numbers of the chunk."""
        return range(self.first_output, self.first_output + self.num_output)


class ConditioningWindow(Generic[T]):
    """The rolling conditioning window of one stream.

    `push_live` records client frames; `plan` picks the source of the next chunk by the policy; `commit` records
    the chunk's output as the stream's own history. Output frames are numbered from 0 and stamped at `fps`.
    """

    def __init__(
        self,
        cond_latents: int = 4,
        chunk_latents: int = 4,
        fps: float = 15.0,
        policy: Policy = Policy.AUTO,
        min_fresh: int | None = None,
        temporal_factor: int = 4,
    ) -> None:
        if cond_latents < 1 or chunk_latents < 1:
            raise ValueError("cond_latents and chunk_latents must be at least 1")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.cond_latents = cond_latents
        self.chunk_latents = chunk_latents
        self.cond_frames = cond_frames_for(cond_latents, temporal_factor)
        self.chunk_frames = temporal_factor * chunk_latents
        self.fps = fps
        self.policy = policy
        self.min_fresh = self.cond_frames if min_fresh is None else min_fresh
        if not 1 <= self.min_fresh <= self.cond_frames:
            raise ValueError(f"min_fresh must be in 1..{self.cond_frames}")
        self.live: Ring[FrameRef[T]] = Ring(self.cond_frames)
        self.own: Ring[FrameRef[T]] = Ring(self.cond_frames)
        self.live_received = 0  # input frames ever pushed (this generation)
        self.unused_evicted = 0  # live frames pushed out before any chunk used them (input faster than generation)
        self._live_at_last_plan = 0
        self.next_output = 0
        self.chunks = 0
        self._last_cond: tuple[FrameRef[T], ...] = ()

    # ----------------------------------------------------------------------------- input
    def push_live(self, payload: T, pts_ns: int | None = None) -> bool:
        """Record one client frame (numbered in arrival order).

        Returns False when it pushed out a frame that never conditioned a chunk (counted in `unused_evicted`).
        """
        number = self.live_received
        pts = pts_ns if pts_ns is not None else round(number * NS_PER_S / self.fps)
        out = self.live.push(FrameRef(number, pts, Source.LIVE, payload))
        self.live_received += 1
        if out is not None and out.number >= self._live_at_last_plan:
            self.unused_evicted += 1
            return False
        return True

    @property
    def live_fresh(self) -> int:
        """Live frames received since the last live-conditioned chunk was planned (not yet used to condition)."""
        return self.live_received - self._live_at_last_plan

    def output_pts_ns(self, number: int) -> int:
        """Presentation timestamp of output frame `number` at the model's frame rate."""
        return round(number * NS_PER_S / self.fps)

    # ----------------------------------------------------------------------------- planning
    def choose_source(self) -> Source | None:
        """The source the policy picks now, or None when no full window exists yet."""
        live_full = len(self.live) == self.cond_frames
        own_full = len(self.own) == self.cond_frames
        if self.policy is Policy.SELF:
            return Source.SELF if own_full else Source.LIVE if live_full else None
        if self.policy is Policy.LIVE:
            return Source.LIVE if live_full else Source.SELF if own_full else None
        if live_full and (self.live_fresh >= self.min_fresh or not own_full):
            return Source.LIVE
        return Source.SELF if own_full else None

    def ready(self) -> bool:
        """Whether a chunk can be planned now."""
        return self.choose_source() is not None

    def plan(self) -> ChunkPlan[T]:
        """Plan the next chunk (raises RuntimeError when not ready)."""
        source = self.choose_source()
        if source is None:
            raise RuntimeError("no full conditioning window yet")
        cond = tuple((self.live if source is Source.LIVE else self.own).items())
        kept = {(f.source, f.number) for f in cond}
        evicted = tuple(f.number for f in self._last_cond if (f.source, f.number) not in kept)
        plan = ChunkPlan(self.chunks, source, cond, self.next_output, self.chunk_frames, self.live_fresh, evicted)
        if source is Source.LIVE:
            self._live_at_last_plan = self.live_received
        self._last_cond = cond
        return plan

    def commit(self, plan: ChunkPlan[T], outputs: Iterable[T]) -> list[FrameRef[T]]:
        """Record the chunk's output frames (in order) as own history; returns their references."""
        refs = [
            FrameRef(n, self.output_pts_ns(n), Source.SELF, payload)
            for n, payload in zip(plan.output_numbers(), outputs, strict=True)
        ]
        self.own.extend(refs)
        self.next_output = plan.first_output + plan.num_output
        self.chunks = plan.chunk + 1
        return refs

    def reset(self) -> None:
        """Forget every frame (a new generation starts from live input again); output numbering continues."""
        self.live.clear()
        self.own.clear()
        self.live_received = 0
        self._live_at_last_plan = 0
        self.chunks = 0
        self._last_cond = ()
