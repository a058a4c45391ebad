"""One stream's denoising on N ranks in lockstep (context parallelism, see streamd/model/parallel.py).

Rank 0 is the daemon (or `streamd continue`, or the benchmark): edges, scheduler, encode and decode. Ranks
1..N-1 are workers that hold only the DiT, each stream's share of the KV cache (its heads) and each stream's
chunk in progress. The executor on rank 0 tells the workers, over a gloo control channel, what every step needs
before it runs the step itself; then all ranks run the same DiT forward on their tokens:

  begin   {stream, cond latents, noise, text embeddings + mask, sigmas, chunk parameters, cache capacity}
          -> every rank (re)fills its cache share from `cond` (the prefill is itself context-parallel)
  step    {stream, step index}  -> every rank takes that denoising step (the DiT all-gathers the prediction,
          so each rank updates the same latents)
  release {stream}              -> the stream's buffers are freed
  ping    {}                    -> sent when the engine idles, so a worker can tell a quiet daemon from a dead one
  stop    {}                    -> the worker exits 0

Failure is loud and bounded: every collective (control and model) times out after `timeout_s`; a worker that
waits longer for a message than that exits non-zero; rank 0 watches the workers it started and, when one exits or
a collective fails, logs which rank failed and calls `on_failure` (the daemon then exits non-zero; a backstop
ends the process after `grace_s` if a graceful stop hangs).

Weights: replicated on every rank by default; with `shard_weights` every DiT block is sharded over the group with
FSDP2 (model/sharding.py: 1/N of the block weights per rank, a block gathered just before it runs), on rank 0 in
`connect` and on every worker after it joins. `weights` (bf16 | int8 | fp8, model/quant.py) is applied by every
rank's loader before sharding; every rank must be given the same two settings (the launcher passes them on).

Launch: `RankGroup.launch(N, ...)` starts N-1 worker processes on this host (`python -m streamd.engine.ranks`)
and rendezvouses over TCP on loopback; under `torchrun` (several hosts) every process is started by torchrun and
`RankGroup.from_env()` / `worker_main_from_env()` read RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("streamd.ranks")

DEFAULT_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 900.0  # loading a 13.6B checkpoint on every rank before the rendezvous completes


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA ranks, gloo for CPU ranks."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: str | None, local_rank: int) -> torch.device:
    """One GPU per rank: cuda:<local rank> when the model runs on CUDA, else the CPU."""
    kind = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def _threads_per_rank(world: int) -> int:
    return max(1, (os.cpu_count() or 1) // world)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Groups:
    """The process groups of one rank: `model` for the DiT's collectives, `control` (gloo) for messages."""

    model: Any
    control: Any


def _init_method(addr: str, port: int) -> str:
    """torchrun's own store (env://) under torchrun, else a TCP store that rank 0 opens on `addr:port`."""
    return "env://" if under_torchrun() else f"tcp://{addr}:{port}"


def _connect(rank: int, world: int, addr: str, port: int, device: torch.device, timeout_s: float) -> _Groups:
    """Rendezvous (long timeout: ranks load models at their own pace), then groups with the collective timeout."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    dist.init_process_group(backend, init_method=_init_method(addr, port), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S))
    timeout = datetime.timedelta(seconds=timeout_s)
    model = dist.new_group(backend=backend, timeout=timeout)
    control = model if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    return _Groups(model, control)


# ---------------------------------------------------------------------------------------------- rank 0
class RankGroup:
    """Rank 0's side: the workers it started (if any), the control channel, the failure watch."""

    def __init__(self, world: int, addr: str, port: int, device: str | None, timeout_s: float,
                 procs: list[subprocess.Popen[bytes]] | None = None, grace_s: float = 20.0,
                 role: str = "engine", shard_weights: bool = False) -> None:
        self.world = world
        self.shard_weights = shard_weights  # `connect` shards rank 0's DiT blocks (the workers shard their own)
        self.shard_info: Any = None  # model.sharding.ShardInfo once connected with sharded weights
        self.role = role
        self.addr, self.port = addr, port
        self.device = rank_device(device, 0)
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.procs = procs or []
        self.on_failure: Callable[[str], None] | None = None
        self.exit_on_failure = False  # the daemon: end the process after grace_s if on_failure did not
        self.failed: str | None = None
        self.messages = 0
        self._groups: _Groups | None = None
        self._closing = False
        self._last_send = time.monotonic()
        self._lock = threading.Lock()
        self._fail_lock = threading.Lock()
        self._watch: threading.Thread | None = None
        if self.procs:
            self._watch = threading.Thread(target=self._watch_workers, name="streamd-ranks-watch", daemon=True)
            self._watch.start()

    # ------------------------------------------------------------------------------------------ launch
    @classmethod
    def launch(cls, world: int, model: str, device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               distilled: bool | None = None, role: str = "engine",
               extra: dict[str, Any] | None = None, shard_weights: bool = False,
               weights: str = "bf16") -> RankGroup:
        """Start ranks 1..world-1 on this host (they load their DiT while the caller loads its model).

        shard_weights: every rank shards its DiT blocks over the group (rank 0 in `connect`). weights: the format
        the workers quantize their DiT to (model/quant.py); rank 0's own model must be loaded with the same.
        """
        if world < 2:
            raise ValueError("a rank group needs at least two ranks")
        port = _free_port()
        procs = []
        for rank in range(1, world):
            cmd = [sys.executable, "-m", "streamd.engine.ranks", "--rank", str(rank), "--world", str(world),
                   "--addr", "127.0.0.1", "--port", str(port), "--model", str(model), "--timeout", str(timeout_s),
                   "--role", role, "--parent", str(os.getpid())]
            if device:
                cmd += ["--device", device]
            if distilled is not None:
                cmd += ["--distilled", "yes" if distilled else "no"]
            if shard_weights:
                cmd += ["--shard-weights"]
            if weights != "bf16":
                cmd += ["--weights", weights]
            if extra:
                cmd += ["--extra", json.dumps(extra)]
            env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_rank(world))}
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
        log.info("context parallel: started %d worker rank(s), pids %s", world - 1, [p.pid for p in procs])
        return cls(world, "127.0.0.1", port, device, timeout_s, procs, role=role, shard_weights=shard_weights)

    @classmethod
    def from_env(cls, device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 shard_weights: bool = False) -> RankGroup:
        """Rank 0 of a group started by torchrun (the workers are torchrun's, not ours)."""
        world = int(os.environ["WORLD_SIZE"])
        if int(os.environ.get("RANK", "0")) != 0:
            raise RuntimeError("RankGroup.from_env is for rank 0; other ranks run worker_main_from_env")
        return cls(world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), device, timeout_s,
                   shard_weights=shard_weights)

    def connect(self, dit: Any, shard_weights: bool | None = None) -> None:
        """Join the group and make `dit` context-parallel. Blocks until every rank has loaded its model.

        shard_weights (None: the group's setting): shard `dit`'s blocks over the group (FSDP2), as every worker
        of this group does with its own; quantize `dit` before (the loaders' `weights`).
        """
        from ..model.parallel import ContextParallel, check_heads

        check_heads(dit.config.num_heads, self.world)
        group = self.join()
        dit.set_context_parallel(ContextParallel(group))
        if self.shard_weights if shard_weights is None else shard_weights:
            self.shard_info = _shard(dit, group)
        self._last_send = time.monotonic()
        log.info("context parallel: %d ranks connected (%s)", self.world, backend_for(self.device))

    def join(self) -> Any:
        """Join the group (blocks until every rank is there); the process group of the model's collectives."""
        if self.device.type == "cpu":
            torch.set_num_threads(_threads_per_rank(self.world))
        self._groups = _connect(0, self.world, self.addr, self.port, self.device, self.timeout_s)
        return self._groups.model

    # ------------------------------------------------------------------------------------------ messages
    def _send(self, msg: dict[str, Any]) -> None:
        import torch.distributed as dist

        if self._groups is None:
            raise RuntimeError("the rank group is not connected")
        if self.failed is not None:
            raise RuntimeError(f"context parallel group failed: {self.failed}")
        with self._lock:
            dist.broadcast_object_list([msg], src=0, group=self._groups.control)
            self.messages += 1
            self._last_send = time.monotonic()

    def begin(self, stream_id: str, state: Any, capacity_tokens: int) -> None:
        """Tell the workers a chunk starts: everything they need to prefill and to take its steps."""
        cpu = lambda t: None if t is None else t.detach().to("cpu")  # noqa: E731
        self._send({"op": "begin", "stream": stream_id, "cond": cpu(state.cond), "x": cpu(state.x),
                    "text": cpu(state.text), "mask": cpu(state.mask), "sigmas": tuple(state.sigmas),
                    "params": state.params, "capacity": capacity_tokens})

    def step(self, stream_id: str, step: int) -> None:
        self._send({"op": "step", "stream": stream_id, "step": step})

    def release(self, stream_id: str) -> None:
        self._send({"op": "release", "stream": stream_id})

    def heartbeat(self) -> None:
        """Called when the engine idles: a ping when the workers heard nothing for a quarter of the timeout."""
        if self._groups is not None and time.monotonic() - self._last_send > self.timeout_s / 4:
            self._send({"op": "ping"})

    # ------------------------------------------------------------------------------------------ failure
    def _dead(self) -> list[str]:
        return [f"rank {r} (pid {p.pid}) exited with status {p.returncode}"
                for r, p in enumerate(self.procs, start=1) if p.poll() is not None]

    def fail(self, reason: str) -> None:
        """The group is broken: log which rank failed, tell the owner, and bound how long the process lives."""
        with self._fail_lock:
            if self.failed is not None:
                return
            time.sleep(0.5 if self.procs else 0)  # let a dying worker be reaped, so it can be named
            dead = self._dead()
            if dead:
                self.failed = "; ".join(dead)
            elif self.procs:  # all alive: one of them hangs (or rank 0 failed alone)
                self.failed = (f"{reason} (no worker exited: ranks 1..{self.world - 1}, pids "
                               f"{[p.pid for p in self.procs]}, are alive; one hangs or rank 0 failed)")
            else:
                self.failed = reason
        log.error("context parallel: %s", self.failed)
        if self.on_failure is not None:
            self.on_failure(self.failed)
        if self.exit_on_failure:
            def backstop() -> None:
                time.sleep(self.grace_s)
                log.error("context parallel: still running %.0f s after the failure; exiting", self.grace_s)
                os._exit(1)

            threading.Thread(target=backstop, name="streamd-ranks-backstop", daemon=True).start()

    def _watch_workers(self) -> None:
        while not self._closing:
            if any(p.poll() is not None for p in self.procs):
                if not self._closing:
                    self.fail("a worker rank exited")
                return
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------------ stop
    def close(self, timeout_s: float = 10.0, graceful: bool = True) -> None:
        """Stop every rank: `stop` to the workers (when the group still works), then wait, then kill.

        graceful=False: the engine thread may still be inside a step (it did not stop in time), so no message is
        sent (it could interleave with the step's collectives); the workers are stopped by their timeout or killed.
        """
        self._closing = True
        if self._groups is not None and self.failed is None and self.role == "engine" and graceful:
            try:
                self._send({"op": "stop"})
            except Exception as exc:  # a broken group: the workers exit by their own timeout or are killed
                log.warning("context parallel: could not send stop: %s", exc)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("context parallel: worker pid %d did not stop; killing it", p.pid)
                p.kill()
                p.wait()
        if self._groups is not None:
            import torch.distributed as dist

            if self.failed is None:
                try:
                    dist.destroy_process_group()
                except Exception:  # pragma: no cover - best effort at exit
                    pass
            self._groups = None


def _shard(dit: Any, group: Any) -> Any:
    """Shard `dit`'s blocks over `group` and log what this rank keeps."""
    from ..model.sharding import shard_dit

    info = shard_dit(dit, group)
    log.info("context parallel: DiT blocks sharded over %d ranks: %.1f MiB of %.1f MiB block weights held here "
             "(+ %.1f MiB unsharded); each step gathers %.1f MiB", info.world, info.block_bytes_local / 2**20,
             info.block_bytes_full / 2**20, info.other_bytes / 2**20,
             info.block_bytes_local * (info.world - 1) / 2**20)
    return info


# ---------------------------------------------------------------------------------------------- workers
class Worker:
    """A worker rank's state: its DiT and, per stream, its cache share and the chunk in progress."""

    def __init__(self, dit: Any) -> None:
        self.dit = dit
        self.caches: dict[str, Any] = {}
        self.chunks: dict[str, Any] = {}

    def handle(self, msg: dict[str, Any]) -> bool:
        """Apply one message; False when told to stop."""
        from ..model.kvcache import KVCache
        from ..pipeline import DenoiseState, denoise_step

        op = msg["op"]
        if op == "stop":
            return False
        if op == "ping":
            return True
        sid = msg["stream"]
        if op == "release":
            self.caches.pop(sid, None)
            self.chunks.pop(sid, None)
        elif op == "begin":
            dit, dev = self.dit, self.dit.device
            params = msg["params"]
            cache = None
            if params.use_kv_cache:
                cache = self.caches.get(sid)
                if cache is None or cache.capacity_tokens != msg["capacity"]:
                    cache = self.caches[sid] = KVCache(dit.config, msg["capacity"], batch=1, device=dev,
                                                       dtype=dit.dtype, heads=dit.kv_heads)
            state = DenoiseState(msg["x"].to(dev), msg["cond"].to(dev), msg["text"].to(dev), msg["mask"].to(dev),
                                 msg["sigmas"], params, cache)
            if cache is not None:
                dit.prefill(state.cond, cache=cache)
            self.chunks[sid] = state
        elif op == "step":
            state = self.chunks.get(sid)
            if state is None or state.step != msg["step"]:
                raise RuntimeError(f"stream {sid}: step {msg['step']} asked for, this rank is at "
                                   f"{None if state is None else state.step}")
            denoise_step(self.dit, state)
            if state.done:
                del self.chunks[sid]
        else:
            raise RuntimeError(f"unknown message {op!r}")
        return True


def _die_with_parent(parent: int | None) -> None:
    """Linux: SIGKILL this worker when the process that started it dies (no orphaned GPU holders)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def run_worker(rank: int, world: int, addr: str, port: int, model: str, device: str | None, timeout_s: float,
               distilled: bool | None = None, role: str = "engine", extra: dict[str, Any] | None = None,
               parent: int | None = None, shard_weights: bool = False, weights: str = "bf16") -> int:
    """A worker rank: load the DiT, join the group, serve rank 0's messages until `stop`. The exit status.

    weights: quantize the DiT on loading (model/quant.py); shard_weights: shard its blocks over the group once
    joined. Rank 0 must use the same settings (`RankGroup.launch` passes its own to the workers it starts).
    """
    import torch.distributed as dist

    from ..model.bundle import load_dit_only
    from ..model.parallel import ContextParallel

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank {rank}: %(message)s")
    if parent is not None:  # started by rank 0: SIGINT/SIGTERM are rank 0's to handle; it sends `stop`
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _die_with_parent(parent)
    dev = rank_device(device, int(os.environ.get("LOCAL_RANK", rank)))
    if dev.type == "cpu":
        torch.set_num_threads(_threads_per_rank(world))
    if role == "bench":
        from ..bench.denoise import bench_rank

        groups = _connect(rank, world, addr, port, dev, timeout_s)
        bench_rank(extra or {}, groups.model, str(dev))
        dist.destroy_process_group()
        return 0
    dit = load_dit_only(model, device=dev, distilled=distilled, weights=weights)
    groups = _connect(rank, world, addr, port, dev, timeout_s)
    dit.set_context_parallel(ContextParallel(groups.model))
    if shard_weights:
        _shard(dit, groups.model)
    log.info("worker ready on %s (%d of %d ranks)", dev, rank, world)
    worker = Worker(dit)
    try:
        while True:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0, group=groups.control)
            if not worker.handle(box[0]):
                break
    except Exception:
        log.exception("worker failed (rank 0 silent for %.0f s, gone, or a step failed)", timeout_s)
        return 1
    log.info("stopped")
    dist.destroy_process_group()
    return 0


def worker_main_from_env(model: str, device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S,
                         distilled: bool | None = None, shard_weights: bool = False, weights: str = "bf16") -> int:
    """A worker rank started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK)."""
    return run_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                      int(os.environ["MASTER_PORT"]), model, device, timeout_s, distilled,
                      shard_weights=shard_weights, weights=weights)


def start_group(world: int, model: str, device: str | None, timeout_s: float = DEFAULT_TIMEOUT_S,
                distilled: bool | None = None, shard_weights: bool = False, weights: str = "bf16") -> RankGroup:
    """Rank 0's group: the ranks torchrun started (WORLD_SIZE of them), or world-1 workers started here."""
    if under_torchrun():
        if int(os.environ["WORLD_SIZE"]) != world:
            log.warning("context parallel: torchrun started %s ranks, the configuration asks for %d; using %s",
                        os.environ["WORLD_SIZE"], world, os.environ["WORLD_SIZE"])
        return RankGroup.from_env(device, timeout_s, shard_weights=shard_weights)
    return RankGroup.launch(world, model, device, timeout_s, distilled, shard_weights=shard_weights,
                            weights=weights)


def under_torchrun() -> bool:
    """Whether this process was started by torchrun as one rank of several."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamd.engine.ranks", description="a context-parallel worker rank")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--distilled", choices=["yes", "no"])
    p.add_argument("--role", choices=["engine", "bench"], default="engine")
    p.add_argument("--extra", help="JSON settings of the role")
    p.add_argument("--parent", type=int, help="pid of rank 0 (this worker dies with it)")
    p.add_argument("--shard-weights", action="store_true", help="shard the DiT blocks over the group (FSDP2)")
    p.add_argument("--weights", choices=["bf16", "int8", "fp8"], default="bf16",
                   help="DiT block weights: bf16 (the model dtype), int8 or fp8 (torchao)")
    a = p.parse_args(argv)
    distilled = None if a.distilled is None else a.distilled == "yes"
    return run_worker(a.rank, a.world, a.addr, a.port, a.model, a.device, a.timeout, distilled, a.role,
                      json.loads(a.extra) if a.extra else None, a.parent, shard_weights=a.shard_weights,
                      weights=a.weights)


if __name__ == "__main__":
    sys.exit(main())
