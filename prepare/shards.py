"""Preparation across machines: `prepare_data.py SRC --out DST --shard K/N` prepares shard K of N into a shared DST.

Assignment: a video is in shard sha256(its path relative to SRC) mod N (shard_of), whatever order the files are
listed in and on whichever machine. Every shard lists the whole of SRC (cheap next to transcoding) and runs the
jobs of its videos as an unsharded run does: outputs reused, records written (run.py), so a killed shard is
finished by running it again.

Locks (flock, in DST/.prepare; the file system must support them across the machines: NFS does):
    shards/<N>/<K>.lock   exclusive, per shard: two runs of one shard never race (the second exits at once)
    lock                  DST's lock (run.lock_dst): held shared by every running shard, exclusive by an unsharded
                          run and by a merge; so shards run together, but not with those
The state of a finished (or interrupted) shard is DST/.prepare/shards/<N>/<K>.json: its settings, a digest of the
listing it saw, the outputs it transcoded and its outcomes that have no record (a file gone missing). A shard
deletes its state when it starts and writes it when it ends.

Merging: a shard that ends writes its state, lets go of its shared lock, then tries the exclusive lock without
waiting. Getting it means no other shard is running at that moment, and every shard that ended before has
written its state (each writes it before letting go); if all N states say complete, it merges. Of shards ending
together at least one gets the lock (each lets go before it tries), so the last to finish always merges; one
that finds another shard still running leaves the merge to it. `prepare_data.py --merge DST` merges explicitly.
The merge reads every job's record and writes the manifests, rejected.csv and prepare_report.json through the
same code as an unsharded run (report.write_results): the same rows in the same order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

from prepare import report, run
from prepare.listing import Listing, Source
from prepare.transcode import EncodeSettings

SHARDS = "shards"  # DST/.prepare/shards/<N>/
MERGED = "merged.json"  # DST/.prepare/shards/<N>/merged.json: the digest of the states last merged
# The settings that decide what a shard's outputs are: shards merged together must agree on them.
IDENTITY_KEYS = ("src", "layout", "splits", "annotations", "fps")


class MergeError(Exception):
    """The shards cannot be merged (yet). str(exc) is the one-line message; .waiting: some shard has not ended
    (a normal state while they run), as opposed to shards that disagree."""

    def __init__(self, message: str, waiting: bool = False):
        super().__init__(message)
        self.waiting = waiting


@dataclass(frozen=True)
class Shard:
    index: int  # K, 0 .. count - 1 (Slurm's SLURM_ARRAY_TASK_ID with --array=0-<N-1>, Kubernetes' JOB_COMPLETION_INDEX)
    count: int  # N

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'K/N' -> Shard; ValueError with the one-line message for anything else."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m is None:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/8 (K from 0 to N - 1)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or k >= n:
        raise ValueError(f"--shard {text}: K must be in 0..N-1 and N >= 1 (shards are numbered from 0, as Slurm "
                         "arrays with --array=0-<N-1> and Kubernetes Indexed Jobs number them)")
    return Shard(k, n)


def shard_of(source: Source, src: Path, count: int) -> int:
    """The shard of a source: the first 8 bytes of sha256(its path relative to SRC, '/'-separated) mod count."""
    rel = source.path.relative_to(src).as_posix().encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(rel).digest()[:8], "big") % count


def select(jobs: list[run.Job], src: Path, shard: Shard) -> list[run.Job]:
    """The jobs of shard, in the order given."""
    return [j for j in jobs if shard_of(j.source, src, shard.count) == shard.index]


def listing_digest(listing: Listing, src: Path) -> str:
    """sha256 of what a listing holds (sources with their paths relative to SRC, classes, rejections, notes): shards
    that saw different SRCs (videos added or changed between them) are not merged."""
    sources = [{**asdict(s), "path": s.path.relative_to(src).as_posix()} for s in listing.sources]
    blob = json.dumps([listing.layout, sources, listing.classes, listing.rejected, listing.notes], sort_keys=True,
                      default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()


def identity(config: dict, settings: EncodeSettings) -> dict:
    """What shards merged together must share: SRC, the layout and how it is read, and the encoding."""
    return {**{k: config.get(k) for k in IDENTITY_KEYS}, "settings": settings.identity()}


# ---------------------------------------------------------------- locks


class ShardLocks:
    """A running shard's locks: its own (exclusive) and DST's (shared). Close (or leave the `with`) to let go."""

    def __init__(self, dst: Path, shard: Shard, wait: Callable[[str], None]):
        """Take them, or raise run.Busy with the one-line message: this shard is running already, or an unsharded
        run is. A merge in progress is waited for (wait(message) first): it takes seconds. .locked is False where
        the file system has no locks (the caller warns)."""
        folder = dst / run.RECORDS / SHARDS / str(shard.count)
        folder.mkdir(parents=True, exist_ok=True)
        self.own = open(folder / f"{shard.index}.lock", "a+", encoding="utf-8")
        self.dst_lock: IO[str] | None = None
        self.locked = True
        try:
            fcntl.flock(self.own, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.own.seek(0)
            pid = self.own.read().strip()
            self.own.close()
            raise run.Busy(f"{dst}: shard {shard} is already running on it{f' (pid {pid})' if pid else ''}. HINT: "
                           "wait for it to end, or stop it, then run it again") from None
        except OSError:
            self.locked = False
        self.own.truncate(0)
        self.own.write(f"{os.getpid()}\n")
        self.own.flush()
        self.dst_lock = open(dst / run.RECORDS / run.LOCK, "a+", encoding="utf-8")
        if not self.locked:
            return
        try:
            fcntl.flock(self.dst_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self.dst_lock.seek(0)
            words = self.dst_lock.read().split()
            if len(words) == 1:  # "<pid>": an unsharded run (a merge writes "<pid> merge")
                self.close()
                raise run.Busy(f"{dst}: an unsharded prepare_data.py (pid {words[0]}) is running on it. HINT: wait "
                               "for it to end (or stop it), then run the shards") from None
            wait(f"waiting for the merge{f' (pid {words[0]})' if words else ''} running on {dst} to end")
            fcntl.flock(self.dst_lock, fcntl.LOCK_SH)
        self.dst_lock.truncate(0)  # a pid left by an earlier holder would name the wrong process in run.Busy

    def take_exclusive(self) -> bool:
        """Let go of DST's shared lock, then try it exclusive without waiting (see the module docstring): True when
        this process now holds it alone (no shard is running), False otherwise (then it holds nothing)."""
        if not self.locked:
            return True
        fcntl.flock(self.dst_lock, fcntl.LOCK_UN)  # first: a conversion in place may keep it shared and fail (NFS)
        try:
            fcntl.flock(self.dst_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.dst_lock.truncate(0)
        self.dst_lock.write(f"{os.getpid()} merge\n")
        self.dst_lock.flush()
        return True

    def close(self) -> None:
        for f in (self.dst_lock, self.own):
            if f is not None:
                f.close()

    def __enter__(self) -> ShardLocks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- states


def state_path(dst: Path, shard: Shard) -> Path:
    return dst / run.RECORDS / SHARDS / str(shard.count) / f"{shard.index}.json"


def clear_state(dst: Path, shard: Shard) -> None:
    """At a shard's start: until it ends, it is not complete (a killed run leaves no state claiming it is)."""
    state_path(dst, shard).unlink(missing_ok=True)


def write_state(dst: Path, shard: Shard, config: dict, settings: EncodeSettings, listing: Listing,
                jobs: list[run.Job], outcomes: list[run.Outcome], started: float, complete: bool) -> None:
    """Record how a shard's run ended: its identity, the listing's digest, the outputs it transcoded and the
    outcomes no record keeps (a source gone missing is not recorded: run.work)."""
    recorded = {o.job for o in outcomes if not o.reason.startswith("missing")}
    state = {"shard": str(shard), "identity": identity(config, settings),
             "digest": listing_digest(listing, Path(config["src"])), "config": config, "complete": complete,
             "jobs": len(jobs), "done": len(outcomes),
             "transcoded": sorted(o.job.output for o in outcomes if o.info and not o.reused),
             "unrecorded": {o.job.output: o.reason for o in outcomes if o.job not in recorded},
             "started": started, "ended": time.time()}
    run.write_json(state, state_path(dst, shard))


def read_states(dst: Path, count: int) -> dict[int, dict]:
    """{K: state} of the shards of N = count that have ended (an unreadable state counts as not ended)."""
    states = {}
    for k in range(count):
        try:
            states[k] = json.loads(state_path(dst, Shard(k, count)).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return states


def shard_counts(dst: Path) -> list[int]:
    """The N of every sharding that has run in DST."""
    folder = dst / run.RECORDS / SHARDS
    return sorted(int(d.name) for d in folder.iterdir() if d.is_dir() and d.name.isdigit()) if folder.is_dir() else []


def unfinished(states: dict[int, dict], count: int) -> list[str]:
    """'K/N (interrupted)', 'K/N (not ended)' for each shard of N without a complete state."""
    out = []
    for k in range(count):
        if not states.get(k, {}).get("complete"):
            out.append(f"{k}/{count} ({'interrupted' if k in states else 'not ended'})")
    return out


# ---------------------------------------------------------------- merge


def merge(dst: Path, config: dict, listing: Listing, settings: EncodeSettings, count: int,
          force: bool = False) -> dict | None:
    """Write DST's manifests, rejected.csv and prepare_report.json from the records of the N = count shards, as one
    unsharded run would have. Hold DST's lock exclusively. Returns the report, or None when these very states were
    merged already (unless force); raises MergeError when a shard has not ended, disagrees, or a record is
    missing."""
    states = read_states(dst, count)
    if left := unfinished(states, count):
        raise MergeError(f"shards not finished: {', '.join(left)}", waiting=True)
    mine, digest = identity(config, settings), listing_digest(listing, Path(config["src"]))
    for k, state in sorted(states.items()):
        if state["identity"] != mine:
            differs = "; ".join(f"{key} {state['identity'].get(key)!r} (here: {mine[key]!r})" for key in mine
                                if state["identity"].get(key) != mine[key])
            raise MergeError(f"shard {k}/{count} ran with other settings: {differs}. HINT: run it again with the same "
                             "flags as the others")
        if state["digest"] != digest:
            raise MergeError(f"shard {k}/{count} saw other videos in {config['src']} (added, removed or changed "
                             "since it ran). HINT: run it again")
    states_digest = hashlib.sha256(json.dumps(states, sort_keys=True).encode()).hexdigest()
    merged = dst / run.RECORDS / SHARDS / str(count) / MERGED
    if not force and merged.is_file() and json.loads(merged.read_text(encoding="utf-8")).get("states") == states_digest:
        return None  # two shards ended together and both got the lock in turn
    transcoded = {out for state in states.values() for out in state["transcoded"]}
    unrecorded = {out: why for state in states.values() for out, why in state["unrecorded"].items()}
    outcomes = []
    for job in run.plan_jobs(listing, settings):
        outcome = run.load_reusable(dst, job, settings, retry=False)
        if outcome is None and job.output in unrecorded:
            outcome = run.Outcome(job, None, unrecorded[job.output])
        if outcome is None:
            k = shard_of(job.source, Path(config["src"]), count)
            raise MergeError(f"{job.source.path}: no valid record of its output {dst / job.output} (removed, or the "
                             f"source changed since shard {k}/{count} ran). HINT: run shard {k}/{count} again")
        outcomes.append(replace(outcome, reused=job.output not in transcoded))
    seconds = max(s["ended"] for s in states.values()) - min(s["started"] for s in states.values())
    extra = {"shards": {"count": count, "seconds": [round(states[k]["ended"] - states[k]["started"], 2)
                                                    for k in range(count)]}}
    result = report.write_results(dst, {**config, "shard": None}, listing, outcomes, seconds, extra=extra)
    run.write_json({"states": states_digest, "merged": time.time()}, merged)
    return result
