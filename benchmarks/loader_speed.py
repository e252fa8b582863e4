"""Loader throughput: clips/s and frames/s of each backend and device, train and eval mode; peak memory.

    .venv/bin/python benchmarks/loader_speed.py                       # generated dataset (cached in scratch/)
    .venv/bin/python benchmarks/loader_speed.py --data DST --json out.json

Each configuration runs in its own subprocess (clean peak memory, no shared threads): build the loader, run
--warmup-epochs untimed epochs, then --runs timed runs; the table gives the median run and the min-max.

Timing rule (why prefetch buffers cannot inflate a rate). A timed run is a whole number of epochs, run back to
back until at least --min-seconds have passed. The clock is read (after synchronising the GPU) before
set_epoch() and iter(loader) of the run's first epoch, and again (after synchronising) once the last batch of
its last epoch has arrived; rate = clips delivered / that wall time. So every window pays everything a
training epoch pays: DataLoader worker start-up, DALI's prefetch fill, each epoch restart it crosses and the
drain at each epoch's end. Both loaders start producing an epoch only when it is iterated (the DALI feed and
the decord workers get the epoch's batch plans in __iter__), so no batch of a window is made before the window
opens. The decord workers are started once, in the first (warm-up) epoch, and kept (persistent_workers), as in
training. A loader that did prefetch across epochs could only move its buffer (decord: workers x
prefetch_factor batches, DALI: prefetch_queue_depth) from one back-to-back window into the next, never add
clips, and the printed window (seconds, epochs and clips per run) shows how small that buffer is next to a
run. The old rule (6 batches after 2 warm-up batches, inside an endless stream) timed buffer draining: on a
16-core host decord "ran" at 2532 and 4226 clips/s in two windows and 19.9 in the one that crossed an epoch
restart.

CPU util = CPU seconds of the process and its children (decord's DataLoader workers) / wall seconds, so
2.0 = two cores busy; clips/CPU-s = clips/s / CPU util, the cost per clip, steadier on a shared machine.
1st batch s = median time from iter(loader) to the first batch of a timed epoch (worker start-up, prefetch).

Memory, over the configuration's whole life (build, warm-up, runs):
  peak PSS MB: largest sampled sum (every 0.25 s) of the proportional set size of this process and its live
    descendants (/proc/PID/smaps_rollup). A page shared by k processes counts 1/k in each, so the sum is the
    memory the tree really holds. Use this one.
  RSS-sum MB: the same sum of RSS (the only column before). Every page a forked DataLoader worker shares with
    its parent counts once per process, so with W workers it overstates by up to W x the parent's resident
    size.
  worker MB: getrusage(RUSAGE_CHILDREN).ru_maxrss, the peak RSS of the largest reaped child (exact, not
    sampled); 0 for DALI (threads, no worker processes).
  Neither sum includes decord batches that a worker has finished into shared memory and the consumer has not
    mapped yet: at most in-flight x batch MB (columns of the JSON rows; pipeline/backends/decord.py).
Configurations: dali-cpu (GOP slices), dali-cpu-file (whole file to the decoder), decord-cpu, and with CUDA
also dali-gpu, dali-gpu-file, decord-gpu, nvdec-gpu (pipeline/backends/nvdec.py). frames/s (JSON) = clips/s x T.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import cuda_sync, has_cuda, panning_frames, panning_texture  # noqa: E402

CONFIGS = {  # name: (backend, device, dali_input)
    "dali-cpu": ("dali", "cpu", "gop"),
    "dali-cpu-file": ("dali", "cpu", "file"),
    "decord-cpu": ("decord", "cpu", "gop"),
    "dali-gpu": ("dali", "gpu", "gop"),
    "dali-gpu-file": ("dali", "gpu", "file"),
    "decord-gpu": ("decord", "gpu", "gop"),
    "nvdec-gpu": ("nvdec", "gpu", "gop"),
}


@dataclass(frozen=True)
class BenchConfig:
    data: str | None
    videos: int
    seconds: float
    height: int
    fps: int
    gop: int
    configs: tuple[str, ...]
    modes: tuple[str, ...]
    batch_size: int
    threads: int
    runs: int
    min_seconds: float
    warmup_epochs: int
    sample_size: int
    sample_duration: int
    json: str | None


# ---- dataset --------------------------------------------------------------------------------------------------


def generated_dataset(videos: int, seconds: float, height: int, fps: int, gop: int) -> Path:
    """VP9 WebM videos in prepare_data.py's structure and quality (prepare.sample.write_video with gop)
    + manifests, cached."""
    import numpy as np
    import pandas as pd

    from pipeline.manifest import COLUMNS
    from prepare.sample import write_video

    width = (height * 16 // 9) // 2 * 2
    n = int(round(seconds * fps))
    root = ROOT / "scratch" / f"loader_speed_{videos}x{n}_{width}x{height}_g{gop}"
    if (root / "val.csv").is_file():
        return root
    classes = ["class0", "class1", "class2", "class3"]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(videos):
        split = "val" if i % 4 == 3 else "train"
        label = i % len(classes)
        rel = Path("videos") / split / classes[label] / f"v{i:04d}.webm"
        print(f"writing {root / rel} ({n} frames {width}x{height})", flush=True)
        frames = panning_frames(panning_texture(rng, n, width, height), n, width, height, i,
                                (255 - 20 * label, 40 * label, 128))
        write_video(root / rel, frames, fps, "libvpx-vp9", gop=gop)
        rows.append([f"v{i:04d}", rel.as_posix(), label, classes[label], split, n, float(fps), width, height, 0, n])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for split in ("train", "val"):
        df[df["split"] == split].to_csv(root / f"{split}.csv", index=False)
    pd.DataFrame({"index": range(len(classes)), "name": classes}).to_csv(root / "classes.csv", index=False)
    return root


# ---- measuring one configuration (child process) ---------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Live descendants of pid (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of one live process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


def _memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one live process, (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) bytes over pid and its live descendants."""
    per = [_memory_of(p) for p in [pid, *_descendants(pid)]]
    return sum(r for r, _ in per), sum(p for _, p in per)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    dead = resource.getrusage(resource.RUSAGE_CHILDREN)  # children already reaped (finished epochs' workers)
    live = sum(_cpu_of(p) for p in _descendants(os.getpid()))
    return own.ru_utime + own.ru_stime + dead.ru_utime + dead.ru_stime + live


class PeakMemory:
    """Samples tree_memory(own pid) every `every` s on a thread, from start() to stop(); keeps the peaks."""

    def __init__(self, every: float = 0.25):
        self.every, self.rss, self.pss = every, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            rss, pss = tree_memory(os.getpid())
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            if self._done.wait(self.every):
                return

    def start(self) -> PeakMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def timed_runs(loader, runs: int, min_seconds: float, warmup_epochs: int, sync=lambda: None,
               clock=time.perf_counter, cpu_seconds=_cpu_seconds) -> list[dict]:
    """Time `runs` windows of whole epochs by the rule in the module docstring.

    loader: anything with set_epoch(int) and iteration over batches that have .labels. Epochs are numbered
    on from 0 across warm-up and runs (fresh sampling each epoch, as the trainer does). Returns one dict per
    run: clips, epochs, wall_s, clips_per_s, cpu_util, first_batch_s (median over its epochs).
    """
    epoch = 0
    for _ in range(warmup_epochs):
        loader.set_epoch(epoch)
        epoch += 1
        for _ in loader:
            pass
    out = []
    for _ in range(runs):
        sync()  # nothing from before the window may still be running on the GPU
        c0, t0 = cpu_seconds(), clock()
        clips = epochs = 0
        first: list[float] = []
        while epochs == 0 or clock() - t0 < min_seconds:
            loader.set_epoch(epoch)
            epoch += 1
            t_iter = clock()
            for batch in loader:  # iterated inside the window: worker start-up and prefetch fill count
                if len(first) == epochs:
                    first.append(clock() - t_iter)
                clips += len(batch.labels)
            epochs += 1
        sync()  # clips are produced asynchronously on the GPU: wait before reading the clock
        wall = clock() - t0
        out.append({"clips": clips, "epochs": epochs, "wall_s": wall, "clips_per_s": clips / wall,
                    "cpu_util": (cpu_seconds() - c0) / wall, "first_batch_s": statistics.median(first)})
    return out


def spread(values: list[float]) -> dict:
    """median, min and max of the runs' values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def in_flight(backend: str, threads: int, prefetch: int) -> int:
    """Most batches the loader builds or buffers ahead of the consumer."""
    if backend == "decord":
        from pipeline.backends.decord import batches_in_flight

        return batches_in_flight(threads)
    return prefetch  # DALI's prefetch_queue_depth; NVDEC's batches decoded ahead


def _split(mode: str) -> str:
    return "train" if mode == "train" else "val"


def measure(cfg: BenchConfig, name: str, mode: str, data: Path) -> dict:
    from pipeline import build_loader

    backend, device, dali_input = CONFIGS[name]
    split = _split(mode)
    memory = PeakMemory().start()
    t0 = time.perf_counter()
    with build_loader(data, split=split, mode=mode, backend=backend, device=device, batch_size=cfg.batch_size,
                      workers=cfg.threads, sample_size=cfg.sample_size, sample_duration=cfg.sample_duration,
                      dali_input=dali_input, progress=False) as loader:
        build_s = time.perf_counter() - t0
        sync = cuda_sync if device == "gpu" else (lambda: None)
        runs = timed_runs(loader, cfg.runs, cfg.min_seconds, cfg.warmup_epochs, sync)
    memory.stop()
    rate = spread([r["clips_per_s"] for r in runs])
    batch_mb = cfg.batch_size * 3 * cfg.sample_duration * cfg.sample_size**2 * 4 / 2**20  # float32
    return {
        "config": name, "mode": mode, "backend": backend, "device": device, "dali_input": dali_input,
        "clips_per_s": rate["median"], "clips_per_s_min": rate["min"], "clips_per_s_max": rate["max"],
        "frames_per_s": rate["median"] * cfg.sample_duration,
        "cpu_util": statistics.median(r["cpu_util"] for r in runs),
        "clips_per_cpu_s": statistics.median(r["clips_per_s"] / max(r["cpu_util"], 1e-9) for r in runs),
        "window_s": statistics.median(r["wall_s"] for r in runs),
        "epochs_per_run": [r["epochs"] for r in runs], "clips_per_run": [r["clips"] for r in runs],
        "first_batch_s": statistics.median(r["first_batch_s"] for r in runs),
        "peak_pss_mb": memory.pss / 2**20, "peak_rss_sum_mb": memory.rss / 2**20,
        "parent_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # ru_maxrss is in KiB
        "worker_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "in_flight_batches": in_flight(backend, cfg.threads, loader.config.prefetch), "batch_mb": batch_mb,
        "build_s": build_s, "runs": [r["clips_per_s"] for r in runs], "videos": len(loader.videos),
        "clips_per_epoch": loader.num_clips, "load_avg_1m": os.getloadavg()[0],
    }  # fmt: skip


# ---- orchestration ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("dataset")
    g.add_argument("--data", help="a prepare_data.py output folder (default: generate one in scratch/)")
    g.add_argument("--videos", type=int, default=64, help="generated videos (3/4 train, 1/4 val)")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--height", type=int, default=360)
    g.add_argument("--fps", type=int, default=25)
    g.add_argument("--gop", type=int, default=16)
    g = p.add_argument_group("what to measure")
    g.add_argument("--configs", default=None, help=f"comma-separated subset of {','.join(CONFIGS)} "
                   "(default: all cpu ones, plus gpu ones when CUDA is present)")
    g.add_argument("--modes", default="train,eval")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--threads", type=int, default=2, help="DALI threads / decord DataLoader workers")
    g.add_argument("--sample-size", type=int, default=112)
    g.add_argument("--sample-duration", type=int, default=16)
    g = p.add_argument_group("timing (rule: module docstring)")
    g.add_argument("--runs", type=int, default=3, help="timed runs; the median and min-max are reported")
    g.add_argument("--min-seconds", type=float, default=10.0,
                   help="each run is the fewest whole epochs (>= 1) that take at least this long")
    g.add_argument("--warmup-epochs", type=int, default=1, help="untimed whole epochs before the runs")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--_child", help=argparse.SUPPRESS)  # internal: CONFIG:MODE:DATA, measured in this process
    a = p.parse_args(argv)
    if a.configs is None:
        names = [n for n in CONFIGS if CONFIGS[n][1] == "cpu" or has_cuda()]
    else:
        names = [s.strip() for s in a.configs.split(",") if s.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    modes = tuple(m.strip() for m in a.modes.split(","))
    if any(m not in ("train", "val", "eval") for m in modes):
        p.error(f"--modes: train, val or eval, got {a.modes}")
    for k in ("videos", "batch_size", "runs", "threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    if a.min_seconds < 0 or a.warmup_epochs < 0:
        p.error("--min-seconds and --warmup-epochs must be >= 0")
    cfg = BenchConfig(a.data, a.videos, a.seconds, a.height, a.fps, a.gop, tuple(names), modes, a.batch_size,
                      a.threads, a.runs, a.min_seconds, a.warmup_epochs, a.sample_size, a.sample_duration,
                      a.json)
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    """0, or 1 when a configuration failed (its error is in the JSON's "failed" list and printed)."""
    cfg, a = parse_args(argv)
    if a._child:
        name, mode, data = a._child.split(":", 2)
        print("RESULT " + json.dumps(measure(cfg, name, mode, Path(data))), flush=True)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    data = Path(cfg.data) if cfg.data else generated_dataset(cfg.videos, cfg.seconds, cfg.height, cfg.fps, cfg.gop)
    load_start = os.getloadavg()
    console.print(f"config: {json.dumps(asdict(cfg))}\ndata: {data}\nload average (1, 5, 15 min): {load_start}")
    import torch

    from pipeline.base import LoaderBase, LoaderConfig

    for split in sorted({_split(m) for m in cfg.modes}):  # index once here, so no child pays for it
        LoaderBase(LoaderConfig(data=data, split=split, mode="eval")).close()  # (no backend needed)
    rows, failed = [], []

    def save() -> None:  # after every configuration: one that crashes or hangs later loses only itself
        if cfg.json:
            meta = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
                    "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "data": str(data),
                    "config": asdict(cfg)}
            Path(cfg.json).write_text(json.dumps({"meta": meta, "rows": rows, "failed": failed}, indent=2) + "\n")

    for mode in cfg.modes:
        for name in cfg.configs:
            argv_child = [sys.executable, __file__, "--_child", f"{name}:{mode}:{data}"] + [
                x for x in (argv if argv is not None else sys.argv[1:])
            ]
            r = subprocess.run(argv_child, capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                last = ((r.stderr or r.stdout).strip().splitlines() or [f"exit status {r.returncode}"])[-1]
                failed.append({"config": name, "mode": mode, "error": last[:500]})
                console.print(f"[red]{name} {mode} failed:[/red] {last}")
                save()
                continue
            row = json.loads(line[0][7:])
            rows.append(row)
            save()
            console.print(f"{name:14s} {mode:5s} {row['clips_per_s']:8.1f} clips/s  runs "
                          f"{[round(x, 1) for x in row['runs']]}  epochs/run {row['epochs_per_run']}  "
                          f"load {row['load_avg_1m']:.1f}")
    table = Table(title=f"loader speed (batch {cfg.batch_size}, {cfg.threads} threads, T={cfg.sample_duration}, "
                        f"S={cfg.sample_size}; median and min-max of {cfg.runs} runs, each the whole epochs that "
                        f"fill >= {cfg.min_seconds:g} s, after {cfg.warmup_epochs} warm-up epoch(s))")
    cols = ("config", "mode", "clips/s", "min-max", "s/run", "epochs", "clips", "1st batch s", "CPU util",
            "clips/CPU-s", "PSS MB", "RSS-sum MB", "worker MB", "build s")
    for col in cols:
        table.add_column(col, justify="left" if col in ("config", "mode") else "right")
    for r in rows:
        table.add_row(
            r["config"], r["mode"], f"{r['clips_per_s']:.1f}", f"{r['clips_per_s_min']:.1f}-{r['clips_per_s_max']:.1f}",
            f"{r['window_s']:.1f}", "/".join(map(str, r["epochs_per_run"])), "/".join(map(str, r["clips_per_run"])),
            f"{r['first_batch_s']:.2f}", f"{r['cpu_util']:.2f}", f"{r['clips_per_cpu_s']:.1f}", f"{r['peak_pss_mb']:.0f}",
            f"{r['peak_rss_sum_mb']:.0f}", f"{r['worker_maxrss_mb']:.0f}", f"{r['build_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    for r in rows:
        if r["backend"] == "decord":
            console.print(f"{r['config']} {r['mode']}: up to {r['in_flight_batches']} batches x {r['batch_mb']:.0f} MB "
                          "in flight; finished ones waiting in shared memory are in neither memory column")
    console.print(f"load average after (1, 5, 15 min): {os.getloadavg()}")
    by = {(r["config"], r["mode"]): r["clips_per_s"] for r in rows}
    for mode in cfg.modes:
        if ("dali-cpu", mode) in by and ("decord-cpu", mode) in by:
            console.print(f"DALI CPU / decord CPU, {mode}: {by[('dali-cpu', mode)] / by[('decord-cpu', mode)]:.2f}")
    save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
