"""Context parallelism on real gloo ranks: N = 2 and 4 give the N = 1 outputs, cached and uncached, with CFG batch 2,
on a 3x5 patch grid that no split divides (so tiles are padded)."""

from __future__ import annotations

import pytest
import torch

from streamd.model.dit import LongCatVideoDiT
from streamd.model.parallel import ContextParallel, Layout, split_factors
from tests.model.conftest import make_dit, make_inputs

from .conftest import run_ranks

T_CS = (1, 2, 4)
T_N = 2
H, W = 6, 10  # latents: a 3 x 5 patch grid


def outputs(dit: LongCatVideoDiT) -> dict[str, torch.Tensor]:
    """Uncached and cached outputs of the noise frames for every T_c, and the cache's head share."""
    res: dict[str, torch.Tensor] = {}
    for t_c in T_CS:
        cond, latents, t, text, mask = make_inputs(dit, t_c, T_N, batch=2, h=H, w=W)
        res[f"uncached{t_c}"] = dit(latents, t, text, mask, num_cond_latents=t_c)[:, :, t_c:]
        cache = dit.prefill(cond)
        res[f"cached{t_c}"] = dit(latents[:, :, t_c:], t[:, t_c:], text, mask, num_cond_latents=t_c, kv_cache=cache)
        res[f"k{t_c}"] = cache.layer(0)[0].clone()
    return res


def cp_outputs() -> dict[str, torch.Tensor]:
    dit = make_dit()
    dit.set_context_parallel(ContextParallel())
    return outputs(dit)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return outputs(make_dit())


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, torch.Tensor]]]:
    return request.param, run_ranks(request.param, cp_outputs)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_layout_is_exact() -> None:
    assert [split_factors(n) for n in (1, 2, 4, 8)] == [(1, 1), (1, 2), (2, 2), (2, 4)]
    lay = Layout.of((2, 3, 5), 4)
    assert (lay.tile_h, lay.tile_w, lay.padded) == (2, 3, True)
    perm = lay.perm()
    assert perm.unique().numel() == 2 * 3 * 5 and int(perm.max()) < 4 * lay.local_tokens
    # token (t=1, y=2, x=4) lives on rank 3 (row 1, col 1) at local (t=1, row 0, col 1)
    assert int(perm[1 * 15 + 2 * 5 + 4]) == 3 * lay.local_tokens + 1 * 6 + 0 * 3 + 1


@pytest.mark.parametrize("t_c", T_CS)
@pytest.mark.parametrize("path", ["uncached", "cached"])
def test_cp_equals_one_process(ranks, reference, path: str, t_c: int) -> None:
    n, results = ranks
    want = reference[f"{path}{t_c}"]
    for rank, res in enumerate(results):  # every rank ends with the whole output
        got = res[f"{path}{t_c}"]
        assert got.shape == want.shape
        err = rel(got, want)
        print(f"N={n} {path} T_c={t_c} rank {rank}: max relative difference {err:.2e}")
        assert err < 1e-5


def test_each_rank_holds_its_heads_of_the_cache(ranks, reference) -> None:
    n, results = ranks
    for t_c in T_CS:
        full = reference[f"k{t_c}"]  # [1, heads, T_c * 15, D]
        heads = full.shape[1] // n
        for rank, res in enumerate(results):
            share = res[f"k{t_c}"]
            assert share.shape == (1, heads, *full.shape[2:])
            assert rel(share, full[:, rank * heads:(rank + 1) * heads]) < 1e-5
