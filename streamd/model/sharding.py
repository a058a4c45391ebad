"""DiT block weights sharded over the context-parallel group (FSDP2), for inference.

LongCat's context parallelism replicates the weights: every rank holds the whole DiT (27 GB in bf16). Here every
block's parameters are split along dim 0 over the N ranks of the context-parallel group with FSDP2
(`torch.distributed.fsdp.fully_shard` on a DeviceMesh made from that group; NCCL on GPUs, gloo on CPUs). A block
is all-gathered just before it runs and freed after it (reshard_after_forward=True), and while block i computes
block i+1 is already being gathered (FSDP2's forward prefetch), so a rank holds 1/N of the block weights plus at
most two whole blocks in flight.

Only the blocks are sharded. The embedders and the final layer stay whole on every rank: they are small (0.25 %
of the 13.6B model) and the DiT reads some of them outside any `forward` (its `prefill` calls the blocks, but
embeds and modulates itself), where FSDP's hooks would not gather them.

Every block forward gathers that block once: a rank receives (N-1)/N of the block weights per forward, in bf16 on
a GPU: 27.2 GB x (N-1)/N per denoising step of the 13.6B model (`bench/scaling.py` adds it to the step).

Inference only, under `torch.inference_mode` as the rest of the engine: FSDP2's all-gather and free work there.
FSDP2 allocates its gather buffers in the autograd mode of the first pass and cannot write into inference tensors
from another mode, so a sharded DiT runs its blocks under inference_mode whatever its caller's mode
(`BlockList.inference_only`); the tests call it under inference_mode, no_grad and grad mode. Nothing keeps
gathered weights for a backward: every parameter has requires_grad=False.

Quantized weights (model/quant.py) are torchao tensor subclasses, which FSDP2 cannot split (torchao 0.18's
Int8Tensor implements no aten.split). `shard_dit` therefore first turns every such weight into its plain inner
tensors (int8 data and per-row scales), held as ordinary parameters by `FlatQuantLinear`, which rebuilds the
torchao tensor from the gathered parts at each call: the matmul is torchao's own, bit for bit the unsharded one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .quant import weight_bytes

# How many later blocks each block prefetches: one keeps at most two whole blocks gathered at a time.
PREFETCH_BLOCKS = 1


@dataclass
class ShardInfo:
    """What sharding left on this rank, and the all-gather traffic it has caused since the last reset.

    Bytes are those of parameters (the KV cache and activations are the planner's). `gathered_bytes` counts what
    this rank received through FSDP's all-gathers (its peers' shards of every block that ran), `gathers` the block
    gathers; `reset()` starts a new count (bench denoise resets it around one step).
    """

    world: int
    blocks: int
    block_bytes_full: int  # every block's weights, whole (what each rank held before)
    block_bytes_local: int  # this rank's shards of them (padded as FSDP pads: dim 0 rounded up to N)
    other_bytes: int  # embedders and final layer, whole on every rank
    largest_block_bytes: int  # one whole block: with prefetch, at most two are gathered at once
    gathered_bytes: int = 0
    gathers: int = 0
    _received_per_block: list[int] = field(default_factory=list, repr=False)

    @property
    def bytes_per_rank(self) -> int:
        """DiT parameter bytes this rank holds between forwards (block shards + unsharded parts)."""
        return self.block_bytes_local + self.other_bytes

    @property
    def peak_bytes_per_rank(self) -> int:
        """Parameter bytes while a forward runs: the shards, the whole parts, and two gathered blocks."""
        return self.bytes_per_rank + min(self.blocks, 1 + PREFETCH_BLOCKS) * self.largest_block_bytes

    def reset(self) -> None:
        """Start a new count of gathered bytes."""
        self.gathered_bytes = 0
        self.gathers = 0

    def as_dict(self) -> dict[str, int]:
        """The figures, for JSON (bench denoise)."""
        return {"world": self.world, "blocks": self.blocks, "block_bytes_full": self.block_bytes_full,
                "block_bytes_local": self.block_bytes_local, "other_bytes": self.other_bytes,
                "bytes_per_rank": self.bytes_per_rank, "peak_bytes_per_rank": self.peak_bytes_per_rank,
                "largest_block_bytes": self.largest_block_bytes}


class FlatQuantLinear(nn.Module):
    """A Linear whose torchao-quantized weight is held as its plain inner tensors (shardable by FSDP2).

    torchao's weight subclasses (Int8Tensor, Float8Tensor) flatten into inner tensors (`qdata` [out, in], `scale`
    [out, 1] for per-row scales) and a context of plain attributes. Each inner tensor becomes a parameter here,
    named `inner_<name>`; FSDP2 shards each along dim 0 and gathers it back whole before `forward`, which rebuilds
    the torchao tensor and calls F.linear on it, so the arithmetic is torchao's, unchanged.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight
        names, ctx = weight.__tensor_flatten__()
        self._cls = type(weight)
        self._names = list(names)
        self._ctx = ctx
        self._size = weight.size()
        self._stride = weight.stride()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        for name in self._names:
            inner = getattr(weight, name)
            if inner.ndim == 0:  # FSDP2 shards along dim 0; a per-tensor scalar scale becomes [1]
                raise ValueError(f"cannot shard {self._cls.__name__}.{name}: a 0-dim tensor")
            self.register_parameter(f"inner_{name}", nn.Parameter(inner.detach(), requires_grad=False))
        self.bias = linear.bias

    def weight_tensor(self) -> torch.Tensor:
        """The torchao weight rebuilt from the (gathered) inner tensors."""
        inner = {name: getattr(self, f"inner_{name}") for name in self._names}
        return self._cls.__tensor_unflatten__(inner, self._ctx, self._size, self._stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        return F.linear(x, self.weight_tensor(), self.bias)


def _is_subclass_weight(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and w is not None and type(w) not in (torch.Tensor, nn.Parameter)


def flatten_quantized(block: nn.Module) -> int:
    """Replace every Linear of `block` with a tensor-subclass weight by a FlatQuantLinear; how many were replaced."""
    targets = [name for name, m in block.named_modules() if _is_subclass_weight(m)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name) if parent_name else block
        setattr(parent, child, FlatQuantLinear(parent.get_submodule(child)))
    return len(targets)


def _padded_shard_bytes(module: nn.Module, world: int) -> int:
    """Bytes of this rank's padded dim-0 shards of `module`'s parameters (FSDP2 pads dim 0 up to a multiple of N)."""
    total = 0
    for p in module.parameters():
        rows = p.shape[0] if p.ndim else 1
        total += math.ceil(rows / world) * (p.numel() // max(rows, 1)) * p.element_size()
    return total


def mesh_of(group: Any, device: torch.device) -> Any:
    """A 1-D DeviceMesh over the ranks of an existing process group (the context-parallel group)."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group, device.type)


def shard_dit(dit: nn.Module, group: Any = None, prefetch: int = PREFETCH_BLOCKS) -> ShardInfo:
    """Shard every block of `dit` over the ranks of `group` (None: the default group) with FSDP2; in place.

    Every rank of the group must call this on the same model, in the same order as the other collectives, and then
    run the same forwards (context parallelism already requires that). Quantize before sharding (model/quant.py):
    torchao weights are flattened into shardable parts first. `prefetch` later blocks are gathered while a block
    runs (0: none). Returns the bytes each rank now holds and a counter of the bytes the gathers bring in.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    blocks = list(dit.blocks)
    world = dist.get_world_size(group)
    device = next(dit.parameters()).device
    block_set = {id(p) for b in blocks for p in b.parameters()}
    other = sum(p.numel() * p.element_size() for p in dit.parameters() if id(p) not in block_set)
    for block in blocks:
        flatten_quantized(block)
    full = [weight_bytes(b) for b in blocks]
    local = [_padded_shard_bytes(b, world) for b in blocks]
    info = ShardInfo(world=world, blocks=len(blocks), block_bytes_full=sum(full), block_bytes_local=sum(local),
                     other_bytes=other, largest_block_bytes=max(full, default=0))
    if world == 1:  # nothing to split; keep the one-process path untouched
        return info
    mesh = mesh_of(group if group is not None else dist.group.WORLD, device)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # The block list is the root: it holds no parameters of its own, but every pass over the blocks (forward and
    # prefill) calls it first, so FSDP initialises every block under one root (shared all-gather streams on a GPU)
    # before the first block runs, which forward prefetch needs (an uninitialised block cannot be prefetched).
    fully_shard(dit.blocks, mesh=mesh, reshard_after_forward=True)
    dit.blocks.inference_only = True  # FSDP's gather buffers are made in the first pass's mode (see BlockList)
    for i, block in enumerate(blocks):
        later = blocks[i + 1:i + 1 + prefetch]
        if later:
            block.set_modules_to_forward_prefetch(later)  # type: ignore[operator]
    # What one gather of a block brings in: the peers' padded shards, (N-1)/N of the padded block.
    info._received_per_block = [shard * (world - 1) for shard in local]

    def counter(i: int) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            info.gathered_bytes += info._received_per_block[i]
            info.gathers += 1
        return hook

    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(counter(i))
    return info


def is_sharded(dit: nn.Module) -> bool:
    """Whether `dit`'s blocks are FSDP-sharded."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(b, FSDPModule) for b in dit.blocks)
