"""Loader start-up over a cached packet index at Kinetics scale: time to ready and the memory the index adds.

    .venv/bin/python benchmarks/index_speed.py                          # 10k, 60k, 240k videos x 300 packets
    .venv/bin/python benchmarks/index_speed.py --videos 10000 --runs 3 --json out.json

Dataset (scratch/index_speed/<N>x<P>/, made once and reused): a train manifest of N rows over 400 classes
whose files are hard links to a few copies of one real P-frame VP9 WebM (every row is a real, decodable file
with its own path and stat key), and its packet cache written directly: that file's real index repeated N
times, keyed by each link's (size, mtime). The timed code is the real `build_loader(...)`: manifest, one
stat per file, cache lookup, the backend's bad-row checks and, for dali, the pipeline build. A run that would index any
file fails instead (the cache must have been used).

Each measurement runs in a fresh process: import everything, read /proc/self/status, build, read it again.
RssAnon = private memory, what every DDP rank pays for itself; RssFile = pages of mapped files, which the
processes of a node share (the cache's pages are among them). Peak = the largest RssAnon sampled every 10 ms
during the build. Configs: "manifest" = load_manifest alone (the part of start-up that is not the index),
"decord", "dali" and "pyav" (device cpu) = build_loader. index MB = decord's private MB - manifest's. plan s = the
first len(loader) (the epoch plan, pipeline/sampling.py), reported apart: build_loader does not compute it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ("manifest", "decord", "dali", "pyav")
LINKS_PER_FILE = 50_000  # ext4 allows 65,000 hard links to one inode


@dataclass(frozen=True)
class BenchConfig:
    videos: tuple[int, ...]
    packets: int
    configs: tuple[str, ...]
    runs: int
    warmup: int
    root: str
    json: str | None


# ---- dataset --------------------------------------------------------------------------------------------------


def write_source(path: Path, frames: int, width: int = 128, height: int = 72, gop: int = 16) -> None:
    """A small real VP9 WebM in prepare_data.py's structure: a gradient with a moving bar, keyframe every `gop`
    frames. Written whole or not at all (make_dataset reuses what it finds)."""
    import numpy as np

    from pipeline.atomic import atomic_write
    from prepare.sample import write_video

    base = np.broadcast_to(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, width, 3))

    def frame(i: int) -> np.ndarray:
        img = base.copy()
        img[:, (3 * i) % width] = (255, 0, 0)
        return img

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        write_video(tmp, (frame(i) for i in range(frames)), 25, "libvpx-vp9", gop=gop)


def make_dataset(root: Path, videos: int, packets: int) -> Path:
    """The N-video dataset and its packet cache (see the module docstring); reused when complete."""
    import numpy as np
    import pandas as pd

    from pipeline.index.build import index_file
    from pipeline.index.cache import read_cache, stat_keys, write_cache
    from pipeline.index.table import PacketTable
    from pipeline.manifest import COLUMNS, load_manifest

    data = root / f"{videos}x{packets}"
    cache = data / ".cache" / "packets-train.idx"
    if read_cache(cache) is not None:  # complete, and of this version (an older cache is written again)
        return data
    classes = [f"class{k:03d}" for k in range(400)]
    sources = [data / "sources" / f"src{k}.webm" for k in range(-(-videos // LINKS_PER_FILE))]
    write_source(sources[0], packets)
    for s in sources[1:]:
        s.write_bytes(sources[0].read_bytes())
    ix = index_file(str(sources[0]))
    assert len(ix) == packets, f"{sources[0]}: {len(ix)} packets, expected {packets}"
    print(f"{data}: linking {videos} files", flush=True)
    rows = []
    for i in range(videos):
        label = i % len(classes)
        rel = f"videos/train/{classes[label]}/v{i:06d}.webm"
        if i < len(classes):
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (data / rel).exists():
            os.link(sources[i // LINKS_PER_FILE], data / rel)
        rows.append((f"v{i:06d}", rel, label, classes[label], "train", packets, ix.fps, ix.width, ix.height,
                     0, packets))
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"index": range(len(classes)), "name": classes}).to_csv(data / "classes.csv", index=False)
    files = list(load_manifest(data, "train", len(classes))["file"])  # the exact strings the loader looks up
    table = PacketTable(
        (ix.codec,), codec=np.zeros(videos, np.uint8), width=np.full(videos, ix.width, np.int32),
        height=np.full(videos, ix.height, np.int32), fps=np.full(videos, ix.fps),
        first=np.arange(videos, dtype=np.int64) * packets, count=np.full(videos, packets, np.int64),
        offsets=np.tile(ix.offsets, videos), sizes=np.tile(ix.sizes, videos),
        keyframes=np.tile(ix.keyframes, videos),
    )  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_cache(cache, [table], files, stat_keys(files))
    return data


# ---- measuring one configuration (child process) ---------------------------------------------------------------


def _status_mb() -> dict[str, float]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}


def measure(config: str, data: Path) -> dict:
    import nvidia.dali  # noqa: F401  (imports are not start-up cost of the index: warm them all first)
    import torch  # noqa: F401

    import pipeline.index.build
    from pipeline import build_loader
    from pipeline.backends.decord import import_decord
    from pipeline.manifest import load_manifest

    import_decord()
    index_files = pipeline.index.build._index_files

    def must_not_index(todo, workers, progress):
        if todo:
            raise RuntimeError(f"the cache was not used: {len(todo)} file(s) to index, first {todo[0]}")
        return index_files(todo, workers, progress)

    pipeline.index.build._index_files = must_not_index
    before = _status_mb()
    peak = [before["RssAnon"]]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _status_mb()["RssAnon"])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if config == "manifest":
        held = load_manifest(data, "train", 400)
        n = len(held)
    else:
        held = build_loader(data, split="train", mode="train", backend=config, device="cpu", batch_size=32,
                            workers=2, progress=False)
        n = len(held.videos)
    ready = time.perf_counter() - t0
    done.set()
    sampler.join()
    after = _status_mb()
    plan_s = None
    if config != "manifest":
        t0 = time.perf_counter()
        len(held)
        plan_s = time.perf_counter() - t0
        held.close()
    return {
        "config": config, "videos": n, "ready_s": ready, "plan_s": plan_s,
        "private_mb": after["RssAnon"] - before["RssAnon"],
        "peak_private_mb": max(peak[0], after["RssAnon"]) - before["RssAnon"],
        "file_mb": after["RssFile"] - before["RssFile"],
    }  # fmt: skip


# ---- orchestration ----------------------------------------------------------------------------------------------


def run_child(config: str, data: Path) -> dict:
    argv = [sys.executable, __file__, "--_child", f"{config}:{data}"]
    r = subprocess.run(argv, capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise RuntimeError(f"{config} on {data} failed: {(r.stderr or r.stdout).strip()[-2000:]}")
    return json.loads(line[0][7:])


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", default="10000,60000,240000", help="comma-separated dataset sizes")
    p.add_argument("--packets", type=int, default=300, help="packets (frames) per video")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--runs", type=int, default=3, help="timed runs per config and size; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per size first (page cache, imports)")
    p.add_argument("--root", default=str(ROOT / "scratch" / "index_speed"), help="where the datasets are made")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--_child", help=argparse.SUPPRESS)  # internal: CONFIG:DATA, measured in this process
    a = p.parse_args(argv)
    configs = tuple(s.strip() for s in a.configs.split(",") if s.strip())
    if any(c not in CONFIGS for c in configs):
        p.error(f"--configs: choose from {','.join(CONFIGS)}, got {a.configs}")
    try:
        videos = tuple(int(v) for v in a.videos.split(","))
    except ValueError:
        p.error(f"--videos: comma-separated integers, got {a.videos}")
    if min(videos) < 1 or a.packets < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--videos, --packets and --runs must be >= 1, --warmup >= 0")
    return BenchConfig(videos, a.packets, configs, a.runs, a.warmup, a.root, a.json), a


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse_args(argv)
    if a._child:
        config, data = a._child.split(":", 1)
        print("RESULT " + json.dumps(measure(config, Path(data))), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    console.print(f"config: {json.dumps(asdict(cfg))}")
    rows = []
    for n in cfg.videos:
        data = make_dataset(Path(cfg.root), n, cfg.packets)
        cache_mb = (data / ".cache" / "packets-train.idx").stat().st_size / 2**20
        for _ in range(cfg.warmup):
            run_child(cfg.configs[-1], data)
        runs = {c: [] for c in cfg.configs}
        for _ in range(cfg.runs):  # interleaved, so that a busy moment on a shared machine hits every config
            for c in cfg.configs:
                runs[c].append(run_child(c, data))
                console.print(f"{n:7d} videos {c:8s} ready {runs[c][-1]['ready_s']:6.2f} s  "
                              f"private {runs[c][-1]['private_mb']:7.1f} MB")
        for c in cfg.configs:
            keys = ("ready_s", "private_mb", "peak_private_mb", "file_mb")
            med = {k: statistics.median(r[k] for r in runs[c]) for k in keys}
            plans = [r["plan_s"] for r in runs[c] if r["plan_s"] is not None]
            rows.append({"videos": n, "packets": cfg.packets, "config": c, "cache_mb": cache_mb, **med,
                         "plan_s": statistics.median(plans) if plans else None,
                         "runs_ready_s": [r["ready_s"] for r in runs[c]]})
    table = Table(title=f"loader start-up over a cached packet index ({cfg.packets} packets a video, "
                        f"median of {cfg.runs} runs, each in a fresh process)")
    for col in ("videos", "config", "ready s", "private MB", "peak private MB", "file-backed MB", "plan s",
                "cache file MB", "index MB"):
        table.add_column(col, justify="left" if col == "config" else "right")
    by = {(r["videos"], r["config"]): r for r in rows}
    for r in rows:
        m = by.get((r["videos"], "manifest"))
        index_mb = r["private_mb"] - m["private_mb"] if m is not None and r["config"] == "decord" else None
        r["index_mb"] = index_mb
        table.add_row(f"{r['videos']:,}", r["config"], f"{r['ready_s']:.2f}", f"{r['private_mb']:.0f}",
                      f"{r['peak_private_mb']:.0f}", f"{r['file_mb']:.0f}",
                      "-" if r["plan_s"] is None else f"{r['plan_s']:.2f}", f"{r['cache_mb']:.0f}",
                      "-" if index_mb is None else f"{index_mb:.0f}")
    console.print(table)
    if cfg.json:
        meta = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "config": asdict(cfg)}
        Path(cfg.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
