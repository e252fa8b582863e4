"""Loader throughput: clips/s and frames/s of each backend and device, train and eval mode.

    .venv/bin/python benchmarks/loader_speed.py                       # generated dataset (cached in scratch/)
    .venv/bin/python benchmarks/loader_speed.py --data DST --json out.json

Each configuration runs in its own subprocess (clean peak RSS, no shared threads): build the loader, pull
--warmup batches, then --runs timed chunks of --steps batches from an endless stream of epochs (set_epoch
per epoch, as the trainer does); the median chunk is reported. CPU utilisation = CPU seconds of the process
and its children (decord's DataLoader workers) / wall seconds, so 2.0 = two cores busy. Peak RSS = the
largest sampled sum over the process and its children. frames/s = clips/s x T (frames delivered).
clips/CPU-s = clips/s / CPU utilisation: the cost per clip, steadier than clips/s on a shared machine.
Configurations: dali-cpu (GOP slices), dali-cpu-file (whole file to the decoder), decord-cpu, and with CUDA
also dali-gpu, dali-gpu-file, decord-gpu.
"""

from __future__ import annotations

import argparse
import itertools
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

CONFIGS = {  # name: (backend, device, dali_input)
    "dali-cpu": ("dali", "cpu", "gop"),
    "dali-cpu-file": ("dali", "cpu", "file"),
    "decord-cpu": ("decord", "cpu", "gop"),
    "dali-gpu": ("dali", "gpu", "gop"),
    "dali-gpu-file": ("dali", "gpu", "file"),
    "decord-gpu": ("decord", "gpu", "gop"),
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
    steps: int
    runs: int
    warmup: int
    sample_size: int
    sample_duration: int
    json: str | None


# ---- dataset --------------------------------------------------------------------------------------------------


def generated_dataset(videos: int, seconds: float, height: int, fps: int, gop: int) -> Path:
    """VP9 WebM videos written directly with PyAV (prepare_data.py's encoder settings) + manifests, cached."""
    import numpy as np
    import pandas as pd

    from pipeline.sampling import MODES  # noqa: F401  (fails early if the project is not importable)

    width = (height * 16 // 9) // 2 * 2
    n = int(round(seconds * fps))
    root = ROOT / "scratch" / f"loader_speed_{videos}x{n}_{width}x{height}_g{gop}"
    if (root / "val.csv").is_file():
        return root
    import av

    try:
        from pipeline.prepare.transcode import EncodeSettings, encoder_options

        options = encoder_options(EncodeSettings(gop=gop))
    except ImportError:
        options = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0", "crf": "32",
                   "b:v": "0", "g": str(gop), "keyint_min": str(gop)}
    classes = ["class0", "class1", "class2", "class3"]
    rows = []
    rng = np.random.default_rng(0)
    for i in range(videos):
        split = "val" if i % 4 == 3 else "train"
        label = i % len(classes)
        rel = Path("videos") / split / classes[label] / f"v{i:04d}.webm"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {root / rel} ({n} frames {width}x{height})", flush=True)
        # A smooth random texture panning, plus a moving block: content a VP9 encoder has to work for.
        tex = rng.integers(0, 256, (height // 8 + 2, (width + 2 * n) // 8 + 2, 3), dtype=np.uint8)
        tex = np.repeat(np.repeat(tex, 8, 0), 8, 1)
        with av.open(str(root / rel), "w") as c:
            s = c.add_stream("libvpx-vp9", rate=fps)
            s.width, s.height, s.pix_fmt, s.options = width, height, "yuv420p", options
            for f in range(n):
                img = tex[:height, 2 * f : 2 * f + width].copy()
                y, x = (f * 3) % (height - 60), (f * 5 + 40 * i) % (width - 80)
                img[y : y + 60, x : x + 80] = (255 - 20 * label, 40 * label, 128)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        rows.append([f"v{i:04d}", rel.as_posix(), label, classes[label], split, n, float(fps), width, height, 0, n])
    cols = ["video_id", "path", "label", "label_name", "split", "num_frames", "fps", "width", "height",
            "start_frame", "end_frame"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    for split in ("train", "val"):
        df[df["split"] == split].to_csv(root / f"{split}.csv", index=False)
    pd.DataFrame({"index": range(len(classes)), "name": classes}).to_csv(root / "classes.csv", index=False)
    return root


# ---- measuring one configuration (child process) ---------------------------------------------------------------


def _proc_tree_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of live descendants of pid (from /proc; Linux only)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    cpu, rss, todo = 0.0, 0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            rss += int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            pass
    return cpu, rss


def _self_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    dead = resource.getrusage(resource.RUSAGE_CHILDREN)  # children already reaped (finished epochs' workers)
    live, _ = _proc_tree_stats(os.getpid())
    return own.ru_utime + own.ru_stime + dead.ru_utime + dead.ru_stime + live


def measure(cfg: BenchConfig, name: str, mode: str, data: Path) -> dict:
    from pipeline import build_loader

    backend, device, dali_input = CONFIGS[name]
    split = "train" if mode == "train" else "val"
    t0 = time.perf_counter()
    loader = build_loader(data, split, mode, backend=backend, device=device, batch_size=cfg.batch_size,
                          num_threads=cfg.threads, sample_size=cfg.sample_size, sample_duration=cfg.sample_duration,
                          dali_input=dali_input, progress=False)
    build_s = time.perf_counter() - t0
    peak = [0]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _self_rss() + _proc_tree_stats(os.getpid())[1])
            time.sleep(0.2)

    threading.Thread(target=sample_rss, daemon=True).start()

    def stream():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    sync = _cuda_sync if device == "gpu" else (lambda: None)
    batches = stream()
    for _ in range(cfg.warmup):
        next(batches)
    sync()
    runs = []
    for _ in range(cfg.runs):
        c0, w0, clips = _cpu_seconds(), time.perf_counter(), 0
        for _ in range(cfg.steps):
            clips += len(next(batches).labels)
        sync()  # clips are produced asynchronously on the GPU: wait before reading the clock
        wall = time.perf_counter() - w0
        runs.append({"clips_per_s": clips / wall, "cpu_util": (_cpu_seconds() - c0) / wall})
    done.set()
    med = statistics.median(r["clips_per_s"] for r in runs)
    return {
        "config": name, "mode": mode, "backend": backend, "device": device, "dali_input": dali_input,
        "clips_per_s": med, "frames_per_s": med * cfg.sample_duration,
        "cpu_util": statistics.median(r["cpu_util"] for r in runs),
        "clips_per_cpu_s": statistics.median(r["clips_per_s"] / max(r["cpu_util"], 1e-9) for r in runs),
        "peak_rss_mb": peak[0] / 2**20,
        "build_s": build_s, "runs": [r["clips_per_s"] for r in runs], "videos": len(loader.videos),
        "clips_per_epoch": loader.num_clips,
    }  # fmt: skip


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


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
    g = p.add_argument_group("timing")
    g.add_argument("--steps", type=int, default=6, help="batches per timed run")
    g.add_argument("--runs", type=int, default=3, help="timed runs; the median is reported")
    g.add_argument("--warmup", type=int, default=2, help="batches before timing")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--_child", help=argparse.SUPPRESS)  # internal: CONFIG:MODE:DATA, measured in this process
    a = p.parse_args(argv)
    if a.configs is None:
        names = [n for n in CONFIGS if CONFIGS[n][1] == "cpu" or _has_cuda()]
    else:
        names = [s.strip() for s in a.configs.split(",") if s.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    modes = tuple(m.strip() for m in a.modes.split(","))
    if any(m not in ("train", "val", "eval") for m in modes):
        p.error(f"--modes: train, val or eval, got {a.modes}")
    for k in ("videos", "batch_size", "steps", "runs", "threads"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    cfg = BenchConfig(a.data, a.videos, a.seconds, a.height, a.fps, a.gop, tuple(names), modes, a.batch_size,
                      a.threads, a.steps, a.runs, a.warmup, a.sample_size, a.sample_duration, a.json)
    return cfg, a


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse_args(argv)
    if a._child:
        name, mode, data = a._child.split(":", 2)
        print("RESULT " + json.dumps(measure(cfg, name, mode, Path(data))), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    data = Path(cfg.data) if cfg.data else generated_dataset(cfg.videos, cfg.seconds, cfg.height, cfg.fps, cfg.gop)
    console.print(f"config: {json.dumps(asdict(cfg))}\ndata: {data}")
    import torch

    from pipeline import build_loader

    for split in ("train", "val"):  # index once here, so no child pays for it
        build_loader(data, split, "eval", backend="decord", num_threads=0)
    rows = []
    for mode in cfg.modes:
        for name in cfg.configs:
            argv_child = [sys.executable, __file__, "--_child", f"{name}:{mode}:{data}"] + [
                x for x in (argv if argv is not None else sys.argv[1:])
            ]
            r = subprocess.run(argv_child, capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                console.print(f"[red]{name} {mode} failed:[/red] {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
                continue
            row = json.loads(line[0][7:])
            rows.append(row)
            console.print(f"{name:14s} {mode:5s} {row['clips_per_s']:8.1f} clips/s  runs {row['runs']}")
    table = Table(title=f"loader speed (batch {cfg.batch_size}, {cfg.threads} threads, T={cfg.sample_duration}, "
                        f"S={cfg.sample_size}, median of {cfg.runs} x {cfg.steps} batches)")
    for col in ("config", "mode", "clips/s", "frames/s", "CPU util", "clips/CPU-s", "peak RSS MB", "build s"):
        table.add_column(col, justify="left" if col in ("config", "mode") else "right")
    for r in rows:
        table.add_row(r["config"], r["mode"], f"{r['clips_per_s']:.1f}", f"{r['frames_per_s']:.0f}",
                      f"{r['cpu_util']:.2f}", f"{r['clips_per_cpu_s']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['build_s']:.2f}")
    console.print(table)
    by = {(r["config"], r["mode"]): r["clips_per_s"] for r in rows}
    for mode in cfg.modes:
        if ("dali-cpu", mode) in by and ("decord-cpu", mode) in by:
            console.print(f"DALI CPU / decord CPU, {mode}: {by[('dali-cpu', mode)] / by[('decord-cpu', mode)]:.2f}")
    if cfg.json:
        meta = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
                "data": str(data), "config": asdict(cfg)}
        Path(cfg.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
