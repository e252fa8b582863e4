"""Prepare a raw video dataset for training: short-GOP 360p VP9 WebM (or H.264/HEVC MP4) files plus manifests.

    python prepare_data.py SRC --out DST               # Kinetics, class folders or ActivityNet (auto-detected)
    python prepare_data.py --make-sample RAW [--seed 0]  # write the built-in synthetic raw dataset

Output (relied on by pipeline/ and train.py; docs/design.md#prepared-dataset and #manifest):
    DST/videos/<split>/<label>/<video_id>.webm   VP9 yuv420p, keyframe every --gop frames, CFR, height --height
    DST/{train,val,test}.csv                     video_id,path,label,label_name,split,num_frames,fps,width,height,
                                                 start_frame,end_frame  (num_frames: frames the encoder wrote, one
                                                 packet each; --verify also decodes every output to check)
    DST/classes.csv (index,name)   DST/rejected.csv (source,reason)   DST/prepare_report.json
Re-running is cheap and safe: valid outputs are reused (records in DST/.prepare), interrupted work is redone.
Ctrl-C or SIGTERM stops the workers at once and still writes the manifests, listing the videos finished so far.
One run at a time per DST (a lock in DST/.prepare); a second one exits at once with status 2.
Exit status: 0 when anything usable came out, 1 when nothing did or DST could not be written, 2 for usage errors
or DST in use by another run, 128 + the signal when stopped (130: SIGINT, 143: SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipeline.atomic import NoSpace
from prepare import layouts, run
from prepare.transcode import DEFAULT_CRF, MAX_CRF, EncodeSettings, video_notes

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
    layout: str  # auto | kinetics | folders | activitynet
    codec: str  # vp9 | h264 | hevc
    height: int
    gop: int
    crf: int
    workers: int
    threads: int  # encoder and scaler threads per worker
    cores: int  # usable by this process: each worker's source decoder gets the cores no other worker uses
    timeout_s: int  # per video; 0 = none
    verify: bool  # decode every new output again to check its frame count

    def encode_settings(self) -> EncodeSettings:
        return EncodeSettings(codec=self.codec, height=self.height, gop=self.gop, crf=self.crf, threads=self.threads,
                              decode_threads=max(self.threads, self.cores // self.workers), verify=self.verify)


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
    layout = args.format
    if layout == "auto":
        try:
            layout = layouts.detect_layout(src)
        except (layouts.LayoutError, OSError) as e:
            fail(str(e))
    return PrepareConfig(src=src, out=out, layout=layout, codec=args.codec, height=args.height, gop=args.gop,
                         crf=crf, workers=args.workers, threads=args.threads, cores=usable_cores(),
                         timeout_s=args.timeout,
                         verify=args.verify)


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
    """Run prepare_locked holding DST's lock, with SIGINT and SIGTERM turned into a clean stop."""
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        lock, locked = run.lock_dst(cfg.out)  # before anything in DST is removed or rewritten
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
            return prepare_locked(cfg, stop)
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


def prepare_locked(cfg: PrepareConfig, stop: run.StopSignals) -> int:
    t0 = time.perf_counter()
    settings = cfg.encode_settings()
    try:
        listing = layouts.list_sources(cfg.src, cfg.layout)
    except (layouts.LayoutError, ValueError, KeyError) as e:
        console().print(f"[red]error:[/] {cfg.src}: cannot read it as {cfg.layout}: {e}")
        return 2
    stale = run.remove_partials(cfg.out)
    jobs = run.plan_jobs(listing, settings)
    reused = [o for o in (run.load_reusable(cfg.out, j, settings) for j in jobs) if o is not None]
    done_jobs = {o.job for o in reused}
    todo = [j for j in jobs if j not in done_jobs]
    console().print(f"{cfg.layout}: {len(jobs)} videos, {len(listing.classes)} classes, "
                  f"{len(listing.rejected)} listed but unusable; {len(reused)} already prepared, {len(todo)} to do"
                  + (f"; removed {stale} partial files of an interrupted run" if stale else ""))
    stop.raising = False  # from here a signal stops run_jobs at a safe point, and the outputs are written whole

    from rich import progress as rp

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
               rp.TextColumn("{task.fields[fps]:.0f} frames/s"), rp.TimeElapsedColumn(), rp.TimeRemainingColumn())
    frames = [0]
    t_work = time.perf_counter()
    with rp.Progress(*columns, console=console()) as progress:
        task = progress.add_task("videos", total=len(todo), fps=0.0)

        def on_done(o: run.Outcome) -> None:
            frames[0] += o.info.num_frames if o.info else 0
            progress.update(task, advance=1, fps=frames[0] / max(time.perf_counter() - t_work, 1e-6))

        outcomes = reused + run.run_jobs(todo, cfg.out, settings, cfg.workers, cfg.timeout_s, on_done, stop=stop)

    rows, segment_rejects = run.manifest_rows(outcomes, listing.classes)
    rejected = listing.rejected + [(str(o.job.source.path), o.reason) for o in outcomes if o.info is None]
    rejected += segment_rejects
    per_split = run.write_outputs(cfg.out, listing, rows, rejected)
    report = make_report(cfg, listing, outcomes, rejected, per_split, time.perf_counter() - t0)
    report["interrupted"] = stop.signum is not None  # then the manifests list only the videos done so far
    run.write_json(report, cfg.out / "prepare_report.json")
    print_summary(report)
    if stop.signum:
        console().print(f"interrupted: {len(outcomes)} of {len(jobs)} done; run the same command again to finish",
                      soft_wrap=True)
        return 128 + stop.signum
    if not rows:
        console().print(f"[red]Nothing usable came out.[/] See {cfg.out / 'rejected.csv'} for the reasons.")
        return 1
    return 0


# What a user should know about some outputs (transcode.video_notes), by kind: the summary's wording.
NOTE_KINDS = {
    "upscaled": "upscaled (source lower than --height)",
    "single_frame": "1-frame sources (still images)",
    "small": "too small for the GPU decoder",
    "rotated": "rotated/flipped as the source's display matrix says",
    "retimed": "retimed to a constant rate (VFR, dropped frames)",
    "timestamps_guessed": "frames without usable timestamps (counted)",
    "fps_unknown": "frame rate unknown (30 fps used)",
}


def make_notes(ok: list[run.Outcome], codec: str) -> dict:
    """{kind: {"count": videos, "files": {source: detail}}} for every kind; retimed also totals its frames."""
    out = {kind: {"count": 0, "files": {}} for kind in NOTE_KINDS}
    for o in sorted(ok, key=lambda o: str(o.job.source.path)):
        for kind, text in video_notes(o.info, codec).items():
            out[kind]["files"][str(o.job.source.path)] = text
    for entry in out.values():
        entry["count"] = len(entry["files"])
    out["retimed"] = {"count": out["retimed"]["count"], "frames_duplicated": sum(o.info.duplicated for o in ok),
                      "frames_dropped": sum(o.info.dropped for o in ok), "files": out["retimed"]["files"]}
    return out


def make_report(cfg: PrepareConfig, listing: layouts.Listing, outcomes: list[run.Outcome],
                rejected: list[tuple[str, str]], per_split: dict[str, int], seconds: float) -> dict:
    """The run's numbers (prepare_report.json). videos: listed = prepared + reused + rejected once every job
    has finished (an interrupted run lists more than it finished); rejected counts videos (rejected.csv also has
    a row per empty segment, counted in rejected_by_reason)."""
    ok = [o for o in outcomes if o.info]
    new = [o for o in ok if not o.reused]
    new_frames = sum(o.info.num_frames for o in new)
    return {
        "layout": cfg.layout, "src": str(cfg.src), "dst": str(cfg.out),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "videos": {"listed": len(listing.sources) + len(listing.rejected), "prepared": len(new),
                   "reused": len(ok) - len(new), "rejected": len(listing.rejected) + len(outcomes) - len(ok)},
        "rows": per_split, "classes": len(listing.classes),
        "frames": sum(o.info.num_frames for o in ok), "frames_transcoded": new_frames,
        "bytes_in": sum(o.info.bytes_in for o in ok), "bytes_out": sum(o.info.bytes_out for o in ok),
        "seconds": round(seconds, 2),
        "frames_per_s": round(new_frames / seconds, 1) if seconds > 0 else 0.0,
        "rejected_by_reason": dict(Counter(reason.split(":")[0] for _, reason in rejected).most_common()),
        "notes": make_notes(ok, cfg.codec),
        "decode_errors": sorted(f"{o.job.source.path}: {o.info.decode_errors}" for o in ok if o.info.decode_errors),
    }


def print_summary(r: dict) -> None:
    from rich.table import Table

    table = Table(title=f"prepare_data.py: {r['layout']} -> {r['dst']}", show_header=False)
    v = r["videos"]
    for name, value in [
        ("videos prepared now / reused / rejected", f"{v['prepared']} / {v['reused']} / {v['rejected']}"),
        ("manifest rows per split", ", ".join(f"{k} {n}" for k, n in r["rows"].items()) or "none"),
        ("classes", r["classes"]),
        ("frames in manifests / transcoded now", f"{r['frames']} / {r['frames_transcoded']}"),
        ("size in -> out", f"{r['bytes_in'] / 1e6:.1f} MB -> {r['bytes_out'] / 1e6:.1f} MB"),
        ("time, speed", f"{r['seconds']:.1f} s, {r['frames_per_s']:.0f} frames/s"),
        ("rejected by reason", ", ".join(f"{k} {n}" for k, n in r["rejected_by_reason"].items()) or "none"),
    ]:
        table.add_row(name, str(value))
    for kind, entry in r["notes"].items():
        if entry["count"]:
            extra = (f" ({entry['frames_duplicated']} frames duplicated, {entry['frames_dropped']} dropped)"
                     if kind == "retimed" else "")
            table.add_row(NOTE_KINDS[kind], f"{entry['count']}{extra}")
    console().print(table)
    for kind, entry in r["notes"].items():
        for source, text in list(entry["files"].items())[:3]:
            console().print(f"note: {source}: {text}")
        if entry["count"] > 3:
            console().print(f"note: ... {entry['count'] - 3} more {kind} in prepare_report.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_sample is not None:
        return make_sample(args)
    cfg = make_config(args)
    console().print(cfg)
    return prepare(cfg)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before DST's lock (after it, prepare() turns Ctrl-C into a clean stop)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
