"""Process-group setup: one function that reads the environment and returns a frozen description.

Three ways to get several processes, one code path:
  torchrun --nproc-per-node 4 train.py ...     (and multi-node torchrun): RANK/WORLD_SIZE/LOCAL_RANK come from it
  train.py --gpus 4 / --nproc 2                train.py spawns them itself (spawn()), setting the same variables
  train.py                                     one process, no process group
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.cli import with_flag_hints


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


# ---- launching, and Ctrl-C ----------------------------------------------------------------------------------

INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class Interrupted(Exception):
    """Ctrl-C, carrying the one line that tells the user where the job stands (train.py: how to resume)."""


class ProcessFailed(RuntimeError):
    """A process started by spawn() exited with a non-zero status (it printed its own error), or was killed by a
    signal (exit_code -N: it could say nothing, e.g. the kernel's out-of-memory killer); the others were stopped."""

    def __init__(self, rank: int, exit_code: int) -> None:
        if exit_code < 0:
            name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
            what = f"was killed by signal {name}"
        else:
            what = f"exited with status {exit_code}"
        super().__init__(f"process {rank} {what}")
        self.rank, self.exit_code = rank, exit_code


class _CtrlC:
    """This process's SIGINT handler while a job runs: one line for the user, not one traceback per process.

    Ctrl-C at a terminal signals every process of the job at once (each rank, and the launcher that spawned
    them). Rank 0 alone turns it into KeyboardInterrupt, which the job may turn into Interrupted with its
    message; _run_job prints that line and exits. The other ranks only take note, go on until their next
    collective fails for want of rank 0 (or their launcher stops them), and then exit silently. So rank 0's
    own exception never comes from a peer that left first. A repeated Ctrl-C ends a process that nothing
    watches (one process, or under torchrun) at once; spawn() handles a repeat itself.
    """

    def __init__(self) -> None:
        self.count = 0  # SIGINTs received
        self.active = False
        self._raises = self._exits_on_repeat = False

    @contextlib.contextmanager
    def handling(self, rank: int, supervised: bool) -> Iterator[None]:
        """Be the SIGINT handler inside the block (a no-op when already active). The previous one comes back after
        it (a job run inside a test leaves pytest's in place), unless a Ctrl-C came: then this process is on its
        way out, and a late or repeated Ctrl-C must not print a traceback from its shutdown."""
        if self.active:
            yield
            return
        previous = signal.getsignal(signal.SIGINT)
        self.count, self.active, self._raises, self._exits_on_repeat = 0, True, rank == 0, not supervised
        if previous is not signal.SIG_IGN:  # ignored, as for `cmd &` in a script: leave it so
            signal.signal(signal.SIGINT, self)
        try:
            yield
        finally:
            self.active = False
            if previous is not None and self.count == 0:
                signal.signal(signal.SIGINT, previous)

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1 and self._raises:
            raise KeyboardInterrupt
        if self.count > 1 and self._exits_on_repeat:
            if self._raises:
                os.write(2, b"interrupted again: stopped at once, without cleaning up\n")
            os._exit(INTERRUPTED_EXIT)

    def received(self) -> bool:
        """Whether a Ctrl-C came. Calling this runs a handler still pending (so it may raise KeyboardInterrupt)."""
        return self.count > 0


_ctrl_c = _CtrlC()  # signal handlers belong to the process, and so does this


def interrupted() -> bool:
    """Whether this process got a Ctrl-C. For a job's `except BaseException`: an interrupted C call (torch.save,
    a collective) may fail with another exception, its KeyboardInterrupt still pending; this runs it."""
    try:
        return _ctrl_c.received()
    except KeyboardInterrupt:
        return True


def _run_job(job: Callable, cfg: object, use_cuda: bool, user_errors: tuple[type[Exception], ...]) -> None:
    rank = int(os.environ.get("RANK", 0))
    with _ctrl_c.handling(rank, supervised=False):  # in a process from spawn(), its own handling goes on
        try:
            d = setup(use_cuda)
            job(cfg, d)
        except BaseException as e:
            if interrupted():
                if rank != 0:  # nothing to report or save; exit now, not after tearing down DALI and the group
                    os._exit(INTERRUPTED_EXIT)
                print(e if isinstance(e, Interrupted) else "interrupted", file=sys.stderr, flush=True)
                raise SystemExit(INTERRUPTED_EXIT) from None  # no cleanup(): a peer may be gone mid-collective
            cleanup()
            if isinstance(e, user_errors):  # one line naming the file and the fix, not a traceback
                e = SystemExit(f"error: {with_flag_hints(str(e))}")
            if isinstance(e, SystemExit) and isinstance(e.code, str) and _to_launcher is not None:
                _to_launcher.send(e.code)  # spawn() prints it, once for all the processes that say the same
                raise SystemExit(1) from None
            if isinstance(e, SystemExit):
                raise e from None
            raise
        cleanup()


def launch(job: Callable, cfg: object, world_size: int, use_cuda: bool,
           user_errors: tuple[type[Exception], ...] = ()) -> None:
    """Run job(cfg, Dist) in every process of the group: here (one process, or under torchrun) or in
    world_size processes spawned here. user_errors become a one-line "error: ..." exit instead of a traceback;
    Ctrl-C prints one line (Interrupted's, when the job raises one) and exits with status 130."""
    try:
        if world_size == 1 or launched_by_torchrun():
            _run_job(job, cfg, use_cuda, user_errors)
        else:
            spawn(_run_job, world_size, (job, cfg, use_cuda, user_errors))
    except ProcessFailed as e:  # a process that exited printed its error already; one killed could not
        if e.exit_code < 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code if e.exit_code > 0 else 1)
    except KeyboardInterrupt:  # before _run_job or spawn() took over Ctrl-C
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)


_to_launcher = None  # in a process from spawn(): where its one-line error goes (a Connection), instead of stderr


def _spawned_entry(local_rank: int, world_size: int, port: int, errors, fn: Callable, args: tuple) -> None:
    global _to_launcher
    _to_launcher = errors
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # init_process_group's env:// rendezvous then connects every rank, rank 0 too, to the store that spawn()
        # hosts on that port (torchrun's agent does the same), instead of rank 0 binding the port itself
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    if sys.platform == "linux":  # like torch.multiprocessing: a Ctrl-C for us when the launcher dies
        ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    try:
        with _ctrl_c.handling(local_rank, supervised=True):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C that came while starting: now
            fn(*args)
    except KeyboardInterrupt:  # one that fn did not handle (fn is not _run_job, or it came just before it)
        if local_rank == 0:
            print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT) from None


def spawn(fn: Callable, nprocs: int, args: tuple) -> None:
    """Run fn(*args) in nprocs fresh local processes that form one group (like torchrun on a single node).

    fn must be a module-level function (it is pickled by name). When a process exits with an error, the others
    are stopped, the one-line errors they sent (_run_job) are printed, each different one once (every rank
    usually finds the same bad file), and ProcessFailed is raised here. Ctrl-C (see _CtrlC): rank 0 reports and exits, then the
    others (with nothing to save) get two seconds to notice and are stopped; a second Ctrl-C stops all at once.
    """
    import multiprocessing
    import multiprocessing.connection
    from multiprocessing import resource_tracker

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with CUDA and with DALI's threads
    # The rendezvous store, on a port the OS picks and this process holds until the job ends: a port found free
    # and released for rank 0 to bind later could be taken by another program in between.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    errors = [ctx.Pipe(duplex=False) for _ in range(nprocs)]  # (read end, write end) per process
    procs = [ctx.Process(target=_spawned_entry, args=(r, nprocs, store.port, errors[r][1], fn, args),
                         name=f"rank{r}") for r in range(nprocs)]
    started: list = []
    resource_tracker.ensure_running()  # started later, it would unblock SIGINT in the middle of the next lines
    # The processes inherit a blocked SIGINT, so that a Ctrl-C while they import gives no traceback: it waits
    # until _spawned_entry has installed its handler. Here it arrives after the unblock, inside the try.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        try:
            for p in procs:
                p.start()
                started.append(p)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        for _, write_end in errors:
            write_end.close()  # the processes hold theirs: a read end ends (EOF) when its process does
        running = {p.sentinel: (rank, p) for rank, p in enumerate(procs)}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                rank, p = running.pop(sentinel)
                p.join()
                if p.exitcode != 0:
                    _stop(procs, grace_s=0)
                    _print_sent_errors([read_end for read_end, _ in errors])
                    raise ProcessFailed(rank, p.exitcode)
    except KeyboardInterrupt:
        try:
            for p in started:  # for a Ctrl-C that reached only this process; the ranks ignore a repeat
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
            if started:
                started[0].join()  # rank 0 reports where the job stands, and exits
            _stop(started, grace_s=2)
        except KeyboardInterrupt:
            _stop(started, grace_s=0, kill=True)
            print("interrupted again: stopped every process at once, without cleaning up", file=sys.stderr)
            raise ProcessFailed(0, INTERRUPTED_EXIT) from None
        if not started or started[0].exitcode != INTERRUPTED_EXIT:  # rank 0 did not report
            print("interrupted", file=sys.stderr, flush=True)
        raise ProcessFailed(0, INTERRUPTED_EXIT) from None


def _print_sent_errors(read_ends: list) -> None:
    """Print the lines the processes sent (all have exited), each different one once, in the order of ranks."""
    lines = []
    for conn in read_ends:
        try:
            while conn.poll():
                lines.append(conn.recv())
        except (EOFError, OSError):  # the process is gone; a message cut off by its kill is lost
            pass
    for line in dict.fromkeys(lines):
        print(line, file=sys.stderr, flush=True)


def _stop(procs: list, grace_s: float, kill: bool = False) -> None:
    """Wait up to grace_s for procs to exit by themselves, then SIGTERM (or SIGKILL) the rest; wait for all."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            if kill:
                p.kill()
            else:
                p.terminate()
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()


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


def first_problem(problem: str | None) -> str | None:
    """The problem of the lowest rank that has one, on every rank (None: no rank has one). A collective: every
    rank calls it at the same point with what it found (a checkpoint it cannot use, an unwritable folder, a save
    that failed), so that all stop together with the same line instead of the others waiting in their next
    collective for a rank that left (under torchrun, a node whose processes ended well then waits 300 s in its
    exit barrier for the node that failed)."""
    return next((p for p in all_gather_objects(problem) if p is not None), None)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy module's buffers (BatchNorm running statistics) from rank src to all ranks, so that every rank
    validates, and rank 0 saves, the same model."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src)
