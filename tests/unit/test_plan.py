"""The memory plan's arithmetic with exact numbers, its verdicts and cheapest fixes, and `streamd plan --json`."""

from __future__ import annotations

import json

import pytest

from streamd.cli import main
from streamd.engine.plan import (
    DiTParams,
    GiB,
    PlanSettings,
    activation_bytes,
    cheapest_fix,
    dit_weight_bytes,
    kv_cache_bytes,
    make_plan,
    parse_bytes,
)
from streamd.model.config import LONGCAT_13B
from streamd.model.shape import model_shape


@pytest.fixture(scope="module")
def longcat():
    return model_shape("longcat-video")


def test_the_published_model_from_configs_alone(longcat) -> None:
    p = DiTParams.of(LONGCAT_13B)
    assert p.total == 13_581_071_424
    assert dit_weight_bytes(p, 48, 2) == 27_162_142_848  # bf16
    # int8/fp8: 1 byte per value of the blocks' linear weights but the adaLN modulation's, + torchao's per-row scale
    # (int8: fp32 scale + int8 zero point; fp8: fp32 scale); the rest stays bf16
    assert dit_weight_bytes(p, 48, 2, "int8") == 14_241_040_512
    assert dit_weight_bytes(p, 48, 2, "fp8") == 14_238_214_272
    # sharded over 4 ranks: a quarter, plus two whole blocks in flight
    assert dit_weight_bytes(p, 48, 2, ranks=4, sharded=True) == 27_162_142_848 // 4 + 2 * p.per_block * 2
    assert longcat.text_params == 5_680_910_336  # UMT5-XXL encoder
    assert longcat.vae_params == 126_892_531  # Wan 2.1 VAE


def test_kv_cache_per_stream_and_per_rank(longcat) -> None:
    tokens = 4 * longcat.tokens_per_frame(480, 832)
    assert tokens == 6240
    kv = kv_cache_bytes(LONGCAT_13B, tokens, 2)
    assert kv == 4_907_335_680 and round(kv / GiB, 2) == 4.57
    assert kv_cache_bytes(LONGCAT_13B, tokens, 2, heads=16) == kv // 2
    for n in (2, 4, 8):
        plan = make_plan(longcat, PlanSettings(capacity=80 * GiB, ranks=n))
        assert plan.stream.kv_cache == kv // n
        assert plan.activations == -(-activation_bytes(LONGCAT_13B, tokens, tokens, 512, 2) // n)


def test_text_encoder_on_the_cpu_costs_no_gpu_bytes(longcat) -> None:
    gpu = make_plan(longcat, PlanSettings(capacity=80 * GiB, text_encoder="gpu"))
    cpu = make_plan(longcat, PlanSettings(capacity=80 * GiB, text_encoder="cpu"))
    assert gpu.text_encoder >= 5_680_910_336 * 2 and cpu.text_encoder == 0
    assert cpu.text_encoder_host == gpu.text_encoder
    assert gpu.total - cpu.total == gpu.text_encoder - cpu.stream.text  # the chunk's embedding copy stays


# (GPUs, GiB each, height, width) -> (fits as asked, text encoder, sharded, streams that fit) with auto settings
VERDICTS = {
    (1, 24, 480, 832): (False, None, None, 0), (1, 24, 240, 416): (False, None, None, 0),
    (1, 48, 480, 832): (True, "gpu", False, 1), (1, 48, 240, 416): (True, "gpu", False, 6),
    (1, 80, 480, 832): (True, "gpu", False, 7), (1, 80, 240, 416): (True, "gpu", False, 33),
    (2, 48, 480, 832): (True, "gpu", False, 2), (2, 48, 240, 416): (True, "gpu", False, 13),
    (4, 24, 480, 832): (True, "cpu", True, 10), (4, 24, 240, 416): (True, "gpu", True, 9),
    (8, 80, 480, 832): (True, "gpu", False, 62), (8, 80, 240, 416): (True, "gpu", False, 64),
}


@pytest.mark.parametrize("setup", sorted(VERDICTS))
def test_verdicts(longcat, setup) -> None:
    gpus, gib, h, w = setup
    fits, text, sharded, streams = VERDICTS[setup]
    plan = make_plan(longcat, PlanSettings(capacity=gib * GiB, ranks=gpus, height=h, width=w))
    assert plan.fits is fits and plan.streams_that_fit == streams
    if fits:
        assert (("gpu" if plan.text_on_gpu else "cpu"), plan.sharded) == (text, sharded)
        assert cheapest_fix(longcat, plan.settings) is None


def test_one_24_gib_gpu_needs_the_text_encoder_on_the_cpu_and_int8(longcat) -> None:
    for h, w, streams in ((480, 832, 1), (240, 416, 6)):
        fix = cheapest_fix(longcat, PlanSettings(capacity=24 * GiB, height=h, width=w))
        assert fix is not None and fix.plan.fits
        assert [c.split(" (")[0] for c in fix.changes] == ["text encoder on the CPU", "int8 weights"]
        assert (fix.settings.text_encoder, fix.settings.weights, fix.plan.streams_that_fit) == ("cpu", "int8", streams)


def test_fixes_in_order_of_cost(longcat) -> None:
    # 4 streams on 1x48 GiB: moving the text encoder out is enough
    fix = cheapest_fix(longcat, PlanSettings(capacity=48 * GiB, max_streams=4))
    assert fix is not None and fix.changes[0].startswith("text encoder on the CPU")
    # unsharded weights forced on 4x24 GiB: sharding comes back before int8
    fix = cheapest_fix(longcat, PlanSettings(capacity=24 * GiB, ranks=4, shard_weights="off"))
    assert fix is not None and fix.changes[-1].startswith("sharded weights")
    # 16 GiB alone: int8 is not enough, 2 ranks (sharded) are
    fix = cheapest_fix(longcat, PlanSettings(capacity=16 * GiB))
    assert fix is not None and fix.changes[-1].startswith("2 ranks")
    # a size that int8 and 8 ranks cannot hold on 4 GiB: a smaller size
    fix = cheapest_fix(longcat, PlanSettings(capacity=4 * GiB, ranks=8, weights="int8", height=960, width=1664))
    assert fix is not None and fix.changes[-1].startswith("size ")
    # a CPU plan can only shrink the size (before the streams) or the streams
    tiny = model_shape("tiny")
    plan = make_plan(tiny, PlanSettings(capacity=100 * 2**20, device="cpu", max_streams=64))
    fix = cheapest_fix(tiny, plan.settings)
    assert not plan.fits and fix is not None and fix.changes == ("size 48x32 (--width 48 --height 32)",)
    at16 = make_plan(tiny, PlanSettings(capacity=100 * 2**20, device="cpu", height=16, width=16))  # the least size
    fixed = make_plan(tiny, PlanSettings(capacity=at16.fixed + 3 * at16.stream.total, device="cpu",
                                         height=16, width=16, max_streams=8))
    fix = cheapest_fix(tiny, fixed.settings)
    assert fix is not None and fix.changes == ("3 streams (--max-streams 3)",)


def test_parse_bytes() -> None:
    assert parse_bytes("24GiB") == 24 * GiB and parse_bytes("80GB") == 80 * 10**9 and parse_bytes("1MiB") == 2**20
    assert parse_bytes("1.5 gib") == 3 * GiB // 2 and parse_bytes(4096) == 4096
    for bad in ("", "GiB", "-1GiB", "0", "12XB", "nanGiB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_cli_plan_json(capsys) -> None:
    rc = main(["plan", "--model", "longcat-video", "--gpu-memory", "24GiB", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and set(out) == {"plan", "fix"}
    plan, fix = out["plan"], out["fix"]
    assert plan["fits"] is False and plan["device"] == "cuda" and plan["capacity"] == 24 * GiB
    assert plan["bytes"]["dit_weights"] == 27_162_142_848
    assert plan["bytes"]["per_stream"]["kv_cache"] == 4_907_335_680
    assert set(plan["bytes"]) >= {"dit_weights", "text_encoder", "vae_weights", "runtime", "activations",
                                  "codec_peak", "transient", "fixed", "per_stream", "streams", "total"}
    assert fix["plan"]["fits"] is True and fix["settings"]["weights"] == "int8"
    assert fix["settings"]["text_encoder"] == "cpu" and len(fix["changes"]) == 2
    rc = main(["plan", "--model", "longcat-video", "--gpu-memory", "80GiB", "--context-parallel", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["fix"] is None and out["plan"]["ranks"] == 2
    assert out["plan"]["bytes"]["per_stream"]["kv_cache"] == 4_907_335_680 // 2
