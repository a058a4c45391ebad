"""Quantized DiT weights through torchao: `bf16` (none), `int8` weight-only, `fp8` weight-only.

What is quantized: the nn.Linear layers inside the DiT blocks that carry the compute (self-attention qkv and proj,
cross-attention q_linear, kv_linear and proj, the SwiGLU w1, w2, w3): 95 % of the 13.6B model's parameters.

What is not, on purpose:
- each block's adaLN modulation Linear: it is computed per latent frame in fp64 and rounded to fp32
  (`_linear_per_frame` in dit.py) so that its result does not depend on the row or thread count; quantizing it
  would bring back a path-dependent error into every gate and shift (it is 4.4 % of a block's parameters at
  13.6B: 512 -> 6 x 4096, so int8 blocks take 52 % of their bf16 bytes rather than 50 %);
- the norms (RMSNorm / LayerNorm weights), the embedders (x_embedder, t_embedder, y_embedder) and the final
  layer (its modulation per frame in fp64, its projection in fp32): small, and where precision matters most.

`int8`: torchao's Int8WeightOnlyConfig: symmetric per-row (per output channel) int8 with an fp32 scale (and an
int8 zero point, always 0, that torchao keeps: 5 bytes a row beside the 1 byte a weight); the matmul
runs in the activation dtype (x @ q^T, then the scale per output), so it works on CPU with fp32 activations and on
GPU with bf16 ones. The block weights take 1 byte a parameter (+5 per row): half of bf16, a quarter of fp32.
`fp8`: torchao's Float8WeightOnlyConfig (e4m3, per row): needs CUDA compute capability 8.9+ (Ada, Hopper), refused
elsewhere with a ValueError.

Apply after loading and before sharding (model/sharding.py flattens the torchao weights into shardable parts).
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_FORMATS = ("bf16", "int8", "fp8")
FP8_MIN_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) have fp8 tensor cores
# Linear layers left in the model dtype even when the blocks are quantized (see the module docstring).
_KEEP_FULL = ("adaLN_modulation",)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s parameters as stored: a torchao weight counts its inner tensors (int8 data + scales)."""
    total = 0
    for p in module.parameters():
        if type(p) in (torch.Tensor, nn.Parameter):
            total += p.numel() * p.element_size()
        else:
            names, _ = p.__tensor_flatten__()
            total += sum(getattr(p, n).numel() * getattr(p, n).element_size() for n in names)
    return total


def check_weights(weights: str, device: torch.device | str) -> None:
    """Raise ValueError unless `weights` is a known format that runs on `device`."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    if weights == "fp8":
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("fp8 weights need a CUDA GPU with compute capability 8.9+ (Ada or Hopper); "
                             f"this model runs on {device}: use weights = int8 or bf16")
        cap = torch.cuda.get_device_capability(device)
        if cap < FP8_MIN_CAPABILITY:
            raise ValueError(f"fp8 weights need a CUDA GPU with compute capability 8.9+ (Ada or Hopper); "
                             f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}: use weights = int8")


def _quantizable(module: nn.Module, fqn: str) -> bool:
    """A block's compute Linear (not its adaLN modulation)."""
    return isinstance(module, nn.Linear) and not any(part in fqn for part in _KEEP_FULL)


def quantize_dit(dit: nn.Module, weights: str, device: torch.device | None = None) -> int:
    """Quantize `dit`'s block Linears in place to `weights` ('bf16': leave them); the DiT's weight bytes after.

    Call after loading (and merging LoRAs) and before `shard_dit`. The compute dtype (activations, norms,
    embedders) stays the model's: bf16 on a GPU, fp32 on a CPU. `device`: move the DiT there, each block just
    before it is quantized (a DiT staged in host memory reaches the GPU already quantized).
    """
    check_weights(weights, device if device is not None else next(dit.parameters()).device)
    if weights == "bf16":
        if device is not None:
            dit.to(device)
        return weight_bytes(dit)
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    # set_inductor_config=False: torchao would otherwise change global torch._inductor settings (we do not compile)
    config = (Int8WeightOnlyConfig(set_inductor_config=False) if weights == "int8"
              else Float8WeightOnlyConfig(set_inductor_config=False))
    for block in dit.blocks:
        if device is not None:
            block.to(device)
        quantize_(block, config, filter_fn=_quantizable)
    if device is not None:
        dit.to(device)  # the embedders and the final layer; the quantized blocks are there already
    return weight_bytes(dit)


def weights_format(dit: nn.Module) -> str:
    """'int8', 'fp8' or 'bf16' (unquantized) from the type of the first block's qkv weight (flattened or not)."""
    qkv = dit.blocks[0].attn.qkv
    data = getattr(qkv, "inner_qdata", None)
    if data is None:
        w = qkv.weight
        data = getattr(w, "qdata", w)
    if data.dtype == torch.int8:
        return "int8"
    if data.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return "fp8"
    return "bf16"
