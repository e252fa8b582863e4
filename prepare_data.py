"""Prepare a raw video dataset for training: short-GOP 360p VP9 WebM (or H.264/HEVC MP4) files plus manifests.

    python prepare_data.py SRC --out DST               # Kinetics, class folders, ActivityNet, UCF101, HMDB51 or
                                                       # 3D-ResNets-PyTorch's JPEG frames (auto-detected)
    python prepare_data.py SRC --out DST --shard K/N   # only shard K of N (0-based), e.g. one per machine; the
                                                       # last shard to end merges the manifests
    python prepare_data.py --merge DST                 # merge the shards' manifests explicitly
    python prepare_data.py --make-sample RAW [--seed 0]  # write the built-in synthetic raw dataset

Output (relied on by pipeline/ and train.py; docs/design.md#prepared-dataset and #manifest):
    DST/videos/<split>/<label>/<video_id>.webm   VP9 yuv420p, keyframe every --gop frames, CFR, height --height
    DST/{train,val,test}.csv                     (ucf101/hmdb51: train1.csv, test1.csv, ... per split)
                                                 video_id,path,label,label_name,split,num_frames,fps,width,height,
                                                 start_frame,end_frame  (num_frames: frames the encoder wrote, one
                                                 packet each; --verify also decodes every output to check)
    DST/classes.csv (index,name)   DST/rejected.csv (source,reason)   DST/prepare_report.json
Re-running is cheap and safe: valid outputs are reused (records in DST/.prepare), interrupted work is redone.
Ctrl-C or SIGTERM stops the workers at once and still writes the manifests, listing the videos finished so far.
One run at a time per DST (a lock in DST/.prepare); a second one exits at once with status 2. Shards of a --shard run
share DST (prepare/shards.py); the same shard twice does not.
Exit status: 0 when anything usable came out, 1 when nothing did or DST could not be written, 2 for usage errors
or DST in use by another run, 128 + the signal when stopped (130: SIGINT, 143: SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipeline.atomic import NoSpace
from prepare import layouts, report, run, shards
from prepare.transcode import DEFAULT_CRF, MAX_CRF, EncodeSettings

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console() -> Console:
    """The terminal, made on first use. rich is imported here, not at the top, because every worker process
    imports this file again (multiprocessing's spawn re-runs the main script as __mp_main__) and needs only
    what transcoding needs: tests/test_prepare.py checks that it loads no rich, pandas or torch."""
    from rich.console import Console

    return Console()


@dataclass(frozen=True)
class PrepareConfig:
    src: Path
    out: Path
    layout: str  # kinetics | folders | activitynet | ucf101 | hmdb51 | jpg-frames (detected unless --format)
    codec: str  # vp9 | h264 | hevc
    height: int
    gop: int
    crf: int
    workers: int
    threads: int  # encoder and scaler threads per worker
    cores: int  # usable by this process: each worker's source decoder gets the cores no other worker uses
    timeout_s: int  # per video; 0 = none
    verify: bool  # decode every new output again to check its frame count
    splits: tuple[int, ...] = (1, 2, 3)  # ucf101, hmdb51: the official splits to write manifests for
    annotations: tuple[Path, ...] = ()  # jpg-frames: the annotation JSONs (none: found next to SRC)
    fps: float | None = None  # jpg-frames: the rate of the frame folders (None: frames.DEFAULT_FPS, reported)
    shard: shards.Shard | None = None  # --shard K/N: prepare only this shard's videos

    def encode_settings(self) -> EncodeSettings:
        return EncodeSettings(codec=self.codec, height=self.height, gop=self.gop, crf=self.crf, threads=self.threads,
                              decode_threads=max(self.threads, self.cores // self.workers), verify=self.verify)

    def as_json(self) -> dict:
        """The fields as JSON values (the report's "config", a shard's state)."""
        out = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return out | {"splits": list(self.splits), "annotations": [str(p) for p in self.annotations],
                      "shard": None if self.shard is None else str(self.shard)}

    @classmethod
    def from_json(cls, d: dict) -> PrepareConfig:
        """as_json's inverse (prepare_data.py --merge rebuilds the shards' run from a state)."""
        paths = {"src": Path(d["src"]), "out": Path(d["out"]), "annotations": tuple(map(Path, d["annotations"]))}
        return cls(**{**d, **paths, "splits": tuple(d["splits"]), "shard": None})

    def listing(self) -> layouts.Listing:
        return layouts.list_sources(self.src, self.layout, self.splits, self.annotations, self.fps)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", type=Path, help="raw dataset folder")
    g = p.add_argument_group("input / output")
    g.add_argument("--out", type=Path, help="output folder (default: <SRC>_prepared next to SRC)")
    g.add_argument("--format", default="auto", choices=("auto", *layouts.LAYOUTS), help="force the input layout")
    g.add_argument("--split", default="1,2,3", metavar="K[,K...]",
                   help="ucf101, hmdb51: the official splits to write manifests for (train<K>.csv, test<K>.csv; "
                   "each video is prepared once)")
    g.add_argument("--annotations", type=Path, nargs="+", action="extend", metavar="JSON", default=[],
                   help="jpg-frames: 3D-ResNets-PyTorch's annotation JSON(s) (default: the one in SRC or next to "
                   "it); several (e.g. ucf101_01.json ucf101_02.json ucf101_03.json): train1/val1.csv, ... each")
    g.add_argument("--fps", type=float, help="jpg-frames: the frame rate of the frame folders (they do not record "
                   "it; default 30, said in the report)")
    g = p.add_argument_group("encoding")
    g.add_argument("--codec", default="vp9", choices=("vp9", "h264", "hevc"),
                   help="vp9 (WebM; decodable by DALI on CPU and GPU), h264 or hevc (MP4; DALI decodes them on GPU "
                   "only; HEVC decodes fastest on NVDEC, but x265 makes preparation ~2x slower than vp9)")
    g.add_argument("--height", type=int, default=360, help="output height in pixels (even); aspect ratio kept")
    g.add_argument("--gop", type=int, default=16, help="keyframe every GOP frames (random clip reads need short)")
    g.add_argument("--crf", type=int, help="constant quality, lower = better and bigger (default: "
                   + ", ".join(f"{codec} {crf}" for codec, crf in DEFAULT_CRF.items()) + ")")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=usable_cores(), help="worker processes (default: all cores)")
    g.add_argument("--threads", type=int, default=1, help="encoder and scaler threads per worker (its source decoder also takes the "
                   "cores no other worker uses)")
    g.add_argument("--timeout", type=int, default=1800, help="seconds per video before it is rejected (0: none)")
    g.add_argument("--verify", action=argparse.BooleanOptionalAction, default=False,
                   help="decode every new output again and check its frame count and size (~10%% slower; the "
                   "count written without it is the encoder's, exact for every --codec)")
    g = p.add_argument_group("several machines (one shared DST)")
    g.add_argument("--shard", metavar="K/N", help="prepare only shard K of N (K from 0), e.g. "
                   "$SLURM_ARRAY_TASK_ID/8; the last shard to end writes the manifests")
    g.add_argument("--merge", type=Path, metavar="DST", help="write DST's manifests from its finished shards, and exit")
    g = p.add_argument_group("built-in sample dataset (docs/design.md#sample-dataset)")
    g.add_argument("--make-sample", type=Path, metavar="RAW_DIR", help="write the synthetic raw dataset and exit")
    g.add_argument("--seed", type=int, default=0, help="sample dataset seed")
    g.add_argument("--sample-train", type=int, default=40, help="sample training videos per class")
    g.add_argument("--sample-val", type=int, default=12, help="sample validation videos per class")
    return p.parse_args(argv)


def fail(msg: str) -> NoReturn:
    """A usage error: the message (with a hint) and exit status 2."""
    console().print(f"[red]error:[/] {msg}")
    sys.exit(2)


def make_config(args: argparse.Namespace) -> PrepareConfig:
    """Check the arguments up front; exit with status 2 and a hint on bad ones."""
    if args.src is None:
        fail("SRC is required (or use --make-sample RAW_DIR). HINT: python prepare_data.py kinetics/ --out data/")
    src = args.src.resolve()
    if not src.is_dir():
        fail(f"{args.src}: not a directory. HINT: pass the raw dataset's root folder")
    out = (args.out or src.parent / f"{src.name}_prepared").resolve()
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: not a directory. HINT: give a folder (it is created if missing)")
    if out == src or src in out.parents:
        fail(f"--out {out} is inside SRC {src}; its videos would be read as input. HINT: put DST elsewhere")
    crf = DEFAULT_CRF[args.codec] if args.crf is None else args.crf
    max_crf = MAX_CRF[args.codec]
    if args.height < 16 or args.height % 2:
        fail(f"--height {args.height}: must be even and >= 16 (yuv420p needs even sizes)")
    if args.gop < 1:
        fail(f"--gop {args.gop}: must be >= 1")
    if not 0 <= crf <= max_crf:
        fail(f"--crf {crf}: must be in [0, {max_crf}] for {args.codec}")
    if args.workers < 1 or args.threads < 1 or args.timeout < 0:
        fail("--workers and --threads must be >= 1, --timeout >= 0")
    try:
        splits = tuple(sorted({int(k) for k in args.split.split(",")}))
    except ValueError:
        splits = ()
    if not splits or min(splits) < 1:
        fail(f"--split {args.split}: expected split numbers from 1, e.g. 1 or 1,2,3")
    try:
        shard = None if args.shard is None else shards.parse_shard(args.shard)
    except ValueError as e:
        fail(str(e))
    if args.fps is not None and not 1 <= args.fps <= 240:
        fail(f"--fps {args.fps:g}: must be in [1, 240]")
    for a in args.annotations:
        if not a.is_file():
            fail(f"--annotations {a}: no such file")
    layout = args.format
    if layout == "auto":
        try:
            layout = layouts.detect_layout(src)
        except (layouts.LayoutError, OSError) as e:
            fail(str(e))
    given = {"--split": args.split != "1,2,3" and layout not in ("ucf101", "hmdb51"),
             "--annotations": bool(args.annotations) and layout != "jpg-frames",
             "--fps": args.fps is not None and layout != "jpg-frames"}
    if unused := [flag for flag, bad in given.items() if bad]:
        fail(f"{' and '.join(unused)} do(es) not apply to the {layout} layout (--split: ucf101 and hmdb51; "
             "--annotations and --fps: jpg-frames)")
    return PrepareConfig(src=src, out=out, layout=layout, codec=args.codec, height=args.height, gop=args.gop,
                         crf=crf, workers=args.workers, threads=args.threads, cores=usable_cores(),
                         timeout_s=args.timeout, verify=args.verify, splits=splits,
                         annotations=tuple(a.resolve() for a in args.annotations), fps=args.fps, shard=shard)


def make_sample(args: argparse.Namespace) -> int:
    from prepare.sample import make_sample_dataset

    if args.seed < 0 or args.sample_train < 0 or args.sample_val < 0 or args.workers < 1:
        fail("--seed, --sample-train and --sample-val must be >= 0, --workers >= 1")
    root = args.make_sample.resolve()
    console().print(f"Writing the synthetic sample dataset to {root} (seed {args.seed}) ...")
    summary = make_sample_dataset(root, seed=args.seed, train_per_class=args.sample_train,
                                  val_per_class=args.sample_val, workers=args.workers)
    n = sum(sum(c.values()) for c in summary["videos"].values())
    console().print(f"{n} videos ({summary['frames']} frames, {summary['bytes'] / 1e6:.1f} MB) in "
                  f"{len(summary['classes'])} classes + {len(summary['broken'])} broken files, "
                  f"{summary['seconds']:.1f} s.\nNext: python prepare_data.py {args.make_sample} --out DST "
                  "--height 128")
    return 0


def prepare(cfg: PrepareConfig) -> int:
    """Run prepare_locked holding DST's lock (a shard: its own and DST's, shared), with SIGINT and SIGTERM turned
    into a clean stop."""
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        if cfg.shard is None:
            lock, locked = run.lock_dst(cfg.out)  # before anything in DST is removed or rewritten
        else:
            lock = shards.ShardLocks(cfg.out, cfg.shard, wait=console().print)
            locked = lock.locked
    except run.Busy as e:
        console().print(f"[red]error:[/] {e}", soft_wrap=True)
        return 2
    except OSError as e:
        console().print(f"[red]error:[/] --out {cfg.out}: cannot write there ({e}). HINT: pick a writable folder",
                        soft_wrap=True)
        return 2
    if not locked:
        console().print(f"[yellow]warning:[/] {cfg.out}: its file system has no locks; never run two "
                      "prepare_data.py on it at once", soft_wrap=True)
    with lock, run.StopSignals() as stop:
        try:
            return prepare_locked(cfg, stop, lock)
        except run.Interrupted as e:  # while listing and checking: nothing started, DST unchanged
            console().print("interrupted before any video was started; run the same command again", soft_wrap=True)
            return 128 + e.signum
        except NoSpace as e:  # DST's disk is full: every video after would fail the same way, so stop
            console().print(f"[red]error:[/] {e}; HINT: free space there (or choose another --out), then run the "
                            "same command again: the videos finished are reused", soft_wrap=True, highlight=False)
            return 1
        except (run.WorkersFailed, OSError) as e:  # OSError: a file made unwritable meanwhile
            console().print(f"[red]error:[/] {e}", soft_wrap=True)
            return 1


def prepare_locked(cfg: PrepareConfig, stop: run.StopSignals, lock) -> int:
    t0, started = time.perf_counter(), time.time()
    settings = cfg.encode_settings()
    try:
        listing = cfg.listing()
    except (layouts.LayoutError, ValueError, KeyError) as e:
        console().print(f"[red]error:[/] {cfg.src}: cannot read it as {cfg.layout}: {e}")
        return 2
    jobs = run.plan_jobs(listing, settings)
    listed = len(jobs)
    if cfg.shard is not None:
        jobs = shards.select(jobs, cfg.src, cfg.shard)
        shards.clear_state(cfg.out, cfg.shard)
    stale = run.remove_partials(cfg.out, None if cfg.shard is None else jobs)
    reused = [o for o in (run.load_reusable(cfg.out, j, settings) for j in jobs) if o is not None]
    done_jobs = {o.job for o in reused}
    todo = [j for j in jobs if j not in done_jobs]
    console().print(f"{cfg.layout}: {listed} videos, {len(listing.classes)} classes, "
                  f"{len(listing.rejected)} listed but unusable; "
                  + (f"shard {cfg.shard}: {len(jobs)} of the videos, " if cfg.shard else "")
                  + f"{len(reused)} already prepared, {len(todo)} to do"
                  + (f"; removed {stale} partial files of an interrupted run" if stale else ""))
    stop.raising = False  # from here a signal stops run_jobs at a safe point, and the outputs are written whole

    from rich import progress as rp

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
               rp.TextColumn("{task.fields[fps]:.0f} frames/s"), rp.TimeElapsedColumn(), rp.TimeRemainingColumn())
    frames = [0]
    t_work = time.perf_counter()
    with rp.Progress(*columns, console=console()) as progress:
        task = progress.add_task("videos" if cfg.shard is None else f"videos of shard {cfg.shard}", total=len(todo),
                                 fps=0.0)

        def on_done(o: run.Outcome) -> None:
            frames[0] += o.info.num_frames if o.info else 0
            progress.update(task, advance=1, fps=frames[0] / max(time.perf_counter() - t_work, 1e-6))

        outcomes = reused + run.run_jobs(todo, cfg.out, settings, cfg.workers, cfg.timeout_s, on_done, stop=stop)

    if cfg.shard is not None:
        return end_shard(cfg, settings, listing, jobs, outcomes, stop, lock, started)
    r = report.write_results(cfg.out, cfg.as_json(), listing, outcomes, time.perf_counter() - t0,
                             interrupted=stop.signum is not None)
    report.print_summary(r, console())
    if stop.signum:
        console().print(f"interrupted: {len(outcomes)} of {len(jobs)} done; run the same command again to finish",
                      soft_wrap=True)
        return 128 + stop.signum
    if not any(r["rows"].values()):
        console().print(f"[red]Nothing usable came out.[/] See {cfg.out / 'rejected.csv'} for the reasons.")
        return 1
    return 0


def end_shard(cfg: PrepareConfig, settings: EncodeSettings, listing: layouts.Listing, jobs: list[run.Job],
              outcomes: list[run.Outcome], stop: run.StopSignals, lock: shards.ShardLocks, started: float) -> int:
    """Record how the shard ended; the last shard to end merges (shards.py)."""
    shards.write_state(cfg.out, cfg.shard, cfg.as_json(), settings, listing, jobs, outcomes, started,
                       complete=stop.signum is None)
    new = sum(bool(o.info) and not o.reused for o in outcomes)
    console().print(f"shard {cfg.shard}: {len(outcomes)} of its {len(jobs)} videos done ({new} prepared now, "
                    f"{sum(o.reused for o in outcomes)} reused, {sum(o.info is None for o in outcomes)} rejected)",
                    soft_wrap=True)
    if stop.signum:
        console().print("interrupted: run the same command again to finish this shard", soft_wrap=True)
        return 128 + stop.signum
    if not lock.take_exclusive():
        console().print("other shards are still running: the last to end writes the manifests (or run "
                        f"`python prepare_data.py --merge {cfg.out}` once they have)", soft_wrap=True)
        return 0
    return merge_shards(cfg, listing, cfg.shard.count)


def merge_shards(cfg: PrepareConfig, listing: layouts.Listing, count: int, force: bool = False) -> int:
    """Merge the N = count shards' results into DST's manifests and report (holding DST's lock exclusively)."""
    try:
        r = shards.merge(cfg.out, cfg.as_json(), listing, cfg.encode_settings(), count, force=force)
    except shards.MergeError as e:
        if e.waiting:
            console().print(f"{e}: the last to end writes the manifests", soft_wrap=True)
            return 0
        console().print(f"[red]error:[/] not merged: {e}", soft_wrap=True, highlight=False)
        return 1
    if r is None:
        console().print("the shards' manifests were written already (by a shard that ended at the same time)")
        return 0
    report.print_summary(r, console())
    console().print(f"merged the {count} shards' results into {cfg.out}", soft_wrap=True)
    if not any(r["rows"].values()):
        console().print(f"[red]Nothing usable came out.[/] See {cfg.out / 'rejected.csv'} for the reasons.")
        return 1
    return 0


def merge_command(dst: Path) -> int:
    """prepare_data.py --merge DST: merge the shards of the sharding whose shards have all ended."""
    dst = dst.resolve()
    counts = shards.shard_counts(dst)
    if not counts:
        fail(f"--merge {dst}: no shards ran there (no {dst / run.RECORDS / shards.SHARDS}). HINT: run "
             "prepare_data.py SRC --out DST --shard K/N for K = 0 .. N-1 first")
    try:
        lock, _ = run.lock_dst(dst, role="merge")
    except run.Busy as e:
        console().print(f"[red]error:[/] {e}", soft_wrap=True)
        return 2
    with lock:
        states = {n: shards.read_states(dst, n) for n in counts}
        ready = [n for n in counts if not shards.unfinished(states[n], n)]
        if not ready:
            left = "; ".join(f"of {n}: {', '.join(shards.unfinished(states[n], n))}" for n in counts)
            console().print(f"[red]error:[/] --merge {dst}: shards not finished ({left}). HINT: run each again "
                            "(the same command with its --shard K/N); the last to end merges", soft_wrap=True)
            return 1
        n = max(ready, key=lambda c: max(s["ended"] for s in states[c].values()))  # the latest sharding to end
        cfg = replace(PrepareConfig.from_json(states[n][0]["config"]), out=dst)
        try:
            listing = cfg.listing()
        except (layouts.LayoutError, ValueError, KeyError, OSError) as e:
            console().print(f"[red]error:[/] {cfg.src}: cannot read it as {cfg.layout}: {e}")
            return 2
        return merge_shards(cfg, listing, n, force=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_sample is not None:
        return make_sample(args)
    if args.merge is not None:
        return merge_command(args.merge)
    cfg = make_config(args)
    console().print(cfg)
    return prepare(cfg)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before DST's lock (after it, prepare() turns Ctrl-C into a clean stop)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
