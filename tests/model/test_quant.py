"""Quantized DiT weights (torchao): int8 weight-only on CPU with fp32 activations, fp8 refused without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from streamd.model.bundle import load_dit_only, load_model
from streamd.model.quant import check_weights, quantize_dit, weight_bytes, weights_format

from .conftest import make_dit, make_inputs

# Max |int8 - fp32| / max |fp32| of one cached step (noise frames, CFG batch 2). Measured: 6.3e-3 on tiny-random
# and 7.1e-3 on small (16x28 latents, 4 + 4 frames); the bound leaves about 3x margin.
INT8_REL_ERROR = 2e-2


def cached_output(dit: nn.Module) -> torch.Tensor:
    cond, latents, t, text, mask = make_inputs(dit, 2, 2, batch=2)
    with torch.inference_mode():
        cache = dit.prefill(cond)
        return dit(latents[:, :, 2:], t[:, 2:], text, mask, num_cond_latents=2, kv_cache=cache)


def test_int8_output_is_close_to_fp32() -> None:
    want = cached_output(make_dit())
    q = make_dit()
    quantize_dit(q, "int8")
    got = cached_output(q)
    err = float((got - want).abs().max() / want.abs().max())
    print(f"int8 vs fp32, tiny-random cached step: max relative error {err:.2e}")
    assert 1e-5 < err < INT8_REL_ERROR  # really quantized, and close


def test_int8_weights_are_int8_and_take_a_quarter_of_fp32() -> None:
    ref, q = make_dit(), make_dit()
    quantize_dit(q, "int8")
    assert weights_format(q) == "int8" and weights_format(ref) == "bf16"
    for (name, m_ref), (_, m_q) in zip(ref.blocks.named_modules(), q.blocks.named_modules()):
        if not isinstance(m_q, nn.Linear):
            continue
        if "adaLN_modulation" in name:  # per-frame fp64 modulation: kept in the model dtype
            assert m_q.weight.dtype == torch.float32 and type(m_q.weight) is nn.Parameter
            continue
        assert m_q.weight.qdata.dtype == torch.int8, name
        wq = weight_bytes(nn.ModuleList([m_q])) - (0 if m_q.bias is None else m_q.bias.numel() * 4)
        # int8 data (1 byte a weight) + per output row an fp32 scale and torchao's int8 zero point (0: symmetric),
        # against 4 bytes a weight
        assert wq == m_ref.weight.numel() + 5 * m_ref.weight.shape[0], name
    # the embedders, norms and final layer are untouched
    for name, p in q.named_parameters():
        if not name.startswith("blocks."):
            assert type(p) is nn.Parameter and p.dtype == torch.float32, name
    blocks_ref = sum(weight_bytes(b) for b in ref.blocks)
    blocks_q = sum(weight_bytes(b) for b in q.blocks)
    assert blocks_q < 0.45 * blocks_ref  # adaLN (fp32) keeps it above a quarter


def test_quantized_model_keeps_the_checkpoint_names() -> None:
    ref, q = make_dit(), make_dit()
    quantize_dit(q, "int8")
    assert list(q.state_dict()) == list(ref.state_dict())


def test_trained_tiny_loads_strictly_then_quantizes() -> None:
    bundle = load_model("tiny", weights="int8")
    assert bundle.weights == "int8" and weights_format(bundle.dit) == "int8"
    assert weights_format(load_dit_only("tiny", weights="int8")) == "int8"
    assert load_model("tiny").weights == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_fp8_is_refused_on_cpu_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"fp8 weights need a CUDA GPU with compute capability 8\.9\+"):
        load_model("tiny", weights="fp8")
    with pytest.raises(ValueError, match="compute capability 8.9"):
        quantize_dit(make_dit(), "fp8")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="bf16, int8, fp8"):
        check_weights("int4", "cpu")


def test_staged_quantization_moves_block_by_block_and_gives_the_same_model() -> None:
    """A checkpoint's DiT bound for a GPU is quantized block by block on its way there (here: to the CPU)."""
    moved: list[str] = []
    staged, direct = make_dit(), make_dit()
    for i, block in enumerate(staged.blocks):
        orig = block.to

        def to(*args, _i=i, _orig=orig, **kwargs):  # type: ignore[no-untyped-def]
            moved.append(f"block {_i}")
            return _orig(*args, **kwargs)

        block.to = to  # type: ignore[method-assign]
    quantize_dit(staged, "int8", device=torch.device("cpu"))
    quantize_dit(direct, "int8")
    assert moved == [f"block {i}" for i in range(len(staged.blocks))]
    assert weights_format(staged) == "int8"
    assert torch.equal(cached_output(staged), cached_output(direct))


def test_a_command_that_loads_the_model_libraries_prints_no_library_noise() -> None:
    """torchao is installed with streamd; its import (through diffusers) must not greet every command with
    warnings about CUDA kernels a CPU build lacks."""
    import subprocess
    import sys

    code = ("from streamd.pipeline import ContinuationPipeline; import diffusers, transformers; "
            "p = ContinuationPipeline.from_spec('tiny-random', weights='int8'); print(p.bundle.weights)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "int8", proc.stderr
    assert "torchao" not in proc.stderr and "Warning" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
