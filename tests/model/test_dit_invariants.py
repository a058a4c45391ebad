"""The KV-cache invariants of LongCat-Video continuation, on a tiny random-weight model (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from streamd.model.config import DiTConfig
from streamd.model.dit import LongCatVideoDiT
from streamd.model.kvcache import KVCache

from .conftest import make_dit, make_inputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_outputs_are_not_trivial(dit: LongCatVideoDiT) -> None:
    cond, latents, t, text, mask = make_inputs(dit, 2, 2)
    out = dit(latents, t, text, mask, num_cond_latents=2)
    assert out.shape == latents.shape and out.dtype == torch.float32
    assert out.pow(2).mean().sqrt() > 0.1
    # the two guidance branches see different text, so the noise-frame outputs differ
    assert (out[0, :, 2:] - out[1, :, 2:]).abs().max() > 1e-3


@pytest.mark.parametrize("zero_pad", [False, True])
@pytest.mark.parametrize("t_c", [1, 2, 4])
def test_cached_equals_uncached_per_branch(t_c: int, zero_pad: bool) -> None:
    dit = make_dit(zero_pad=zero_pad)
    cond, latents, t, text, mask = make_inputs(dit, t_c, 3)
    uncached = dit(latents, t, text, mask, num_cond_latents=t_c)[:, :, t_c:]
    cache = dit.prefill(cond)
    cached = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=cache)
    for branch in range(2):
        assert rel_err(cached[branch], uncached[branch]) < 1e-5


def test_padding_modes_differ() -> None:
    """Negative control for the test above: the two text-padding modes are really different models."""
    _, latents, t, text, mask = make_inputs(make_dit(), 2, 2)
    a = make_dit(zero_pad=False)(latents, t, text, mask, num_cond_latents=2)
    b = make_dit(zero_pad=True)(latents, t, text, mask, num_cond_latents=2)
    assert (a[0] - b[0]).abs().max() > 1e-4


def test_conditioning_is_independent_of_noise_and_text(dit: LongCatVideoDiT) -> None:
    cond, latents, t, text, mask = make_inputs(dit, 2, 2)
    base = dit(latents, t, text, mask, num_cond_latents=2)
    other_latents = latents.clone()
    other_latents[:, :, 2:] = torch.randn_like(other_latents[:, :, 2:])
    other_text = torch.randn_like(text)
    changed = dit(other_latents, t, other_text, mask, num_cond_latents=2)
    assert torch.equal(base[:, :, :2], changed[:, :, :2])
    assert not torch.equal(base[:, :, 2:], changed[:, :, 2:])
    a, b = dit.prefill(cond), dit.prefill(cond.clone())
    for i in range(dit.config.depth):
        assert torch.equal(a.layer(i)[0], b.layer(i)[0]) and torch.equal(a.layer(i)[1], b.layer(i)[1])


def test_cache_holds_pre_rope_k_and_v_of_the_uncached_forward(dit: LongCatVideoDiT) -> None:
    t_c = 2
    cond, latents, t, text, mask = make_inputs(dit, t_c, 2, batch=1)
    n_cond = t_c * 4 * 6
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    for i, blk in enumerate(dit.blocks):
        # record each block's post-norm, pre-RoPE K and V of the conditioning tokens
        def recording(x: torch.Tensor, _orig=blk.attn.qkv_heads, _i=i):
            q, k, v = _orig(x)
            seen[_i] = (k[:, :, :n_cond].clone(), v[:, :, :n_cond].clone())
            return q, k, v

        blk.attn.qkv_heads = recording
    try:
        dit(latents, t, text, mask, num_cond_latents=t_c)
    finally:
        for blk in dit.blocks:
            del blk.attn.qkv_heads
    cache = dit.prefill(cond)
    assert len(seen) == dit.config.depth
    for i in range(dit.config.depth):
        k, v = cache.layer(i)
        assert k.shape == (1, dit.config.num_heads, n_cond, dit.config.head_dim)
        assert rel_err(k, seen[i][0]) < 1e-5 and rel_err(v, seen[i][1]) < 1e-5


def test_shifted_cache_positions_change_the_output(dit: LongCatVideoDiT, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control for RoPE offsets: cached keys at positions 1..T_c instead of 0..T_c-1 must matter."""
    t_c = 2  # the noise grid (3 frames) differs from the cache grid, so only the cached keys move
    cond, latents, t, text, mask = make_inputs(dit, t_c, 3)
    cache = dit.prefill(cond)
    good = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=cache)
    original = dit._rope

    def shifted(grid, t_offset, device):
        return original(grid, t_offset + 1 if grid == cache.grid else t_offset, device)

    monkeypatch.setattr(dit, "_rope", shifted)
    bad = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=cache)
    assert rel_err(bad, good) > 1e-3


def test_batch1_cache_broadcast_equals_per_branch_cache(dit: LongCatVideoDiT) -> None:
    t_c = 2
    cond, latents, t, text, mask = make_inputs(dit, t_c, 2)
    shared = dit.prefill(cond)
    per_branch = KVCache(dit.config, shared.tokens, batch=2)
    per_branch.begin_fill(shared.grid)
    first, second = dit.prefill(cond), dit.prefill(cond)
    for i in range(dit.config.depth):
        per_branch.write(i, torch.cat([first.layer(i)[0], second.layer(i)[0]]),
                         torch.cat([first.layer(i)[1], second.layer(i)[1]]))
    a = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=shared)
    b = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=per_branch)
    assert torch.equal(a, b)


def test_per_frame_timesteps_equal_scalar_timestep(dit: LongCatVideoDiT) -> None:
    _, latents, _, text, mask = make_inputs(dit, 2, 2)
    scalar = dit(latents, torch.tensor([300.0, 300.0]), text, mask)
    per_frame = dit(latents, torch.full((2, 4), 300.0), text, mask)
    assert rel_err(per_frame, scalar) < 1e-6
    varied = torch.tensor([[300.0, 300.0, 300.0, 900.0]] * 2)
    assert rel_err(dit(latents, varied, text, mask), scalar) > 1e-3


def test_cache_buffers_are_refilled_in_place(dit: LongCatVideoDiT) -> None:
    cond, *_ = make_inputs(dit, 2, 2)
    cache = KVCache(dit.config, capacity_tokens=4 * 4 * 6)
    pointers = [k.data_ptr() for k in cache.k]
    dit.prefill(cond, cache=cache)
    dit.prefill(torch.randn(1, 16, 4, 8, 12), cache=cache)
    assert cache.num_latents == 4 and [k.data_ptr() for k in cache.k] == pointers
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        dit.prefill(torch.randn(1, 16, 5, 8, 12), cache=cache)


def test_bad_inputs_raise_clear_errors(dit: LongCatVideoDiT) -> None:
    cond, latents, t, text, mask = make_inputs(dit, 2, 2)
    with pytest.raises(ValueError, match="channels"):
        dit(latents[:, :3], t, text, mask)
    with pytest.raises(ValueError, match="patch size"):
        dit(latents[..., :7], t, text, mask)
    with pytest.raises(ValueError, match="timestep"):
        dit(latents, t[:, :3], text, mask)
    with pytest.raises(ValueError, match="text"):
        dit(latents, t, text[..., :5], mask)
    cache = dit.prefill(cond)
    with pytest.raises(ValueError, match="num_cond_latents"):
        dit(latents[:, :, 2:], t[:, 2:], text, mask, num_cond_latents=3, kv_cache=cache)


def test_published_config_on_meta_device() -> None:
    model = LongCatVideoDiT.from_config(
        {**DiTConfig().to_dict(), "enable_flashattn3": True, "cp_split_hw": [1, 1], "some_future_key": 1},
        device="meta",
    )
    assert sum(p.numel() for p in model.parameters()) == 13_581_071_424
    names = set(model.state_dict())
    top = {"x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight",
           "y_embedder.y_proj.0.weight", "y_embedder.y_proj.2.weight", "final_layer.adaLN_modulation.1.weight",
           "final_layer.linear.weight"}
    block = {"adaLN_modulation.1.weight", "pre_crs_attn_norm.weight", "pre_crs_attn_norm.bias", "attn.qkv.weight",
             "attn.qkv.bias", "attn.proj.weight", "attn.q_norm.weight", "attn.k_norm.weight",
             "cross_attn.q_linear.weight", "cross_attn.kv_linear.weight", "cross_attn.proj.weight",
             "cross_attn.q_norm.weight", "cross_attn.k_norm.weight", "ffn.w1.weight", "ffn.w2.weight",
             "ffn.w3.weight"}
    assert top <= names
    assert {f"blocks.47.{n}" for n in block} <= names
    assert "blocks.48.attn.qkv.weight" not in names and "blocks.0.ffn.w1.bias" not in names
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.0.attn.qkv.weight"] == (12288, 4096)
    assert shapes["blocks.0.ffn.w1.weight"] == (11008, 4096)
    assert shapes["final_layer.linear.weight"] == (64, 4096)
    assert shapes["x_embedder.proj.weight"] == (4096, 16, 1, 2, 2)


def test_per_frame_modulation_does_not_depend_on_frame_count_or_threads(dit: LongCatVideoDiT) -> None:
    """A frame's adaLN modulation is the same whichever other frames share the forward and however many threads
    compute it: the cached path (T_n frames), the uncached one (T_c + T_n) and a context-parallel rank (its share of
    the cores) must agree to the bit, or pixel chaining amplifies the difference chunk after chunk."""
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0, 640.0, 640.0, 640.0, 640.0]])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for frames in (t, t[:, 4:], t[:, 4:5]):
                emb = dit._embed_time(frames, 1, frames.shape[1])
                results.append((dit.blocks[0].modulation(emb)[0][0, -1], emb[0, -1]))
    finally:
        torch.set_num_threads(threads)
    for mod, emb in results[1:]:
        assert torch.equal(mod, results[0][0]) and torch.equal(emb, results[0][1])


@pytest.mark.parametrize("t_c", [1, 4])
def test_cached_equals_uncached_to_the_bit_with_one_branch(t_c: int) -> None:
    dit = make_dit()
    cond, latents, t, text, mask = make_inputs(dit, t_c, 4, batch=1)
    uncached = dit(latents, t, text, mask, num_cond_latents=t_c)[:, :, t_c:]
    cached = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=dit.prefill(cond))
    assert torch.equal(cached, uncached)
