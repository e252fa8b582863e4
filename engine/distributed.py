"""Process-group setup: one function that reads the environment and returns a frozen description.

Three ways to get several processes, one code path:
  torchrun --nproc-per-node 4 train.py ...     (and multi-node torchrun): RANK/WORLD_SIZE/LOCAL_RANK come from it
  train.py --gpus 4 / --nproc 2                train.py spawns them itself (spawn()), setting the same variables
  train.py                                     one process, no process group
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment already describes this process's place in a group (torchrun, or spawn())."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str, gpus: int, nproc: int) -> str:
    """"cuda" or "cpu" for the --device/--gpus/--nproc flags of train.py and evaluate.py; ValueError with a hint
    when they contradict each other or the machine."""
    resolved = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if resolved == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU")
    if resolved == "cpu" and gpus > 1:
        raise ValueError(f"--gpus {gpus} but no GPU is used; HINT: --nproc {gpus} runs CPU processes")
    if resolved == "cuda" and nproc > 1:
        raise ValueError("--nproc is for CPU processes; HINT: use --gpus N on a GPU machine")
    if resolved == "cuda" and gpus > torch.cuda.device_count():
        raise ValueError(f"--gpus {gpus} but only {torch.cuda.device_count()} GPUs are visible")
    return resolved


def world_size(device: str, gpus: int, nproc: int) -> int:
    """Processes in the group: torchrun's WORLD_SIZE when launched by it, else --gpus on CUDA, --nproc on CPU."""
    if launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"])
    return gpus if device == "cuda" else nproc


def setup(use_cuda: bool) -> Dist:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK (if any) and pick this process's device.

    CUDA: one GPU per process, cuda:LOCAL_RANK, NCCL. CPU: gloo. A single process creates no group.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(
                f"error: local rank {local_rank} but only {torch.cuda.device_count()} visible GPUs; "
                "HINT: --gpus N (or torchrun --nproc-per-node N) with N <= the GPUs on this node"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
        )
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def share_cpu_threads(d: Dist) -> None:
    """On CPU, split this node's cores evenly between its processes (torch would give each all of them)."""
    if d.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_entry(local_rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: tuple) -> None:
    """Run fn(*args) in nprocs fresh local processes that form one group (like torchrun on a single node).

    fn must be a module-level function (it is pickled by name). An exception in any process ends all of them
    and is re-raised here.
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawned_entry, args=(nprocs, _free_port(), fn, args), nprocs=nprocs, join=True)


def _run_job(job: Callable, cfg: object, use_cuda: bool, user_errors: tuple[type[Exception], ...]) -> None:
    d = setup(use_cuda)
    try:
        job(cfg, d)
    except user_errors as e:  # one line naming the file and the fix, not a traceback
        raise SystemExit(f"error: {e}") from None
    finally:
        cleanup()


def launch(job: Callable, cfg: object, world_size: int, use_cuda: bool,
           user_errors: tuple[type[Exception], ...] = ()) -> None:
    """Run job(cfg, Dist) in every process of the group: here (one process, or under torchrun) or in
    world_size processes spawned here. user_errors become a one-line "error: ..." exit instead of a traceback."""
    if world_size == 1 or launched_by_torchrun():
        _run_job(job, cfg, use_cuda, user_errors)
        return
    import torch.multiprocessing as mp

    try:
        spawn(_run_job, world_size, (job, cfg, use_cuda, user_errors))
    except mp.ProcessExitedException as e:  # the failing process printed its error already
        sys.exit(e.exit_code or 1)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (no-op for one process) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: object) -> list:
    """Every rank's obj, in rank order (a one-element list for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy module's buffers (BatchNorm running statistics) from rank src to all ranks, so that every rank
    validates, and rank 0 saves, the same model."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
