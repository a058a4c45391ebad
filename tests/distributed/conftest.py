"""Helpers for tests over real gloo ranks on the CPU: run a function on N spawned processes, collect rank 0's result."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple[Any, ...],
           backend: str = "gloo") -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn: Callable[..., Any], *args: Any, backend: str = "gloo") -> list[Any]:
    """Run `fn(*args)` on `world` ranks (gloo: one CPU thread each; nccl: GPU k for rank k); every rank's result
    (saved with torch.save, so tensors come back on the devices they were on), in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(world, free_port(), out_dir, fn, args, backend), nprocs=world, join=True,
                           start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), map_location="cpu") for r in range(world)]
