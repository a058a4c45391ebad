"""DiT block weights sharded over the context-parallel ranks (FSDP2 on gloo): the outputs do not change.

The sharded variants of test_cp_equivalence (N = 2 and 4; cached, uncached and the prefilled cache, CFG batch 2,
on a padded 3x5 patch grid) against one unsharded process; int8 weights sharded over 2 ranks against unsharded
int8; the bytes a rank keeps and the bytes each forward gathers; and two streams over three chunks through the
engine with worker processes (`python -m streamd.engine.ranks --shard-weights`), N = 2, against one rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from streamd.model.parallel import ContextParallel
from streamd.model.quant import quantize_dit, weight_bytes
from streamd.model.sharding import FlatQuantLinear, is_sharded, shard_dit
from tests.model.conftest import make_dit, make_inputs

from .conftest import run_ranks
from .test_cp_chunks import LATENT_TOL
from .test_cp_equivalence import T_CS, outputs, rel

EXACT = 1e-5  # fp32 rounding (as test_cp_equivalence); measured: 0 uncached, 3e-7 cached


def sharded_outputs(weights: str) -> dict[str, Any]:
    dit = make_dit()
    quantize_dit(dit, weights)
    full = weight_bytes(dit)
    dit.set_context_parallel(ContextParallel())
    info = shard_dit(dit)
    res: dict[str, Any] = {"sharded": is_sharded(dit), "full_bytes": full, "info": info.as_dict(),
                           "flat": isinstance(dit.blocks[0].attn.qkv, FlatQuantLinear)}
    # one uncached forward: every block gathered once
    cond, latents, t, text, mask = make_inputs(dit, 2, 2, batch=2, h=6, w=10)
    info.reset()
    with torch.inference_mode():
        dit(latents, t, text, mask, num_cond_latents=2)
    res["gathered"], res["gathers"] = info.gathered_bytes, info.gathers
    res.update(outputs(dit))  # grad mode, as test_cp_equivalence: the sharded blocks run under inference_mode
    with torch.no_grad():
        res["nograd"] = dit(latents, t, text, mask, num_cond_latents=2)
    return res


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return outputs(make_dit())


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, Any]]]:
    return request.param, run_ranks(request.param, sharded_outputs, "bf16")


@pytest.mark.parametrize("t_c", T_CS)
@pytest.mark.parametrize("path", ["uncached", "cached"])
def test_sharded_cp_equals_one_process(ranks, reference, path: str, t_c: int) -> None:
    n, results = ranks
    want = reference[f"{path}{t_c}"]
    for rank, res in enumerate(results):
        assert res["sharded"]
        err = rel(res[f"{path}{t_c}"], want)
        print(f"sharded N={n} {path} T_c={t_c} rank {rank}: max relative difference {err:.2e}")
        assert err < EXACT


def test_sharded_prefill_fills_each_ranks_heads(ranks, reference) -> None:
    n, results = ranks
    for t_c in T_CS:
        full = reference[f"k{t_c}"]
        heads = full.shape[1] // n
        for rank, res in enumerate(results):
            assert rel(res[f"k{t_c}"], full[:, rank * heads:(rank + 1) * heads]) < EXACT


def test_each_rank_keeps_a_share_and_gathers_the_rest(ranks) -> None:
    n, results = ranks
    for res in results:
        info = res["info"]
        # 1/N of the block weights (dim 0 padded up to a multiple of N: at most one row per tensor more)
        assert info["block_bytes_full"] / n <= info["block_bytes_local"] <= info["block_bytes_full"] / n * 1.02
        assert info["bytes_per_rank"] == info["block_bytes_local"] + info["other_bytes"]
        assert info["block_bytes_full"] + info["other_bytes"] == res["full_bytes"]
        # one forward gathers every block once: (N-1)/N of the (padded) block weights come in
        assert res["gathers"] == info["blocks"]
        assert res["gathered"] == info["block_bytes_local"] * (n - 1)


def test_int8_sharded_equals_int8_unsharded() -> None:
    ref_dit = make_dit()
    quantize_dit(ref_dit, "int8")
    cond, latents, t, text, mask = make_inputs(ref_dit, 2, 2, batch=2, h=6, w=10)
    with torch.inference_mode():
        want = ref_dit(latents, t, text, mask, num_cond_latents=2)
    results = run_ranks(2, sharded_outputs, "int8")
    for res in results:
        assert res["sharded"] and res["flat"]  # torchao's Int8Tensor turned into shardable parts
        err = rel(res["nograd"], want)
        print(f"int8 sharded N=2: max relative difference to unsharded int8 {err:.2e}")
        assert err < EXACT
        info = res["info"]
        assert info["block_bytes_full"] + info["other_bytes"] == res["full_bytes"]


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_engine_chunks_with_sharded_workers_equal_one_rank(tmp_path: Path, weights: str) -> None:
    """Two streams, three chunks each, through the engine: rank 0 shards in RankGroup.connect, the worker process
    in run_worker (--shard-weights, --weights passed on by RankGroup.launch)."""
    ref = run_chunks_cli(1, "cached", tmp_path, False, weights)
    got = run_chunks_cli(2, "cached", tmp_path, True, weights)
    for sid in ("a", "b"):
        for k, (x, y) in enumerate(zip(got[sid]["latents"], ref[sid]["latents"], strict=True)):
            diff = float((x - y).abs().max())
            print(f"{weights} sharded N=2 stream {sid} chunk {k + 1}: max latent difference {diff:.1e}")
            assert diff <= LATENT_TOL
            assert (got[sid]["frames"][k] == ref[sid]["frames"][k]).all()


def run_chunks_cli(world: int, path: str, tmp: Path, sharded: bool, weights: str) -> dict[str, Any]:
    import subprocess
    import sys

    from .test_cp_chunks import ROOT

    out = tmp / f"n{world}-{path}-{sharded}-{weights}.pt"
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.cp_chunks", str(world), path, str(out),
                           "sharded" if sharded else "whole", weights],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)
