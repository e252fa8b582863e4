"""Run a preparation: reuse valid outputs, transcode the rest in worker processes, write manifests and report.

Resuming: after a video is renamed into place, its worker writes a record DST/.prepare/<output path>.json
(source size/mtime/mode, encode settings, the VideoInfo). An output is reused when its record matches the
source and settings and the file on disk has the recorded size; anything else (no record, a killed run that
renamed the video but not the record, changed settings) is redone. Rejections are recorded the same way, so a
re-run over unchanged input does no decoding at all (except retrying timeouts, crashes and unexpected errors).
Manifests are written only at the end, from records.

Stopping: one run at a time per DST (lock_dst). Workers ignore Ctrl-C and die with the main process; on SIGINT or
SIGTERM the main process (StopSignals) cancels the jobs not started, kills the running ones (their temp files are
removed by the next run) and run_jobs returns the outcomes finished so far, so the caller can still write
manifests of exactly those.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import multiprocessing as mp
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pipeline.atomic import NoSpace, atomic_write, no_space_error
from pipeline.manifest import COLUMNS
from pipeline.pools import kill_pool
from pipeline.video import Rejected
from prepare.listing import Listing, Source, safe_name
from prepare.transcode import EncodeSettings, VideoInfo, transcode

if TYPE_CHECKING:
    import pandas as pd

RECORDS = ".prepare"
RETRIED = {"timeout", "crashed", "error"}  # rejections tried again on the next run (others are remembered)
LOCK = "lock"  # DST/.prepare/lock: held (flock) by the main process of the run writing DST
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MAX_FRUITLESS_POOLS = 3  # pools in a row whose workers all die before starting a job: then give up (WorkersFailed)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Job:
    """One source video -> one output file (relative to DST)."""

    source: Source
    output: str  # e.g. videos/train/abseiling/abc_000010_000020.webm


@dataclass(frozen=True)
class Outcome:
    job: Job
    info: VideoInfo | None  # None: rejected
    reason: str = ""
    reused: bool = False
    seconds: float = 0.0


class Busy(Exception):
    """Another run holds DST's lock. str(exc) is the one-line message for the user."""


class WorkersFailed(Exception):
    """Worker processes keep dying before they start any job. str(exc) is the one-line message for the user."""


class _JobTimeout(Exception):
    """--timeout ran out (SIGALRM in a worker). Not TimeoutError: that is an OSError, and transcode reads an
    OSError while opening the source as "not a video" or "unreadable", remembered instead of retried."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (see StopSignals)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def lock_dst(dst: Path, role: str = "") -> tuple[IO[str], bool]:
    """Take DST's lock for this process: (the open lock file, False where the file system has no locks).

    Raises Busy at once if another run holds it. The lock lives as long as the file stays open: close it when
    done; a killed process never leaves it held. Workers do not inherit it (Python opens files non-inheritable
    and the spawn context passes only its own pipes), so orphaned workers cannot keep it either. The file then
    says "<pid>" ("<pid> <role>" with a role: shards.py's "merge"). Shards of a --shard run hold it shared
    (shards.py): an unsharded run or a merge cannot start while any shard runs.
    """
    path = dst / RECORDS / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = (f.read().split() or [""])[0]  # "": shards hold it (shared), and none wrote a pid
        f.close()
        raise Busy(f"{dst}: another prepare_data.py{f' (pid {pid})' if pid else ' (or shards of a --shard run)'} "
                   "is running on it. HINT: wait for it to end, or stop it, then run again") from None
    except OSError:  # a file system without locks: go on, the caller warns
        return f, False
    f.truncate(0)
    f.write(f"{os.getpid()}{f' {role}' if role else ''}\n")  # for the message above
    f.flush()
    return f, True


class StopSignals:
    """Context: SIGINT and SIGTERM stop a run cleanly instead of killing it with a traceback.

    The first signal is kept in .signum. While .raising is set it also raises Interrupted at once (for
    stretches with nothing to clean up); otherwise the code polls .signum where stopping is safe (run_jobs does,
    after each result). Later signals are ignored: the first one is already being handled. The previous handlers
    are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raising = True
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.raising:
                raise Interrupted(signum)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def plan_jobs(listing: Listing, settings: EncodeSettings) -> list[Job]:
    """One job per source: videos/<split>/<label>/<video_id><ext>, or videos/<label>/... for a source of several
    splits (Source.split "")."""
    return [Job(s, "/".join(p for p in ("videos", s.split, s.folder) if p) + f"/{safe_name(s.video_id)}"
                f"{settings.extension}") for s in listing.sources]


def _fingerprint(source: Source) -> list | None:
    """What says the source is unchanged: size, mtime and mode; for a frame folder its own (a frame added,
    removed or renamed changes its mtime; one rewritten in place does not) and the rate it is encoded at."""
    try:
        st = source.path.stat()
    except OSError:
        return None
    fingerprint = [st.st_size, st.st_mtime_ns, st.st_mode]
    return fingerprint if source.frame_rate is None else [*fingerprint, source.frame_rate]


def _record_path(dst: Path, job: Job) -> Path:
    return dst / RECORDS / f"{job.output}.json"


def load_reusable(dst: Path, job: Job, settings: EncodeSettings, retry: bool = True) -> Outcome | None:
    """The recorded outcome of job if it is still valid for the current source and settings, else None.

    A record that cannot be read as this code writes it (damaged, hand-edited, or with a VideoInfo field this
    revision does not know) means "redo", like a missing one. retry=False: a rejection that a run would try again
    (RETRIED) is returned too (a merge of shards reports what the shards' runs found).
    """
    try:
        rec = json.loads(_record_path(dst, job).read_text(encoding="utf-8"))
        if rec["source_fingerprint"] != _fingerprint(job.source) or rec["settings"] != settings.identity():
            return None
        if rec["info"] is None:  # a rejection: reuse it unless it may go away on a retry
            reason = str(rec["reason"])
            retried = retry and reason.split(":")[0] in RETRIED
            return None if retried else Outcome(job, None, reason, reused=True)
        info = VideoInfo(**rec["info"])
    except (OSError, ValueError, TypeError, KeyError):  # TypeError: not a dict, or an unknown VideoInfo field
        return None
    out = dst / job.output
    if not out.is_file() or out.stat().st_size != info.bytes_out:
        return None
    return Outcome(job, info, reused=True)


def _write_record(dst: Path, outcome: Outcome, settings: EncodeSettings) -> None:
    path = _record_path(dst, outcome.job)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"source": str(outcome.job.source.path), "source_fingerprint": _fingerprint(outcome.job.source),
           "settings": settings.identity(), "info": asdict(outcome.info) if outcome.info else None,
           "reason": outcome.reason, "seconds": round(outcome.seconds, 3)}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(rec, indent=1, ensure_ascii=False), encoding="utf-8")


def _on_alarm(signum, frame):
    raise _JobTimeout


def _started_marker(dst: Path, job: Job) -> Path:
    path = _record_path(dst, job)
    return path.with_name(f".{path.name}.started")


def work(job: Job, dst: Path, settings: EncodeSettings, timeout_s: int) -> Outcome:
    """Transcode one job (in a worker process) and record the result. Never raises for bad input."""
    t0 = time.perf_counter()
    marker = _started_marker(dst, job)  # tells the parent which jobs were running if the pool breaks
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout_s)  # PyAV returns to Python between packets, so the alarm interrupts a stuck decode
    try:
        try:
            info, reason = transcode(job.source.path, dst / job.output, settings, job.source.frame_rate), ""
        finally:
            signal.alarm(0)  # before the handlers below: an alarm inside one of them would escape them all
    except Rejected as e:
        info, reason = None, str(e)
    except NoSpace:
        marker.unlink(missing_ok=True)
        raise  # not this video's fault: the run stops (run_jobs), and the next run does it again
    except _JobTimeout:
        info, reason = None, f"timeout: not done after {timeout_s} s (raise --timeout for very long videos)"
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; the reason names the error
        if (full := no_space_error(e)) is not None:  # a full disk is not the file's fault either
            marker.unlink(missing_ok=True)
            raise NoSpace.at(dst / job.output, full) from None
        info, reason = None, f"error: {type(e).__name__}: {e}"
    outcome = Outcome(job, info, reason, seconds=time.perf_counter() - t0)
    if not reason.startswith("missing"):  # a missing file may appear later: do not remember that
        _write_record(dst, outcome, settings)
    marker.unlink(missing_ok=True)
    return outcome


def _init_worker(parent_pid: int) -> None:
    """Pool initializer: leave Ctrl-C to the parent, and exit when the parent dies (even by kill -9).

    SIGINT reaches the whole foreground process group; the parent decides what to do (run_jobs). The workers
    were started with SIGINT blocked (_sigint_blocked), so none arrived before this point. SIGTERM keeps its
    default: the pool itself stops workers with it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        # Killed when the thread that started this process ends: the parent's main thread (the pool spawns
        # workers in submit()), so in effect when the parent process ends.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="exit-with-parent", daemon=True).start()


def _exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Fallback for PR_SET_PDEATHSIG (other systems, or the parent died before it was set): poll the parent."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread; processes started meanwhile inherit the block (as the resource tracker of
    multiprocessing does it), so a Ctrl-C during their start-up cannot raise KeyboardInterrupt in them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def remove_partials(dst: Path, jobs: list[Job] | None = None) -> int:
    """Delete temp files and markers left by a killed run (never referenced by a manifest). Returns how many.

    Temp files (pipeline.atomic: ".<name>.partial-...") of videos and records, and of the manifests and report
    in DST itself; ".started" markers of the jobs running when the run was killed. jobs: only those of these
    jobs' videos and records (a shard's: other shards may be writing theirs), and the manifests' (no shard
    writes those while another runs: a merge excludes them, shards.py).
    """
    stale = [p for p in dst.glob(".*.partial-*") if p.is_file()]
    mine = None if jobs is None else {p for j in jobs for p in (dst / j.output, _record_path(dst, j))}
    for folder in (dst / "videos", dst / RECORDS):
        if folder.is_dir():
            stale += [p for p in folder.rglob(".*") if (".partial-" in p.name or p.name.endswith(".started"))
                      and (mine is None or _partial_of(p) in mine)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _partial_of(p: Path) -> Path:
    """The file a temp file (".<name>.partial-...") or a started marker (".<name>.started") stands for."""
    name = p.name[1:].split(".partial-")[0].removesuffix(".started")
    return p.with_name(name)


def run_jobs(jobs: list[Job], dst: Path, settings: EncodeSettings, workers: int, timeout_s: int,
             on_done: Callable[[Outcome], None] | None = None, worker=work,
             stop: StopSignals | None = None) -> list[Outcome]:
    """Run jobs over `workers` processes; on_done(outcome) after each.

    A worker that dies (a segfault in a decoder, the OOM killer) breaks the whole pool. The jobs that had
    started then are retried one per fresh process, so only the culprit is rejected ("crashed"); the jobs
    that had not started go to a new pool. worker: the per-job function (tests swap it).
    stop: once its signal has arrived, kill the workers and return early with the outcomes of the jobs finished
    (those whose result or record was complete); the caller checks stop.signum.
    Raises WorkersFailed when MAX_FRUITLESS_POOLS pools in a row break before any job starts (it would retry
    forever otherwise).
    """
    outcomes: list[Outcome] = []
    todo = list(jobs)
    fruitless = 0  # pools in a row that broke before any job started
    try:
        while todo:
            left = _run_pool(todo, dst, settings, workers, timeout_s, outcomes, on_done, worker, stop)
            started = [j for j in left if _started_marker(dst, j).exists()]
            fruitless = fruitless + 1 if left and not started and len(left) == len(todo) else 0
            if fruitless == MAX_FRUITLESS_POOLS:
                raise WorkersFailed(f"the worker processes died {fruitless} times in a row before starting any "
                                    "job (out of memory? a broken install?). HINT: try --workers 1 and see the "
                                    "messages above")
            todo = [j for j in left if j not in started]
            for job in started:
                _started_marker(dst, job).unlink(missing_ok=True)
                if _run_pool([job], dst, settings, 1, timeout_s, outcomes, on_done, worker, stop):
                    _started_marker(dst, job).unlink(missing_ok=True)
                    outcome = Outcome(job, None, "crashed: decoding this file killed the worker process")
                    _write_record(dst, outcome, settings)
                    outcomes.append(outcome)
                    if on_done:
                        on_done(outcome)
    except Interrupted:
        pass  # _run_pool stopped its workers; outcomes has every job finished
    return outcomes


def _run_pool(jobs, dst, settings, workers, timeout_s, outcomes, on_done, worker, stop) -> list[Job]:
    """Run jobs in one pool; return the jobs left unfinished because the pool broke.

    At most 2 jobs per worker are submitted at a time: enough to keep the workers busy, and few futures to
    wait on and to cancel (one wait() on 100k futures takes ~0.8 s: all at once would be quadratic).
    """
    if stop is not None and stop.signum:
        raise Interrupted(stop.signum)
    queue = iter(jobs)
    pending: dict[Future, Job] = {}
    left: list[Job] = []

    def submit(n: int) -> None:
        for job in islice(queue, n):
            try:
                pending[pool.submit(worker, job, dst, settings, timeout_s)] = job
            except BrokenProcessPool:
                left.append(job)

    # spawn: workers start clean (no copy of the parent's progress-bar thread or open files, the lock included).
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    try:
        with _sigint_blocked():  # the workers are started by the first submits
            submit(2 * workers)
        while pending:
            done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for fut in done:  # results already here count, even when a signal came meanwhile
                job = pending.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    left.append(job)
                    continue
                outcomes.append(outcome)
                if on_done:
                    on_done(outcome)
            if stop is not None and stop.signum:
                raise Interrupted(stop.signum)
            if not left:
                submit(len(done))
    except BaseException as e:
        kill_pool(pool)
        if isinstance(e, Interrupted):
            # A killed job may have written its record just before (its result never came): count it, as the
            # next run will. The others left only temp files, which the next run removes.
            have = {o.job for o in outcomes}
            unfinished = [*pending.values(), *left]  # left: their worker died (SIGTERM to the process group)
            outcomes += [replace(o, reused=False) for o in (load_reusable(dst, j, settings) for j in unfinished)
                         if o is not None and o.job not in have]
        raise
    pool.shutdown()
    return left + list(queue)


def manifest_rows(outcomes: list[Outcome], classes: list[str]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Manifest rows of the prepared videos (one per segment for untrimmed ones) and the rejected segments."""
    index = {name: i for i, name in enumerate(classes)}
    rows, rejected = [], []
    for o in outcomes:
        if o.info is None:
            continue
        s, info = o.job.source, o.info
        base = {"path": o.job.output, "split": s.split, "num_frames": info.num_frames, "fps": info.fps,
                "width": info.width, "height": info.height}
        if s.segments is None:
            start, end = s.frame_range or (0, info.num_frames)
            start, end = min(max(start, 0), info.num_frames), min(end, info.num_frames)
            if end <= start:
                rejected.append((str(s.path), f"empty segment: frames [{start}, {end}) of {info.num_frames}"))
                continue
            rows += [{"video_id": s.video_id, "label": index.get(s.label_name, -1), "label_name": s.label_name,
                      "start_frame": start, "end_frame": end, **base, "split": split} for split in s.lists]
            continue
        for k, seg in enumerate(s.segments):
            start = min(max(round(seg.start_s * info.fps), 0), info.num_frames)
            end = min(max(round(seg.end_s * info.fps), 0), info.num_frames)
            if end <= start:
                rejected.append((f"{s.path}#segment{k}", f"empty segment: [{seg.start_s}, {seg.end_s}] s gives "
                                 f"frames [{start}, {end}) of {info.num_frames} at {info.fps} fps"))
                continue
            rows.append({"video_id": f"{s.video_id}_{k}", "label": index[seg.label_name],
                         "label_name": seg.label_name, "start_frame": start, "end_frame": end, **base})
    return rows, rejected


def write_outputs(dst: Path, listing: Listing, rows: list[dict], rejected: list[tuple[str, str]]) -> dict[str, int]:
    """Write <split>.csv for each manifest (sorted by video_id), classes.csv and rejected.csv; return rows per
    manifest."""
    import pandas as pd  # here, not at the top: the worker processes import this module and never need it

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    counts = {}
    for split in sorted({name for s in listing.sources for name in s.lists}):
        part = df[df["split"] == split].sort_values("video_id", kind="stable")
        _write_csv(part, dst / f"{split}.csv")
        counts[split] = len(part)
    _write_csv(pd.DataFrame({"index": range(len(listing.classes)), "name": listing.classes}), dst / "classes.csv")
    _write_csv(pd.DataFrame(sorted(rejected), columns=["source", "reason"]), dst / "rejected.csv")
    return counts


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)


def interrupted_preparation(dst: Path) -> str | None:
    """One line for train.py and evaluate.py when dst comes from a prepare_data.py run that was stopped before it
    finished (its prepare_report.json says so): its manifests list only the videos done by then. None otherwise."""
    try:
        report = json.loads((dst / "prepare_report.json").read_text(encoding="utf-8"))
        if not report.get("interrupted"):
            return None
        c, v = report["config"], report["videos"]
        done = v["prepared"] + v["reused"]
        command = shlex.join(["python", "prepare_data.py", c["src"], "--out", c["out"], "--format", c["layout"],
                              "--codec", c["codec"], "--height", str(c["height"]), "--gop", str(c["gop"]),
                              "--crf", str(c["crf"]), *layout_flags(c)])
    except (OSError, ValueError, KeyError, TypeError):  # no report (prepared by hand, older): nothing to say
        return None
    return (f"{dst} comes from a prepare_data.py run that was interrupted: its manifests list the {done} videos "
            f"prepared by then, of {v['listed']} listed; HINT: finish it with `{command}` (it reuses the videos "
            "done)")


def layout_flags(config: dict) -> list[str]:
    """The flags of prepare_data.py that say how the layout was read (--split, --annotations, --fps), from a
    report's config: a command repeating the run needs them."""
    flags = []
    if config.get("layout") in ("ucf101", "hmdb51"):
        flags += ["--split", ",".join(map(str, config["splits"]))]
    if config.get("layout") == "jpg-frames":
        flags += [x for a in config.get("annotations", []) for x in ("--annotations", a)]
        flags += ["--fps", f"{config['fps']:g}"] if config.get("fps") else []
    return flags


def write_json(obj: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
