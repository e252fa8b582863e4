"""Process groups: setup() reads this process's place from the environment and returns a frozen description;
launch() runs a job in every process of the group.

One code path serves one process, one node and many nodes:
  train.py                              one process, no group, no launcher
  train.py --gpus 4 / --nproc 2         launch() starts the processes through torch's elastic engine
                                        (elastic_launch, what torchrun runs), and restarts the group up to
                                        --max-restarts times when a process dies (also for one process)
  torchrun ... train.py ...             one or several nodes: torchrun set RANK/WORLD_SIZE/LOCAL_RANK, the job
                                        runs here
An error is one line (under launch(), every process that has one leaves it to the launcher, which prints each
different line once, the first failing process's first; under torchrun each process prints its own), Ctrl-C is
one line and exit status 130, and killing the launcher (even with kill -9) leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from engine.cli import with_flag_hints


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # How many times launch() restarted this group before this start (--max-restarts): 0 for its first start, and
    # always 0 outside launch() (one process, torchrun). launch() checked the command before the first start, so a
    # restarted group continues the work of that launch (train.py: from last.pt, --resume or not).
    restart: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment already describes this process's place in a group: torchrun (or launch()) started
    it."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size(device: str, gpus: int, nproc: int) -> int:
    """Processes in the group: torchrun's WORLD_SIZE when launched by it, else --gpus on CUDA, --nproc on CPU."""
    if launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"])
    return gpus if device == "cuda" else nproc


_in_launch = False  # True in a process that launch() started (set by _worker)


def setup(use_cuda: bool) -> Dist:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK (if any) and pick this process's device.

    CUDA: one GPU per process, cuda:LOCAL_RANK, NCCL. CPU: gloo. A single process creates no group.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) if _in_launch else 0
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
    if rank == 0 and not _in_launch and (why := _torchrun_restarts_cannot_join()):
        print(f"warning: {why}", file=sys.stderr, flush=True)
    if world_size > 1:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
            store=_attempt_store(restart) if _in_launch else None,  # None: env://, as torchrun's processes use
        )
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device, restart=restart)


def _attempt_store(restart: int) -> dist.Store:
    """The rendezvous store for this start of the group: the launcher's (its elastic agent hosts it on MASTER_PORT
    for the whole launch, so no other program can take the port), under a prefix of its own per start.

    Why the prefix: the agent keeps the same store across restarts, and init_process_group's keys carry no
    attempt number, so a restarted group would read the addresses of the processes that died (measured with
    torch 2.13 and gloo: "connectFullMesh failed ... Connection refused", or a hang; pytorch issue 135712). One
    agent numbers the starts of all its processes alike, so TORCHELASTIC_RESTART_COUNT names one start for all.
    """
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(minutes=30))  # init_process_group's default for gloo
    return dist.PrefixStore(f"start{restart}/", store)


def _torchrun_restarts_cannot_join() -> str | None:
    """Why a group that torchrun restarts would not come together again, or None. torchrun's agent hands its
    processes its own rendezvous store (TORCHELASTIC_USE_AGENT_STORE) and keeps it across restarts, where
    init_process_group finds the previous start's keys (_attempt_store); measured with torch 2.13's agent: its
    static rendezvous (torchrun --master-addr/--master-port) fails the restart, c10d with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store per start, hosted by rank 0) restarts."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0 and \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("torchrun --max-restarts: a restarted group would look for the processes that died in torchrun's "
                "rendezvous store (torch 2.13, pytorch issue 135712); HINT: run torchrun with --rdzv-backend c10d "
                "and the environment variable TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    return None


def share_cpu_threads(d: Dist) -> None:
    """On CPU, split this node's cores evenly between its processes (torch would give each all of them)."""
    if d.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- Ctrl-C ------------------------------------------------------------------------------------------------------

INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class Interrupted(Exception):
    """Ctrl-C, carrying the one line that tells the user where the job stands (train.py: how to resume)."""


class _CtrlC:
    """This process's SIGINT handler while a job runs: one line for the user, not one traceback per process.

    Ctrl-C at a terminal signals every process of the job at once (each rank, and the launcher). Rank 0 alone
    turns it into KeyboardInterrupt, which the job may turn into Interrupted with its message; _run_job prints that
    line and exits. The other ranks only take note, go on until their next collective fails for want of rank 0
    (or their launcher stops them), and then exit silently. So rank 0's own exception never comes from a peer
    that left first. A repeated Ctrl-C ends a process that nothing watches (one process, or under torchrun) at
    once; under launch() the launcher handles a repeat (and itself forwards the first Ctrl-C, which the ranks
    that got the terminal's take as a repeat).
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


# ---- running a job -----------------------------------------------------------------------------------------------

# Under launch(), how long a process whose job failed with an exception (not a one-line error) waits before it
# reports: when a peer died first (killed, out of memory), this process's collective failed because of it, and
# the launcher, which watches every 0.1 s, stops this one meanwhile and reports the peer: the cause, not the
# "Connection closed by peer" that follows from it.
PEER_FAILURE_GRACE_S = 3.0


def _run_job(job: Callable, cfg: object, use_cuda: bool, user_errors: tuple[type[Exception], ...],
             supervised: bool) -> None:
    """job(cfg, Dist) in this process, with Ctrl-C and errors turned into one line.

    Not supervised (one process, torchrun): the line goes to stderr (SystemExit). Supervised (a process launch()
    started): the line is left for the launcher (_leave_word), which prints each different one once, and so is
    the traceback of an unexpected exception; Ctrl-C's line is printed here (by rank 0) and marked as said.
    """
    rank = int(os.environ.get("RANK", 0))
    with _ctrl_c.handling(rank, supervised):
        if supervised:  # the launcher started this process with SIGINT blocked: a Ctrl-C during start-up comes now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            d = setup(use_cuda)
            job(cfg, d)
        except BaseException as e:
            if interrupted():
                if rank != 0:  # nothing to report or save; exit now, not after tearing down DALI and the group
                    os._exit(INTERRUPTED_EXIT)
                line = str(e) if isinstance(e, Interrupted) else "interrupted"
                print(line, file=sys.stderr, flush=True)
                if supervised:
                    _leave_word("interrupted", line)
                raise SystemExit(INTERRUPTED_EXIT) from None  # no cleanup(): a peer may be gone mid-collective
            if isinstance(e, user_errors):  # one line naming the file and the fix, not a traceback
                e = SystemExit(f"error: {with_flag_hints(str(e))}")
            if isinstance(e, SystemExit):
                if supervised and isinstance(e.code, str):
                    _leave_word("error", e.code)  # before cleanup(): the launcher may stop this process any time now
                    e = SystemExit(1)
                cleanup()
                raise e from None
            if not supervised:
                cleanup()
                raise
            if int(os.environ.get("WORLD_SIZE", 1)) > 1:
                time.sleep(PEER_FAILURE_GRACE_S)
            _leave_word("crash", f"process {rank}: {traceback.format_exc()}".rstrip())
            raise SystemExit(1) from None
        cleanup()


def _leave_word(kind: str, message: str) -> None:
    """Leave this process's last word where the launcher reads it: the file torch's elastic agent names in
    TORCHELASTIC_ERROR_FILE (its own error-file form: "message" and "timestamp"; "kind" is ours: "error" for a
    one-line error, "interrupted" for Ctrl-C's line, already printed, "crash" for a traceback). Written whole (a
    temp file renamed): the agent parses it as soon as this process is gone, even if it was killed mid-write."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps({"message": message, "timestamp": int(time.time()), "kind": kind}))
        os.replace(tmp, path)


def _worker(job: Callable, cfg: object, use_cuda: bool, user_errors: tuple[type[Exception], ...]) -> None:
    """The function every process launch() starts runs (the elastic agent calls it with RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/MASTER_PORT, TORCHELASTIC_RESTART_COUNT and TORCHELASTIC_ERROR_FILE set)."""
    global _in_launch
    _in_launch = True
    _run_job(job, cfg, use_cuda, user_errors, supervised=True)


def launch(job: Callable, cfg: object, world_size: int, use_cuda: bool,
           user_errors: tuple[type[Exception], ...] = (), max_restarts: int = 0) -> None:
    """Run job(cfg, Dist) in every process of the group: here (one process without restarts, or under torchrun), or
    in world_size processes started here by torch's elastic agent, which starts the whole group again, up to
    max_restarts times, when one of them fails (a job then sees Dist.restart > 0).

    job must be a module-level function and cfg picklable (they go to the processes by pickle). user_errors become
    a one-line "error: ..." exit instead of a traceback; Ctrl-C prints one line (Interrupted's, when the job raises
    one) and exits with status 130. Exits (SystemExit) with the first failing process's status when the group
    fails for good."""
    try:
        if launched_by_torchrun() or (world_size == 1 and max_restarts == 0):
            _run_job(job, cfg, use_cuda, user_errors, supervised=False)
        else:
            _launch_group(job, cfg, world_size, use_cuda, user_errors, max_restarts)
    except KeyboardInterrupt:  # before _run_job or the agent took over Ctrl-C
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_EXIT)


# ---- the launcher: torch's elastic agent, in this process ----------------------------------------------------------

# After a Ctrl-C the agent forwards SIGINT and waits this long for the processes to exit before it kills them:
# rank 0 reports and exits in about a second; another rank exits at its next collective (gloo fails at once when
# rank 0 is gone, NCCL may wait for its watchdog).
SHUTDOWN_S = 10


class _Stopped(Exception):
    """The group stopped on purpose (a one-line error, Ctrl-C): restarting it would only do the same again."""

    def __init__(self, status: int) -> None:
        super().__init__(f"stopped with status {status}")
        self.status = status


def _launch_group(job: Callable, cfg: object, nproc: int, use_cuda: bool,
                  user_errors: tuple[type[Exception], ...], max_restarts: int) -> None:
    """launch() with processes: one node's worth, started and watched by torch's elastic agent in this process (a
    c10d rendezvous on a port the OS picks, held from before the processes start until the launch ends)."""
    with tempfile.TemporaryDirectory(prefix="launch-") as folder:
        words = _LastWords(Path(folder), max_restarts)
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"launch-{uuid.uuid4().hex}",
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                              max_restarts=max_restarts, monitor_interval=0.1, start_method="spawn",
                              logs_specs=words, shutdown_timeout=SHUTDOWN_S)
        try:
            with _agent_here(words.note_failure):
                elastic_launch(config, _worker)(job, cfg, use_cuda, user_errors)
        except ChildFailedError as e:  # no restart left
            rank, failure = e.get_first_failure()
            sys.exit(words.report(rank, failure.exitcode))
        except _Stopped as e:
            sys.exit(e.status)
        except SignalException as e:  # Ctrl-C, or a signal sent to the launcher alone: the agent stopped the group
            if e.sigval == signal.SIGINT:
                if not words.said_interrupted():
                    print("interrupted", file=sys.stderr, flush=True)
                sys.exit(INTERRUPTED_EXIT)
            print(f"stopped by {e.sigval.name}", file=sys.stderr, flush=True)
            sys.exit(128 + e.sigval)


def _signal_death(rank: int, exit_code: int) -> str:
    """'process 1 was killed by signal SIGKILL' or 'process 1 exited with status 3'."""
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        return f"process {rank} was killed by signal {name}"
    return f"process {rank} exited with status {exit_code}"


class _LastWords(LogsSpecs):
    """Where each process of the group leaves its last word (_leave_word): one file per process and start, named to
    the agent as the process's error file; stdout and stderr stay the terminal's.

    The agent asks for these files (reify) before every start of the group. Before a restart this reads what the
    previous start's processes left: a one-line error or Ctrl-C ends the launch there (_Stopped: the same would
    happen again), a crash is printed and the group starts again with one warning line saying why.
    """

    def __init__(self, folder: Path, max_restarts: int) -> None:
        super().__init__(log_dir=str(folder))
        self.folder, self.max_restarts = folder, max_restarts
        self.start = 0  # the group's current start (0: the first)
        self.files: dict[int, Path] = {}  # the current start's, by local rank (= global rank: one node)
        self.failures: dict[int, tuple[int, int]] = {}  # start: (rank, exit code) of its first failing process

    @property
    def root_log_dir(self) -> str:
        return str(self.folder)

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        start = int(envs[0]["TORCHELASTIC_RESTART_COUNT"])
        if start > self.start:
            self._before_restart(start)
        self.start = start
        folder = self.folder / f"start{start}"
        folder.mkdir(exist_ok=True)  # the same start again: only when nodes join, which one node's group cannot
        self.files = {rank: folder / f"{rank}.json" for rank in envs}
        for path in self.files.values():
            path.unlink(missing_ok=True)
        for rank, env in envs.items():
            env["TORCHELASTIC_ERROR_FILE"] = str(self.files[rank])
        console = dict.fromkeys(envs, "")  # "": the terminal
        return LogsDest(stdouts=console, stderrs=dict(console), tee_stdouts={}, tee_stderrs={},
                        error_files={rank: str(path) for rank, path in self.files.items()})

    def note_failure(self, rank: int, exit_code: int) -> None:
        self.failures.setdefault(self.start, (rank, exit_code))

    def words(self) -> dict[int, tuple[str, str]]:
        """The current start's last words: {rank: (kind, message)}, in rank order."""
        out = {}
        for rank, path in sorted(self.files.items()):
            try:
                word = json.loads(path.read_text())
                out[rank] = (word["kind"], word["message"])
            except (OSError, ValueError, KeyError):  # none: the process ended well, was stopped or was killed
                pass
        return out

    def said_interrupted(self) -> bool:
        return any(kind == "interrupted" for kind, _ in self.words().values())

    def _print(self, first: int | None, death: str | None) -> dict[int, tuple[str, str]]:
        """Print what the current start's processes left, each different message once, first's first (death: the
        line for first when it left none); returns the words."""
        words = self.words()
        order = ([first] if first is not None else []) + [r for r in words if r != first]
        lines = []
        for rank in order:
            kind, message = words.get(rank, ("", ""))
            if kind in ("error", "crash"):
                lines.append(message)
            elif rank == first and death is not None and not kind:
                lines.append(death)
        for line in dict.fromkeys(lines):
            print(line, file=sys.stderr, flush=True)
        return words

    def _before_restart(self, start: int) -> None:
        first, code = self.failures.get(self.start, (None, 1))
        kinds = {kind for kind, _ in self._print(first, None).values()}
        if kinds & {"error", "interrupted"}:
            raise _Stopped(INTERRUPTED_EXIT if "interrupted" in kinds else 1)
        why = _signal_death(first, code) if first is not None else "a process of the group failed"
        print(f"warning: {why}; restarting the group (restart {start} of {self.max_restarts})", file=sys.stderr,
              flush=True)

    def report(self, first: int, exit_code: int) -> int:
        """Print why the group failed for good; the exit status for the launcher: the first failing process's (130
        for Ctrl-C's, 1 for one killed by a signal)."""
        words = self._print(first, f"error: {_signal_death(first, exit_code)}")
        if words.get(first, ("",))[0] == "interrupted":
            return INTERRUPTED_EXIT
        return exit_code if exit_code > 0 else 1


class _FailureLog(logging.Handler):
    """Takes the agent's log records. The one that says which process failed, and how (its exception, a
    torch.multiprocessing.ProcessExitedException with error_index and exit_code), is the only place the agent
    tells it before it restarts the group: it goes to on_failure. The others are the agent's narration, not for
    the user."""

    def __init__(self, on_failure: Callable[[int, int], None]) -> None:
        super().__init__()
        self.on_failure = on_failure

    def emit(self, record: logging.LogRecord) -> None:
        e = record.exc_info[1] if record.exc_info else None
        if isinstance(e, ProcessExitedException):
            self.on_failure(e.error_index, e.exit_code)
        elif isinstance(e, ProcessRaisedException):
            self.on_failure(e.error_index, 1)


@contextlib.contextmanager
def _agent_here(on_failure: Callable[[int, int], None]) -> Iterator[None]:
    """Run the elastic agent in this process and leave the process as it was after.

    - Its processes start with SIGINT blocked (the mask is inherited from the thread that starts a process, here
      the main thread): a Ctrl-C while they import torch and DALI waits until _run_job handles it, instead of a
      traceback from the middle of an import. This process still takes it: a thread started before the block
      receives it, and Python runs the handler (the agent's, which stops the group) in the main thread as always.
    - Its log goes to _FailureLog, not the terminal; so does torch.multiprocessing's ("Terminating process ...").
    - The signal handlers it installs (SIGTERM, SIGINT, SIGHUP, SIGQUIT) and the variable it sets go after it.
    """
    from multiprocessing import resource_tracker

    loggers = [logging.getLogger("torch.distributed.elastic"), logging.getLogger("torch.multiprocessing")]
    saved_loggers = [(log, log.propagate, list(log.handlers)) for log in loggers]
    catching = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    saved_handlers = {s: signal.getsignal(s) for s in catching}
    saved_env = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    # multiprocessing's resource tracker, started now: started later (by the first process), it would unblock SIGINT
    # in this thread. It frees the agent's semaphores when this process is killed (kill -9) and cannot; it need not
    # warn the user about that (-W for its interpreter, which copies this one's warning options).
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions.pop()
    done = threading.Event()
    taker = threading.Thread(target=done.wait, name="sigint-taker", daemon=True)
    taker.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for log in loggers:
            log.propagate = False
            log.handlers = [_FailureLog(on_failure)]
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        done.set()
        for log, propagate, handlers in saved_loggers:
            log.propagate, log.handlers = propagate, handlers
        for s, handler in saved_handlers.items():
            if handler is not None:
                signal.signal(s, handler)
        if saved_env is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = saved_env


# ---- collectives -------------------------------------------------------------------------------------------------

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
