"""Regional compilation of the DiT: `torch.compile` per LongCatBlock path, not the whole model.

Why per block: the model's forward loops over blocks with data-dependent Python (cache checks, RoPE table
lookups); one block's code is the same for every block, so dynamo traces it once per path and every block reuses
the graph (parameters are graph inputs, `inline_inbuilt_nn_modules`), which keeps compile time independent of
depth.

Shapes: every path is compiled with `dynamic=True`, so token counts (window fill, frame size) and the cache length
are symbols, not constants. Dynamo still specialises sizes 0 and 1, so the guidance batch (1 without guidance, 2
with it) and a one-frame prefill window get graphs of their own; `warm_up_variants` runs each of them before the
daemon reports READY, and a steady stream then never recompiles (tests/model/test_compiled.py counts it).

Compiled paths serve one process. Under context parallelism the blocks run eager (their all-to-all collectives
stay outside any graph).

The compile cache (inductor's FX graph cache and its kernels) lives in `TORCHINDUCTOR_CACHE_DIR`, which
`use_cache_dir` points at `model.compile_cache_dir` before the first compile, so a restart reuses the kernels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .dit import BlockPaths, LongCatVideoDiT

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CUDA_ONLY_MODES = frozenset({"reduce-overhead"})  # CUDA graphs
# Graphs per code object before dynamo gives up and runs eager: 4 paths x (batch 1 | 2) x (one-frame window or
# not) is at most 16; a bound above that turns a surprise into a loud recompile error in the test, not a silent
# fall back to eager.
RECOMPILE_LIMIT = 32


@dataclass(frozen=True)
class CompileOptions:
    """How the DiT's blocks are compiled. Validated on construction."""

    mode: str = "default"  # "default", "reduce-overhead" (CUDA graphs; CUDA only) or "max-autotune"
    cache_dir: Path | None = None  # inductor's cache; None: `default_cache_dir()`
    backend: str = "inductor"  # "eager" or "aot_eager" only to diagnose dynamo (guards, recompiles) quickly

    def __post_init__(self) -> None:
        if self.mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.mode!r}")
        if self.backend not in ("inductor", "aot_eager", "eager"):
            raise ValueError(f"compile backend must be inductor, aot_eager or eager, got {self.backend!r}")


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where compiled kernels are kept when `model.compile_cache_dir` is unset.

    Under systemd (`StateDirectory=`) it is `$STATE_DIRECTORY/compile` (the first directory when several are
    listed), else `$XDG_CACHE_HOME/streamd/compile` or `~/.cache/streamd/compile`.
    """
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "compile"
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "streamd" / "compile"


def use_cache_dir(path: Path) -> Path:
    """Point inductor's caches at `path` (created, mode 0700). Must run before the first compile of the process.

    TORCHINDUCTOR_CACHE_DIR is process-wide by torch's design; streamd compiles one model per process.
    """
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def check_device(options: CompileOptions, device: torch.device) -> None:
    """Refuse a mode the device cannot run (CUDA graphs on a CPU), with the setting's name."""
    if options.mode in CUDA_ONLY_MODES and device.type != "cuda":
        raise ValueError(f"model.compile_mode = {options.mode!r} uses CUDA graphs and needs a CUDA device; "
                         f"the model runs on {device.type} (use compile_mode = 'default')")


def compile_blocks(dit: LongCatVideoDiT, options: CompileOptions | None = None) -> Path:
    """Compile every block's paths (lazily: the graphs are built on first use, i.e. in the warm-up).

    Returns the compile cache directory in use. Eager paths stay available (`dit.set_compiled_paths(None)`).
    """
    options = options or CompileOptions()
    check_device(options, dit.device)
    cache_dir = use_cache_dir(options.cache_dir or default_cache_dir())
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # No duck shaping: by default two sizes that happen to be equal share one symbol, so a window of 96 tokens in
    # a 96-wide model would tie the token count to the (static) width and specialise it. Process-wide, like the
    # cache directory; nothing else in streamd compiles.
    torch.fx.experimental._config.use_duck_shape = False
    mode = None if options.mode == "default" else options.mode

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if options.backend != "inductor":  # modes are inductor's
            return torch.compile(fn, dynamic=True, fullgraph=True, backend=options.backend)
        return torch.compile(fn, dynamic=True, fullgraph=True, mode=mode)

    dit.set_compiled_paths([
        BlockPaths(wrap(b.forward_cached), wrap(b.forward_uncached), wrap(b.forward_prefill), wrap(b.prefill_kv))
        for b in dit.blocks
    ])
    if dit.context_parallel is not None:
        log.warning("compiled blocks serve one process; under context parallelism the blocks run eager")
    return cache_dir
