"""`streamd bench gpu` (streamd/bench/gpu.py) where there is no GPU, and the arithmetic it reports against."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamd.bench.gpu import NoCudaError, _section, add_gpu_check_parser, plan_bytes, run_gpu_check
from streamd.bench.scaling import block_weight_bytes, predict, weight_gather_bytes
from streamd.model.config import LONGCAT_13B
from streamd.model.dit import LongCatVideoDiT

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_without_cuda_it_says_so_and_exits_non_zero() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamd.bench.gpu", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "nothing was measured" in proc.stderr
    assert proc.stdout == ""
    parser = argparse.ArgumentParser()
    add_gpu_check_parser(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["gpu", "--json", "--repeats", "1"])
    with pytest.raises(NoCudaError):
        run_gpu_check(args)


def test_a_failing_section_is_reported_and_the_next_runs() -> None:
    report: dict = {}

    def boom() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    assert _section(report, "int8", boom) is None
    assert _section(report, "fp8", lambda: {"ok": 1}) == {"ok": 1}
    assert report["errors"] == {"int8": "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"}
    assert report["fp8"] == {"ok": 1}


def test_plan_of_the_13b_model_at_480p() -> None:
    c = LONGCAT_13B
    params = 13_581_071_424
    kv = 2 * c.depth * c.num_heads * 4 * 1560 * c.head_dim * 2  # 4.57 GiB (LONGCAT.md)
    plan = plan_bytes(params, 2.0, kv, 20 * 1560, 24 * 1560, c.hidden_size, c.ffn_hidden, 512)
    assert plan["weights"] == 27_162_142_848
    assert abs(kv / 2**30 - 4.57) < 0.01
    assert 1e9 < plan["activations"] < 10e9  # a few GB for 31,200 query tokens
    assert plan["total"] == plan["weights"] + plan["kv_cache"] + plan["activations"]


def test_scaling_model_counts_the_block_weights_and_their_gather() -> None:
    dit = LongCatVideoDiT.from_config(LONGCAT_13B, device="meta")
    params = sum(p.numel() for b in dit.blocks for p in b.parameters())
    assert block_weight_bytes(LONGCAT_13B) == 2 * params
    assert 0.5 < block_weight_bytes(LONGCAT_13B, "int8") / (2 * params) < 0.53  # adaLN stays bf16
    assert weight_gather_bytes(LONGCAT_13B, 4) == 2 * params * 3 // 4
    whole = predict(LONGCAT_13B, 480, 832, 4)
    sharded = predict(LONGCAT_13B, 480, 832, 4, shard_weights=True)
    assert whole["weight_gather_bytes_per_step"] == 0
    assert sharded["weight_gather_bytes_per_step"] == weight_gather_bytes(LONGCAT_13B, 4)
    assert sharded["block_weight_bytes_per_rank"] * 4 >= block_weight_bytes(LONGCAT_13B)
    # at 480p the gather hides behind the step's compute; at 240p on 8 GPUs it no longer does
    assert sharded["weight_gather_exposed_s"] == 0
    assert predict(LONGCAT_13B, 240, 416, 8, shard_weights=True)["weight_gather_exposed_s"] > 0
