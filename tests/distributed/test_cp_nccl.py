"""Context parallelism on NCCL: with two or more GPUs, N = 2 gives the one-GPU outputs (bf16, the model's dtype
on CUDA) in the cached and the uncached path. Skipped without two CUDA devices."""

from __future__ import annotations

import pytest
import torch

from streamd.model.parallel import ContextParallel
from tests.model.conftest import make_dit, make_inputs

from .conftest import run_ranks

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]


def outputs(cp: bool) -> dict[str, torch.Tensor]:
    device = torch.device("cuda", torch.cuda.current_device())
    dit = make_dit().to(device, torch.bfloat16)
    if cp:
        dit.set_context_parallel(ContextParallel())
    res = {}
    for t_c in (1, 2, 4):
        cond, latents, t, text, mask = (x.to(device) for x in make_inputs(dit, t_c, 2, batch=2, h=6, w=10))
        res[f"uncached{t_c}"] = dit(latents, t, text, mask, num_cond_latents=t_c)[:, :, t_c:].cpu()
        cache = dit.prefill(cond)
        res[f"cached{t_c}"] = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c,
                                  kv_cache=cache).cpu()
    return res


def test_nccl_two_ranks_equal_one_gpu() -> None:
    want = outputs(False)
    for got in run_ranks(2, outputs, True, backend="nccl"):
        for key, ref in want.items():
            err = float((got[key] - ref).abs().max() / ref.abs().max())
            assert err < 2e-2, (key, err)  # bf16: rounding differs with the matmul shapes
