"""Attention kernels: FlashAttention 3 or 2 on CUDA for fp16/bf16 when installed, PyTorch SDPA otherwise.

streamd never passes a causal flag. The block-causal structure of LongCat-Video (conditioning tokens see only
conditioning tokens, noise tokens see everything) is expressed by which queries meet which keys, so the kernels'
different alignment of a causal mask when query and key lengths differ (FlashAttention aligns it bottom-right,
SDPA's `is_causal` top-left) can never change a result.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


@functools.cache
def _flash_kernel() -> tuple[str, Callable[..., Any]] | None:
    """The newest FlashAttention `flash_attn_func` that imports, or None (flash-attn is an optional extra)."""
    for module, name in (("flash_attn_interface", "fa3"), ("flash_attn", "fa2")):
        try:
            return name, importlib.import_module(module).flash_attn_func
        except Exception:  # ImportError, or a wheel built for another torch/CUDA
            continue
    return None


def attention_backend(device: torch.device, dtype: torch.dtype) -> str:
    """Which kernel `attention` uses for tensors on this device and dtype: 'fa3', 'fa2' or 'sdpa'."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    kernel = _flash_kernel()
    return "sdpa" if kernel is None else kernel[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense attention, no mask. q: [B, H, Sq, D]; k, v: [B, H, Sk, D] -> [B, H, Sq, D]; scale 1/sqrt(D)."""
    # Compiled blocks (compiled.py) use SDPA, whose CUDA flash backend is FlashAttention-2: dynamo cannot trace
    # the optional package's import without a graph break.
    if not torch.compiler.is_compiling() and attention_backend(q.device, q.dtype) != "sdpa":
        _, fn = _flash_kernel()  # type: ignore[misc]
        # FlashAttention takes [B, S, H, D]
        out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=q.shape[-1] ** -0.5)
        if isinstance(out, tuple):  # some FA3 builds also return the log-sum-exp
            out = out[0]
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention where each sample attends only to its valid keys (text padding).

    q: [B, H, Sq, D]; k, v: [B, H, Sk, D]; key_mask: [B, Sk] (nonzero = attend) or None for all keys.
    """
    if key_mask is None:
        return attention(q, k, v)
    mask = (key_mask != 0)[:, None, None, :]  # [B, 1, 1, Sk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
