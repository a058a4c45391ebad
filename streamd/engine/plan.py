"""The memory plan (torch-free): what each rank holds, from a model's configs alone, and whether it fits.

One arithmetic serves `streamd plan`, the refusal of `serve` and `continue` before any weight loads, and the
engine's admission of streams (the executor's footprint, activation reserve and default budget call the
functions below). Every number is per rank; under context parallelism the plan describes rank 0, the fullest
one (it alone holds the text encoder, the VAE and the streams' latents and frames).

The terms, with `it` the compute dtype's bytes (2: bf16 on CUDA, 4: fp32 on CPU):
- DiT weights: parameters x `it`. int8/fp8 store the weight matrices of the blocks' linear layers but the adaLN
  modulation in 1 byte per value plus a scale per output row (QUANT_ROW_BYTES); the adaLN modulation, norms,
  biases, embedders and the final layer stay in `it`. Sharded
  over N ranks (FSDP-style): ceil(bytes / N) plus two whole blocks in flight (one computing, one prefetched).
- Text encoder: its parameters x `it` plus the prompt cache (PROMPT_CACHE_ENTRIES prompts x L x D x `it`), on
  the GPU only when `text_encoder` resolves to gpu; an embedded preset's stand-in encoder always lives on the
  host. With the encoder off the DiT's device each chunk in progress holds a copy of its embeddings (per stream).
- VAE weights, and a transient: the larger of one denoising step's activations and the codec's peak (they never
  overlap: the decode runs after the chunk's last step has freed its activations). See `activation_bytes` and
  `codec_peak_bytes` for the formulas and what they were measured against.
- Runtime: what the process costs beyond its tensors (CUDA context and library workspaces; on CPU the kernels,
  thread pools that loading and the first step bring in once streamd is imported, measured at 50-58 MiB with
  torch 2.13 in a fresh install; what glibc's allocator keeps after frees varies from run to run and is not
  counted).
- Per stream: its KV cache (heads / N per rank), its latent window and chunk, and on CPU its frame windows
  (on a GPU those are host memory).
- Budget: the capacity given (`--gpu-memory`, or free device memory / available host RAM measured before
  loading), less a fragmentation reserve on CUDA (`CUDA_RESERVE_FRACTION`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config module is torch-free, but importing it runs streamd.model's __init__ (torch)
    from ..model.config import DiTConfig

GiB = 2**30
MiB = 2**20
WEIGHT_FORMATS: tuple[str, ...] = ("bf16", "int8", "fp8")  # bf16: the model's own precision (fp32 on CPU)
TEXT_PLACES: tuple[str, ...] = ("auto", "gpu", "cpu")
SHARD_MODES: tuple[str, ...] = ("auto", "on", "off")
GUIDANCE_BATCH = 2  # [uncond ; cond]: any stream may turn guidance on, so every step is planned at batch 2
PROMPT_CACHE_ENTRIES = 64  # prompts kept per model (model/bundle.py uses this bound)
BLOCKS_IN_FLIGHT = 2  # sharded weights: one block computing, the next one prefetched
CUDA_RUNTIME_BYTES = 1 * GiB  # CUDA context + cuBLAS/cuDNN workspaces (an estimate, not measured here)
# RSS for kernels and thread pools that loading and a first step add to an imported streamd, in a freshly installed
# environment: measured 50-58 MiB (torch 2.13, small and tiny-random, glibc's mmap threshold fixed;
# tests/model/test_plan_model.py). One long-used development venv measured 32 MiB less; the cause is not known.
CPU_RUNTIME_BYTES = 56 * MiB
CUDA_RESERVE_FRACTION = 0.05  # of the capacity, kept back for the caching allocator's fragmentation
MAX_RANKS = 8  # the largest group `more ranks` suggests (one host)
# bytes per output row beside the 1-byte weights, as torchao 0.18 stores them: int8 an fp32 scale and an int8 zero
# point, fp8 an fp32 scale (checked against the quantized `small` in tests/model/test_plan_model.py)
QUANT_ROW_BYTES = {"int8": 5, "fp8": 4}


@dataclass(frozen=True)
class DiTParams:
    """Parameter counts of a LongCat DiT, from its config alone (checked against a meta-device build)."""

    total: int
    per_block: int
    block_linear_weights: int  # values of the weight matrices of one block's quantized nn.Linear layers
    block_linear_rows: int  # their output rows (one quantisation scale each)

    @classmethod
    def of(cls, c: DiTConfig) -> DiTParams:
        """Count the parameters of every module of `LongCatVideoDiT(c)` (names as in LONGCAT.md)."""
        h, a, f, hd = c.hidden_size, c.adaln_tembed_dim, c.ffn_hidden, c.head_dim
        pt, ph, pw = c.patch_size
        # (in, out, bias) of every linear layer of a block: adaLN, qkv, proj, q_linear, kv_linear, proj, w1, w3, w2
        linears = [(a, 6 * h, True), (h, 3 * h, True), (h, h, True), (h, h, True), (h, 2 * h, True), (h, h, True),
                   (h, f, False), (h, f, False), (f, h, False)]
        # quantized: every linear but the adaLN modulation, which stays in the model dtype (model/quant.py)
        quantized = sum(i * o for i, o, _ in linears[1:])
        rows = sum(o for _, o, _ in linears[1:])
        biases = sum(o for _, o, bias in linears if bias)
        norms = 2 * h + 4 * hd  # pre_crs_attn_norm (affine) + q/k RMSNorms of both attentions
        per_block = sum(i * o for i, o, _ in linears) + biases + norms
        embedders = (c.in_channels * pt * ph * pw * h + h  # x_embedder (Conv3d with bias)
                     + c.frequency_embedding_size * a + a + a * a + a  # t_embedder
                     + c.caption_channels * h + h + h * h + h)  # y_embedder
        final = a * 2 * h + 2 * h + h * c.patch_channels + c.patch_channels
        return cls(embedders + c.depth * per_block + final, per_block, quantized, rows)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model, read from its configs (no weights)."""

    name: str
    dit: DiTConfig
    text_params: int  # parameters of the text encoder
    text_embedded: bool  # the embedded stand-in encoder: always on the host, in fp32
    text_tokens: int  # prompts are padded to this many tokens
    vae_params: int  # 0 for the embedded codec (a fixed projection)
    vae_base_dim: int | None  # Wan VAE's base channel count; None: the embedded codec
    height: int  # native size
    width: int
    spatial_factor: int = 8
    temporal_factor: int = 4

    @property
    def dit_params(self) -> DiTParams:
        """The DiT's parameter counts."""
        return DiTParams.of(self.dit)

    def tokens_per_frame(self, height: int, width: int) -> int:
        """DiT tokens of one latent frame at a pixel size."""
        s, (_, ph, pw) = self.spatial_factor, self.dit.patch_size
        return (height // s // ph) * (width // s // pw)


@dataclass(frozen=True)
class PlanSettings:
    """The choices a plan is made for. Validated on construction."""

    capacity: int  # bytes of memory per rank (GPU memory, or host RAM on CPU)
    device: str = "cuda"  # cuda or cpu (on the CPU every rank shares the host: give each its share)
    ranks: int = 1  # context-parallel group size
    weights: str = "bf16"
    shard_weights: str = "auto"
    text_encoder: str = "auto"
    height: int | None = None  # working size; None: the model's
    width: int | None = None
    max_streams: int = 1
    cond_latents: int = 4
    chunk_latents: int = 4

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("the memory capacity must be positive")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}")
        if not 1 <= self.ranks <= 64:
            raise ValueError("the context-parallel size must be in 1..64")
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weights!r}")
        if self.shard_weights not in SHARD_MODES:
            raise ValueError(f"shard_weights must be one of {', '.join(SHARD_MODES)}, got {self.shard_weights!r}")
        if self.text_encoder not in TEXT_PLACES:
            raise ValueError(f"text_encoder must be one of {', '.join(TEXT_PLACES)}, got {self.text_encoder!r}")
        if self.max_streams < 1 or self.cond_latents < 1 or self.chunk_latents < 1:
            raise ValueError("max_streams, cond_latents and chunk_latents must be at least 1")

    @property
    def itemsize(self) -> int:
        """Bytes per value of the compute dtype: bf16 on CUDA, fp32 on CPU (as model.bundle.default_dtype)."""
        return 2 if self.device == "cuda" else 4

    def replace(self, **changes: Any) -> PlanSettings:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """A memory size: an integer of bytes, or a number with a unit (24GiB, 1.5 GB, 512MiB); ValueError else."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        raw = str(text).strip().lower().replace(" ", "")
        number = raw.rstrip("kmgtib")
        value, unit = float(number) if number else -1.0, raw[len(number):]
    if unit not in _UNITS or not math.isfinite(value) or value <= 0 or value * _UNITS[unit] < 1:
        raise ValueError(f"a memory size must be positive, like 24GiB, 80GB or 512MiB, got {text!r}")
    return int(value * _UNITS[unit])


# ---------------------------------------------------------------------------------------------- the terms
def kv_cache_bytes(config: DiTConfig, tokens: int, itemsize: int, heads: int | None = None, batch: int = 1) -> int:
    """K and V of every block for `tokens` conditioning tokens: 2 x depth x batch x heads x tokens x head_dim x
    itemsize (`heads`: this rank's share under context parallelism)."""
    heads = config.num_heads if heads is None else heads
    return 2 * config.depth * batch * heads * tokens * config.head_dim * itemsize


def dit_weight_bytes(params: DiTParams, depth: int, itemsize: int, weights: str = "bf16", ranks: int = 1,
                     sharded: bool = False) -> int:
    """Bytes of DiT weights one rank holds (see the module docstring)."""
    per_block = params.per_block * itemsize
    total = params.total * itemsize
    if weights != "bf16":  # 1-byte matrices + torchao's per-row scale (and zero point); the rest stays as it is
        per_block = (params.per_block - params.block_linear_weights) * itemsize + params.block_linear_weights \
            + QUANT_ROW_BYTES[weights] * params.block_linear_rows
        total = (params.total - depth * params.per_block) * itemsize + depth * per_block
    if sharded and ranks > 1:
        return math.ceil(total / ranks) + BLOCKS_IN_FLIGHT * per_block
    return total


def activation_bytes(config: DiTConfig, noise_tokens: int, cond_tokens: int, text_tokens: int, itemsize: int,
                     ranks: int = 1, batch: int = GUIDANCE_BATCH, cached: bool = True) -> int:
    """One denoising step's transient memory (per rank: the tokens, or the heads, are split N ways).

    Counted per guidance branch, in values of the compute dtype, for the block whose tensors peak:
    - per query token (N noise tokens): 12 h (x, its modulated copy, fused qkv, normed and RoPE'd q and k,
      attention output, projection, gated residual) + 3 f (SwiGLU: w1 x, w3 x, their product);
    - per key token (the [cache ; noise] keys, C + N): 5 h (RoPE'd cached K, concatenated K and V, RoPE temporaries);
    - per text token: 2 h (cross-attention K and V).
    Measured on the CPU (fp32, torch 2.13, `small` at 128x224..384x672) the step's RSS peak lies within 15% of
    this; the former estimate (4 blocks x 2 x all tokens x (7 h + 2 f)) was 2.5-3x the measured peak. On CUDA
    the count is the same at 2 bytes plus the fp32 LayerNorm/modulation copies (2 h per query token x 4 bytes):
    not yet measured on a GPU. Without the KV cache every token is a query token.
    """
    h, f = config.hidden_size, config.ffn_hidden
    queries = noise_tokens if cached else noise_tokens + cond_tokens
    values = queries * (12 * h + 3 * f) + (cond_tokens + noise_tokens) * 5 * h + text_tokens * 2 * h
    per_branch = values * itemsize + (queries * 2 * h * 4 if itemsize < 4 else 0)
    return math.ceil(batch * per_branch / ranks)


def codec_peak_bytes(shape: ModelShape, height: int, width: int, cond_latents: int, chunk_latents: int,
                     itemsize: int) -> int:
    """The codec's transient peak when it decodes one chunk ([cond ; new] latents) at a size.

    Both codecs end in the same conversion: the decoded video in fp32 (F_all frames), then two fp32 temporaries
    of the new frames (clamp, scale) and their uint8 copy: pixels x (12 F_all + 24 F_new + 3 F_new). For the
    embedded codec that conversion is the peak (measured: 780 B/pixel predicted vs 800-900 B/pixel of RSS for
    `tiny-random`, whose step is negligible). The Wan VAE decodes one latent frame at a time through causal
    convolutions; its full-resolution stage holds about 8 tensors of base_dim x 4 frames x H x W in the compute
    dtype (upsampled input, conv input with two cached frames, outputs, residual, norm): 8 x base_dim x 4 x
    pixels x itemsize. This VAE term is an estimate that must be checked on a GPU (LONGCAT.md: measure it).
    """
    pixels = height * width
    t = shape.temporal_factor
    f_all = (cond_latents + chunk_latents - 1) * t + 1
    f_new = chunk_latents * t
    conversion = pixels * (12 * f_all + 24 * f_new + 3 * f_new)
    internal = 0 if shape.vae_base_dim is None else 8 * shape.vae_base_dim * t * pixels * itemsize
    return conversion + internal


@dataclass(frozen=True)
class StreamBytes:
    """Bytes one stream holds for its whole life on one rank."""

    kv_cache: int
    latents: int
    frames: int  # its frame windows, when they live in the planned memory (CPU); 0 on a GPU
    text: int  # its chunk's copy of the prompt embeddings, when the encoder is off the DiT's device

    @property
    def total(self) -> int:
        """All of the stream's bytes."""
        return self.kv_cache + self.latents + self.frames + self.text


def stream_bytes(shape: ModelShape, height: int, width: int, cond_latents: int, chunk_latents: int,
                 itemsize: int, device: str = "cuda", ranks: int = 1, text_on_dit_device: bool = True) -> StreamBytes:
    """One stream's footprint at a size: KV cache (heads / ranks), latents in fp32 (window + chunk), the live and
    own frame windows in uint8 (counted on CPU only), the chunk's text embeddings (batch 2) when copied."""
    tokens = cond_latents * shape.tokens_per_frame(height, width)
    kv = kv_cache_bytes(shape.dit, tokens, itemsize, heads=shape.dit.num_heads // ranks)
    s = shape.spatial_factor
    latents = shape.dit.in_channels * (cond_latents + chunk_latents) * (height // s) * (width // s) * 4
    cond_frames = (cond_latents - 1) * shape.temporal_factor + 1
    frames = 2 * cond_frames * height * width * 3 if device == "cpu" else 0
    text = 0 if text_on_dit_device else GUIDANCE_BATCH * shape.text_tokens * shape.dit.caption_channels * itemsize
    return StreamBytes(kv, latents, frames, text)


def text_encoder_bytes(shape: ModelShape, itemsize: int) -> int:
    """The text encoder's weights and its prompt cache (the embedded stand-in: a fp32 table of 4097 x D)."""
    if shape.text_embedded:
        return (shape.text_params + PROMPT_CACHE_ENTRIES * shape.text_tokens * shape.dit.caption_channels) * 4
    return (shape.text_params + PROMPT_CACHE_ENTRIES * shape.text_tokens * shape.dit.caption_channels) * itemsize


def runtime_bytes(device: str) -> int:
    """What a process costs beyond its tensors (see CUDA_RUNTIME_BYTES and CPU_RUNTIME_BYTES)."""
    return CUDA_RUNTIME_BYTES if device == "cuda" else CPU_RUNTIME_BYTES


def usable_bytes(capacity: int, device: str) -> int:
    """The capacity less the allocator reserve (CUDA only)."""
    return capacity - (int(capacity * CUDA_RESERVE_FRACTION) if device == "cuda" else 0)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class MemoryPlan:
    """Rank 0's bytes under some settings, and the verdict."""

    model: str
    settings: PlanSettings  # as asked
    height: int
    width: int
    text_on_gpu: bool  # resolved from settings.text_encoder
    sharded: bool  # resolved from settings.shard_weights
    dit_weights: int
    text_encoder: int  # in the planned memory (0 when on the host of a GPU plan)
    text_encoder_host: int  # host RAM the encoder takes when it is off the GPU
    vae_weights: int
    runtime: int
    activations: int
    codec_peak: int
    stream: StreamBytes
    usable: int  # capacity less the allocator reserve

    @property
    def transient(self) -> int:
        """The larger of one step's activations and the codec's peak (they never overlap)."""
        return max(self.activations, self.codec_peak)

    @property
    def fixed(self) -> int:
        """Everything but the streams."""
        return self.dit_weights + self.text_encoder + self.vae_weights + self.runtime + self.transient

    @property
    def stream_budget(self) -> int:
        """Bytes left for streams: what admission admits from (may be negative: nothing fits)."""
        return self.usable - self.fixed

    @property
    def streams_that_fit(self) -> int:
        """How many streams the budget holds (bounded by 64, the engine's limit)."""
        if self.stream_budget <= 0:
            return 0
        return min(self.stream_budget // max(self.stream.total, 1), 64)

    @property
    def total(self) -> int:
        """Fixed bytes plus `max_streams` streams."""
        return self.fixed + self.settings.max_streams * self.stream.total

    @property
    def left(self) -> int:
        """What is left of the usable capacity with `max_streams` streams (negative: short by that much)."""
        return self.usable - self.total

    @property
    def fits(self) -> bool:
        """Whether `max_streams` streams fit."""
        return self.left >= 0

    def as_json(self) -> dict[str, Any]:
        """The plan as JSON values (bytes as integers)."""
        s = self.settings
        return {
            "model": self.model, "device": s.device, "ranks": s.ranks, "height": self.height, "width": self.width,
            "weights": s.weights, "sharded": self.sharded, "text_encoder": "gpu" if self.text_on_gpu else "cpu",
            "max_streams": s.max_streams, "capacity": s.capacity, "usable": self.usable,
            "bytes": {
                "dit_weights": self.dit_weights, "text_encoder": self.text_encoder, "vae_weights": self.vae_weights,
                "runtime": self.runtime, "activations": self.activations, "codec_peak": self.codec_peak,
                "transient": self.transient, "fixed": self.fixed,
                "per_stream": dataclasses.asdict(self.stream) | {"total": self.stream.total},
                "streams": s.max_streams * self.stream.total, "total": self.total,
                "text_encoder_host": self.text_encoder_host,
            },
            "stream_budget": self.stream_budget, "streams_that_fit": self.streams_that_fit,
            "left": self.left, "fits": self.fits,
        }


def _plan(shape: ModelShape, s: PlanSettings, text_on_gpu: bool, sharded: bool) -> MemoryPlan:
    height, width = s.height or shape.height, s.width or shape.width
    it, n = s.itemsize, s.ranks
    params = shape.dit_params
    tpf = shape.tokens_per_frame(height, width)
    text_here = (text_on_gpu and not shape.text_embedded) or s.device == "cpu"
    text = text_encoder_bytes(shape, it) if text_here else 0
    return MemoryPlan(
        model=shape.name, settings=s, height=height, width=width,
        text_on_gpu=text_on_gpu and not shape.text_embedded, sharded=sharded,
        dit_weights=dit_weight_bytes(params, shape.dit.depth, it, s.weights, n, sharded),
        text_encoder=text, text_encoder_host=0 if text_here else text_encoder_bytes(shape, it),
        vae_weights=shape.vae_params * it,
        runtime=runtime_bytes(s.device),
        activations=activation_bytes(shape.dit, s.chunk_latents * tpf, s.cond_latents * tpf, shape.text_tokens,
                                     it, ranks=n),
        codec_peak=codec_peak_bytes(shape, height, width, s.cond_latents, s.chunk_latents, it),
        stream=stream_bytes(shape, height, width, s.cond_latents, s.chunk_latents, it, s.device, n,
                            text_on_dit_device=s.device == "cpu" or (text_on_gpu and not shape.text_embedded)),
        usable=usable_bytes(s.capacity, s.device),
    )


def make_plan(shape: ModelShape, settings: PlanSettings) -> MemoryPlan:
    """The plan under `settings`, resolving `auto`: the text encoder on the GPU and unsharded weights when the plan
    fits so (they cost nothing at run time), else the encoder on the CPU, then sharded weights (N > 1)."""
    if settings.height is not None or settings.width is not None:
        m = shape.spatial_factor * shape.dit.patch_size[1]
        h, w = settings.height or shape.height, settings.width or shape.width
        if h < m or w < m or h % m or w % m:
            raise ValueError(f"frame size {w}x{h} must be a positive multiple of {m} in each dimension")
    if settings.ranks > 1 and shape.dit.num_heads % settings.ranks:
        raise ValueError(f"context parallel size {settings.ranks} must divide the model's "
                         f"{shape.dit.num_heads} attention heads")
    texts = {"gpu": [True], "cpu": [False], "auto": [True, False]}[settings.text_encoder]
    shards = {"on": [True], "off": [False], "auto": [False, True] if settings.ranks > 1 else [False]}
    plan = None
    for sharded in shards[settings.shard_weights]:
        for text_on_gpu in texts:
            plan = _plan(shape, settings, text_on_gpu, sharded)
            if plan.fits:
                return plan
    assert plan is not None
    return plan


@dataclass(frozen=True)
class Fix:
    """The cheapest change of settings that makes a plan fit, and the plan it gives."""

    changes: tuple[str, ...]  # human-readable steps, cheapest first
    settings: PlanSettings
    plan: MemoryPlan


def _smaller(shape: ModelShape, height: int, width: int) -> tuple[int, int] | None:
    """Half the size on each side, rounded down to the frame multiple (None when that is not smaller)."""
    m = shape.spatial_factor * shape.dit.patch_size[1]
    h, w = (height // 2) // m * m, (width // 2) // m * m
    return (h, w) if h >= m and w >= m else None


def cheapest_fix(shape: ModelShape, settings: PlanSettings) -> Fix | None:
    """The cheapest settings that fit, trying changes in order of what they cost at run time (each kept once
    made, since a later one costs more):

    1. the text encoder on the CPU (seconds per prompt change, nothing per step);
    2. sharded weights, when N > 1 (an all-gather per block per step);
    3. int8 weights (some quality, any GPU; fp8 takes the same bytes and needs fp8 hardware: not tried apart);
    4. more ranks: N doubled up to MAX_RANKS among the divisors of the heads (more GPUs, sharded);
    5. a smaller size, halved on each side while that is possible (the picture);
    6. fewer streams (down to one).
    None when nothing fits, or when the settings fit already. CPU plans only try 5 and 6.
    """
    if make_plan(shape, settings).fits:
        return None
    current, changes = settings, []
    cuda = settings.device == "cuda"

    def attempt(new: PlanSettings, change: str) -> Fix | None:
        nonlocal current
        current = new
        changes.append(change)
        plan = make_plan(shape, current)
        return Fix(tuple(changes), current, plan) if plan.fits else None

    if cuda and settings.text_encoder != "cpu" and not shape.text_embedded:
        fix = attempt(current.replace(text_encoder="cpu"), "text encoder on the CPU (--text-encoder cpu)")
        if fix:
            return fix
    if cuda and settings.ranks > 1 and settings.shard_weights != "on":
        fix = attempt(current.replace(shard_weights="on"), "sharded weights (--shard-weights on)")
        if fix:
            return fix
    if cuda and settings.weights == "bf16":
        fix = attempt(current.replace(weights="int8"), "int8 weights (--weights int8; fp8 takes the same memory)")
        if fix:
            return fix
    if cuda:
        n = current.ranks * 2
        while n <= MAX_RANKS and not shape.dit.num_heads % n:
            fix = attempt(current.replace(ranks=n, shard_weights="on"), f"{n} ranks (--context-parallel {n})")
            if fix:
                return fix
            n *= 2
        if current.ranks > settings.ranks:  # more GPUs did not do it alone: go back to the GPUs there are
            current = current.replace(ranks=settings.ranks,
                                      shard_weights="on" if settings.ranks > 1 else settings.shard_weights)
            changes[:] = [c for c in changes if "ranks" not in c]
    size = _smaller(shape, current.height or shape.height, current.width or shape.width)
    while size is not None:
        fix = attempt(current.replace(height=size[0], width=size[1]), f"size {size[1]}x{size[0]} "
                      f"(--width {size[1]} --height {size[0]})")
        if fix:
            return fix
        changes.pop()  # say only the size that fits
        size = _smaller(shape, *size)
    current = current.replace(height=settings.height, width=settings.width)
    for streams in range(settings.max_streams - 1, 0, -1):
        fix = attempt(current.replace(max_streams=streams), f"{streams} stream{'s' * (streams > 1)} "
                      f"(--max-streams {streams})")
        if fix:
            return fix
        changes.pop()
    return None


def describe(plan: MemoryPlan, fix: Fix | None = None) -> str:
    """The plan as a table of GiB for people, with the verdict and, when it does not fit, the fix."""
    s = plan.settings

    def g(n: int) -> str:
        return f"{n / GiB:9.2f} GiB"

    where = "GPU" if s.device == "cuda" else "host RAM"
    lines = [
        f"memory plan: {plan.model} at {plan.width}x{plan.height}, {s.ranks} rank{'s' * (s.ranks > 1)} "
        f"({'rank 0, the fullest' if s.ranks > 1 else 'one process'}), {where} {s.capacity / GiB:.2f} GiB",
        f"  DiT weights ({s.weights if s.device == 'cuda' else 'fp32'}{', sharded' if plan.sharded else ''}) "
        f"{g(plan.dit_weights)}",
        f"  text encoder ({'gpu' if plan.text_on_gpu else 'cpu'})" + " " * 12 + g(plan.text_encoder)
        + (f"   (+{plan.text_encoder_host / GiB:.2f} GiB host RAM)" if plan.text_encoder_host else ""),
        f"  VAE weights                    {g(plan.vae_weights)}",
        f"  runtime                        {g(plan.runtime)}",
        f"  transient: max(step activations {plan.activations / GiB:.2f}, codec peak {plan.codec_peak / GiB:.2f})"
        f" {g(plan.transient)}",
        f"  per stream: KV {plan.stream.kv_cache / GiB:.2f} + latents, frames, text "
        f"{(plan.stream.total - plan.stream.kv_cache) / GiB:.2f} = {plan.stream.total / GiB:.2f} GiB"
        f" x {s.max_streams} stream{'s' * (s.max_streams > 1)}  {g(s.max_streams * plan.stream.total)}",
        f"  total                          {g(plan.total)} of {plan.usable / GiB:.2f} GiB usable"
        + ("" if s.device == "cpu" else f" ({CUDA_RESERVE_FRACTION:.0%} kept for the allocator)"),
        f"  left                           {g(plan.left)}; streams that fit: {plan.streams_that_fit}",
    ]
    if plan.fits:
        lines.append("verdict: fits")
    elif fix is None:
        lines.append("verdict: does NOT fit, and no change the plan knows makes it fit")
    else:
        lines.append(f"verdict: does NOT fit; cheapest fix: {'; then '.join(fix.changes)} "
                     f"({fix.plan.total / GiB:.2f} GiB, {fix.plan.streams_that_fit} stream(s) fit)")
    return "\n".join(lines)


class PlanError(RuntimeError):
    """A plan that does not fit: refused before any weight loads (the message carries the fix)."""


def refusal(plan: MemoryPlan, fix: Fix | None) -> str:
    """The one-paragraph message `serve` and `continue` refuse with."""
    short = -plan.left / GiB
    how = (f"cheapest fix: {'; then '.join(fix.changes)}" if fix is not None
           else "no change the plan knows makes it fit")
    return (f"the memory plan does not fit: {plan.total / GiB:.2f} GiB needed, {plan.usable / GiB:.2f} GiB usable "
            f"(short by {short:.2f} GiB); {how}. See `streamd plan` for the table.")


def fix_json(fix: Fix | None) -> dict[str, Any] | None:
    """The fix as JSON values: the changes, the settings they give, and the plan under them."""
    if fix is None:
        return None
    s = fix.settings
    return {"changes": list(fix.changes),
            "settings": {"ranks": s.ranks, "weights": s.weights, "shard_weights": s.shard_weights,
                         "text_encoder": s.text_encoder, "height": fix.plan.height, "width": fix.plan.width,
                         "max_streams": s.max_streams},
            "plan": fix.plan.as_json()}
