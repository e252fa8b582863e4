"""Decode strategies x storage formats in one run: train-mode clips/s, host CPU per clip, NVDEC use, GPU memory.

    .venv/bin/python benchmarks/decode_speed.py                        # what this machine can run
    python benchmarks/decode_speed.py --seconds 6 --json decode.json   # the GPU matrix (benchmarks/gpu_check.sh)

Formats (--formats): CODEC-gGOP for CODEC in vp9, h264, hevc and a keyframe every GOP frames, at --height
(360; 240 as an option). Made once under --root: --source-videos distinct synthetic 640x360 sources (a panning
texture and a moving block, --source-seconds long, 3/4 train, 1/4 val) prepared by prepare_data.py --codec
--gop --height, then hard-linked into --videos train rows (and --videos / 8 val rows) per format.

Strategies (--strategies; default: all that this machine can run):
  dali          the DALI backend as build_loader makes it (VP9: IVF slices from the keyframe before a clip;
                H.264/HEVC: whole files), device gpu; on a machine without GPU, device cpu, VP9 only
  dali-noindex  the same graph with fn.decoders.video(build_index=False) (the slices start at keyframes)
  dali-kK       K DALI loaders (rank k of world K: disjoint shares of each epoch) driven from K threads of one
                process, each with --threads / K threads (separate pipelines and CUDA streams, one context)
  nvdec         the NVDEC backend: a pool of persistent PyNvVideoCodec decoders in threads, display latency
                NATIVE with an end-of-stream packet per clip; nvdec-low: latency LOW, no end of stream
  twin          the NVDEC backend's CPU twin: PyAV decodes the same packet slices, augmentation on the CPU
  host          the NVDEC backend's host work only (benchmarks/common.py host_pass: plan, packet slices, Annex-B,
                decoder submissions), in one thread; its rate is clips per CPU-second (clips_per_cpu_s), not
                clips/s
  augment       (GPU) augment_nv12 alone on a batch of 640x360 NV12 frames: the augmentation's GPU cost
Each row: build the loader, iterate --warmup seconds, then whole batches until --seconds have passed (a new
epoch whenever one ends), synchronising the GPU before reading the clocks. A row that fails (or a format
whose dataset cannot be made) is recorded with its error and the matrix goes on. Rows run in order of value
(row_order), so a time limit cuts the least useful ones: the first format's NVDEC rows, its host cost and the
augmentation, then its DALI rows, then the other formats the same way; a format's dataset is made when its
first row is about to run. --prepare-only makes the datasets (and their packet indexes) and exits
(gpu_check.sh).
clips/s = clips / wall time; host CPU ms/clip = this process's CPU time (all threads) / clips; frames/clip = packets decoded per clip
(keyframe before the clip's first frame to its last; DALI with whole files decodes more). NVDEC % = mean and
max of nvmlDeviceGetDecoderUtilization sampled every 0.2 s (nvidia-ml-py); GPU MB = peak device memory in
use (NVML) and torch's peak allocation. Rows are written to --json as they finish (a crash keeps the rest).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    has_cuda,
    host_pass,
    panning_frames,
    panning_texture,
)

STRATEGIES = ("dali", "dali-noindex", "dali-k4", "nvdec", "nvdec-low", "twin", "host", "augment")
# What prepare_data.py writes by default first, then the other codecs at the same GOP, then GOP 8.
FORMATS = ("vp9-g16", "h264-g16", "hevc-g16", "vp9-g8", "h264-g8", "hevc-g8")
# Strategies by value: the NVDEC path (the loader to measure), its host cost and GPU augmentation, the CPU
# twin, then DALI (today's baseline); dali-kK after dali-noindex, by K.
VALUE_ORDER = ("nvdec", "nvdec-low", "host", "augment", "twin", "dali", "dali-noindex")
EXT = {"vp9": ".webm", "h264": ".mp4", "hevc": ".mp4"}


@dataclass(frozen=True)
class Config:
    root: str
    formats: tuple[str, ...]
    strategies: tuple[str, ...]
    height: int
    source_videos: int
    source_seconds: float
    videos: int
    seconds: float
    warmup: float
    batch_size: int
    threads: int
    sample_size: int
    json: str | None
    prepare_only: bool = False


# ---- data ---------------------------------------------------------------------------------------------------


def write_sources(raw: Path, count: int, seconds: float, width: int = 640, height: int = 360, fps: int = 25) -> None:
    """raw/<split>/<class>/s<i>.mp4: x264 crf 16 sources of a panning texture and a moving block."""
    import av
    import numpy as np

    n = max(1, round(seconds * fps))
    rng = np.random.default_rng(0)
    for i in range(count):
        split = "val" if i % 4 == 3 else "train"
        path = raw / split / f"class{i % 2}" / f"s{i:03d}.mp4"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tex = panning_texture(rng, n, width, height)
        tmp = path.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "16"})
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            for img in panning_frames(tex, n, width, height, i, (255 - 60 * (i % 4), 40 * (i % 5), 128)):
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        tmp.rename(path)


def prepare_format(cfg: Config, fmt: str) -> Path:
    """The dataset of one format: prepared once, replicated into cfg.videos train rows by hard links."""
    import pandas as pd

    codec, gop = fmt.split("-g")
    root = Path(cfg.root)
    data = root / f"{fmt}-{cfg.height}p-{cfg.videos}"
    if (data / "train.csv").is_file():
        return data
    raw = root / f"raw-{cfg.source_videos}x{cfg.source_seconds:g}s"
    write_sources(raw, cfg.source_videos, cfg.source_seconds)
    prepared = root / f"prepared-{fmt}-{cfg.height}p-{cfg.source_videos}x{cfg.source_seconds:g}s"
    cmd = [sys.executable, str(ROOT / "prepare_data.py"), str(raw), "--out", str(prepared), "--codec", codec,
           "--gop", gop, "--height", str(cfg.height)]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if not (prepared / "train.csv").is_file():
        raise RuntimeError(f"prepare_data.py --codec {codec} failed ({r.returncode}): {r.stderr[-2000:]}")
    tmp = data.with_name(data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(prepared / "classes.csv", tmp / "classes.csv")
    for split, rows in (("train", cfg.videos), ("val", max(1, cfg.videos // 8))):
        src = pd.read_csv(prepared / f"{split}.csv")
        out = []
        for k in range(rows):
            row = src.iloc[k % len(src)].copy()
            rel = Path(row["path"])
            new = rel.with_name(f"{rel.stem}_r{k:05d}{rel.suffix}")
            (tmp / new).parent.mkdir(parents=True, exist_ok=True)
            os.link(prepared / rel, tmp / new)
            row["video_id"], row["path"] = f"{row['video_id']}_r{k:05d}", new.as_posix()
            out.append(row)
        pd.DataFrame(out).to_csv(tmp / f"{split}.csv", index=False)
    tmp.rename(data)
    build_index(data)
    return data


def build_index(data: Path) -> None:
    """Index the packets of every train and val row now (cached in data/.cache), so no row's build pays it."""
    from pipeline.base import LoaderBase, LoaderConfig

    for split in ("train", "val"):
        LoaderBase(LoaderConfig(data=data, split=split, mode="eval", progress=False)).close()  # (no backend needed)


# ---- loaders per strategy -------------------------------------------------------------------------------------


def dali_loader(data: Path, cfg: Config, device: str, build_index: bool = True, rank: int = 0, world: int = 1,
                threads: int | None = None):
    """The DALI backend's loader; build_index=False builds the same graph with decoders.video(build_index=False)."""
    from pipeline.backends.dali import DaliLoader
    from pipeline.base import LoaderConfig

    config = LoaderConfig(data=data, split="train", mode="train", backend="dali", device=device,
                          batch_size=cfg.batch_size, workers=threads or cfg.threads, rank=rank,
                          world_size=world, sample_size=cfg.sample_size, progress=False)
    if build_index:
        return DaliLoader(config)

    class NoIndexDaliLoader(DaliLoader):
        def _build_pipeline(self, feed):  # the backend's own graph, with decoders.video(build_index=False)
            from nvidia.dali import fn

            real = fn.decoders.video
            fn.decoders.video = functools.partial(real, build_index=False)
            try:
                return super()._build_pipeline(feed)
            finally:
                fn.decoders.video = real

    return NoIndexDaliLoader(config)


def nvdec_loader(data: Path, cfg: Config, device: str, decoder: str = "nvdec", latency: str = "native"):
    from pipeline.backends.nvdec import NvdecLoader
    from pipeline.base import LoaderConfig

    config = LoaderConfig(data=data, split="train", mode="train", backend="nvdec", device=device,
                          batch_size=cfg.batch_size, workers=cfg.threads, sample_size=cfg.sample_size,
                          progress=False)
    return NvdecLoader(config, decoder=decoder, latency=latency)


def skip_reason(strategy: str, codec: str, gpu: bool) -> str:
    """Why a (strategy, codec) row cannot run on this machine, or ""."""
    if strategy.startswith("dali"):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "DALI not installed"
        if not gpu and codec != "vp9":
            return "DALI's CPU decoder reads VP8/VP9/MJPEG only"
        if not gpu and strategy != "dali":
            return "GPU variant"
    if strategy.startswith("nvdec") or strategy == "augment":
        if not gpu:
            return "needs a GPU"
        if strategy != "augment":
            try:
                from pipeline.backends.nvdec_decoders import import_nvc

                import_nvc()
            except ImportError as e:
                return str(e).split(";")[0]
    return ""


# ---- measuring ------------------------------------------------------------------------------------------------


class Nvml:
    """Samples NVDEC utilisation (%) and device memory in use (bytes) every `every` s on a thread, if NVML
    (nvidia-ml-py) is importable and a GPU is there; otherwise records nothing."""

    def __init__(self, every: float = 0.2):
        self.util: list[int] = []
        self.memory = 0
        self.every = every
        self._done = threading.Event()
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no package, no driver: the columns stay empty
            self._handle = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.util.append(int(self._nvml.nvmlDeviceGetDecoderUtilization(self._handle)[0]))
            self.memory = max(self.memory, int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    def __enter__(self) -> Nvml:
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._handle is not None:
            self._thread.join()


def slice_frames(loader) -> float:
    """Mean packets decoded per clip of the loader's current plan (keyframe at or before the first frame .. last)."""
    import numpy as np

    from pipeline.bitstream import clip_span

    plan, total = loader.plan, 0
    for r, fr in zip(plan.rows.tolist(), plan.frames, strict=True):
        first, last = clip_span(loader.packets.video(r), fr)
        total += last - first + 1
    return total / max(len(plan), 1) if len(plan) else float(np.nan)


def run_loaders(loaders: list, seconds: float, warmup: float, sync) -> tuple[int, float, float]:
    """Iterate each loader on its own thread, epochs back to back, for `warmup` seconds (not counted), then
    for `seconds`; returns (clips, wall seconds, CPU seconds of this process) of the timed part. A batch
    counts when it arrives inside the window."""
    clips = [0] * len(loaders)
    stop, counting = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def drive(k: int, loader) -> None:
        epoch = 0
        try:
            while not stop.is_set():
                loader.set_epoch(epoch)
                epoch += 1
                for batch in loader:
                    if counting.is_set():
                        clips[k] += len(batch.labels)
                    if stop.is_set():
                        break
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=drive, args=(k, ld), daemon=True) for k, ld in enumerate(loaders)]
    for t in threads:
        t.start()
    stop.wait(warmup)
    sync()
    c0, t0 = cpu_seconds(), time.perf_counter()
    counting.set()
    stop.wait(seconds)
    counting.clear()
    sync()  # the counted batches' GPU work is done before the clock is read
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    stop.set()  # then the threads abandon their epochs (draining prefetched batches is not timed)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(clips), wall, cpu


def measure(strategy: str, fmt: str, data: Path | None, cfg: Config, gpu: bool) -> dict:
    import torch

    device = "gpu" if gpu else "cpu"
    row = {"strategy": strategy, "format": fmt, "device": device, "threads": cfg.threads,
           "batch_size": cfg.batch_size}
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if strategy == "host":
        with nvdec_loader(data, cfg, "cpu", decoder="pyav") as loader:
            row["build_s"] = time.perf_counter() - t0
            c0, w0, clips, epoch = cpu_seconds(), time.perf_counter(), 0, 0
            while time.perf_counter() - w0 < cfg.seconds:
                loader.set_epoch(epoch)
                epoch += 1
                clips += host_pass(loader)["clips"]
            cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
            row.update(clips=clips, wall_s=wall, clips_per_cpu_s=clips / cpu, host_cpu_ms_per_clip=1e3 * cpu / clips,
                       frames_per_clip=slice_frames(loader))
        return row
    if strategy == "augment":
        return measure_augment(row, cfg)
    loaders = []  # closed however the row ends: a failed row must not leave threads or NVDEC sessions to the next
    try:
        if strategy.startswith("dali-k"):
            k = int(strategy[len("dali-k"):])
            for r in range(k):
                loaders.append(dali_loader(data, cfg, device, rank=r, world=k, threads=max(1, cfg.threads // k)))
        elif strategy.startswith("dali"):
            loaders.append(dali_loader(data, cfg, device, build_index=strategy == "dali"))
        elif strategy.startswith("nvdec"):
            loaders.append(nvdec_loader(data, cfg, device, decoder="nvdec",
                                        latency="low" if strategy == "nvdec-low" else "native"))
            row["threads"] = loaders[0].workers
        else:  # twin
            loaders.append(nvdec_loader(data, cfg, device, decoder="pyav"))
        row["build_s"] = time.perf_counter() - t0
        row["frames_per_clip"] = slice_frames(loaders[0])
        with Nvml() as nvml:
            clips, wall, cpu = run_loaders(loaders, cfg.seconds, cfg.warmup, sync)
    finally:
        for ld in loaders:
            ld.close()
    row.update(clips=clips, wall_s=wall, clips_per_s=clips / wall, host_cpu_ms_per_clip=1e3 * cpu / max(clips, 1),
               nvdec_util_mean=sum(nvml.util) / len(nvml.util) if nvml.util else None,
               nvdec_util_max=max(nvml.util) if nvml.util else None,
               gpu_mem_mb=nvml.memory / 2**20 if nvml.util else None,
               torch_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if gpu else None)
    return row


def measure_augment(row: dict, cfg: Config) -> dict:
    """augment_nv12 on a fixed batch of 640x360 NV12 frames, the plan's crop scales drawn per clip."""
    import numpy as np
    import torch

    from pipeline.augment import augment_nv12
    from pipeline.sampling import POSITIONS, SCALES, crop_box

    n, t, h, w = cfg.batch_size, 16, 360, 640
    rng = np.random.default_rng(0)
    y = torch.randint(0, 256, (n, t, h, w), dtype=torch.uint8, device="cuda")
    uv = torch.randint(0, 256, (n, t, h // 2, w), dtype=torch.uint8, device="cuda")
    boxes = np.array([crop_box(w, h, int(rng.integers(len(POSITIONS))), SCALES[int(rng.integers(len(SCALES)))])
                      for _ in range(n)])
    args = (np.tile([h, w], (n, 1)), boxes, rng.integers(0, 2, n).astype(bool), cfg.sample_size, (110.0, 103.0, 96.0))
    augment_nv12(y, uv, *args)
    torch.cuda.synchronize()
    c0, t0, clips = cpu_seconds(), time.perf_counter(), 0
    while time.perf_counter() - t0 < cfg.seconds:
        augment_nv12(y, uv, *args)
        clips += n
        if clips % (8 * n) == 0:
            torch.cuda.synchronize()  # bound the queue of launched work
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    row.update(format="640x360", clips=clips, wall_s=wall, clips_per_s=clips / wall, gpu_ms_per_batch=1e3 * wall * n / clips,
               host_cpu_ms_per_clip=1e3 * (cpu_seconds() - c0) / clips, torch_peak_mb=torch.cuda.max_memory_allocated() / 2**20)
    return row


# ---- orchestration --------------------------------------------------------------------------------------------


def versions(nvdec: bool = False) -> dict:
    """Versions of what the numbers depend on; nvdec: also NVDEC's limits and engine count (GetDecoderCaps)."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus": os.cpu_count(),
           "driver": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as e:  # no package, no driver: reported, not raised
        out["driver"] = f"unavailable ({type(e).__name__})"
    for name, module in (("dali", "nvidia.dali"), ("pynvvideocodec", "PyNvVideoCodec"), ("av", "av"),
                         ("decord", "decord"), ("nvidia-ml-py", "pynvml"), ("pytest", "pytest")):
        try:
            out[name] = getattr(__import__(module, fromlist=["_"]), "__version__", "installed")
        except Exception as e:  # reported, not raised
            out[name] = f"unavailable ({type(e).__name__})"
    if nvdec:
        try:
            from pipeline.backends.nvdec_decoders import nvdec_limits

            limits, engines = nvdec_limits(["vp9", "h264", "hevc"], 0)
            out["nvdec"] = {"engines": engines, **{c: list(v) for c, v in limits.items()}}
        except Exception as e:  # reported, not raised
            out["nvdec"] = f"unavailable ({type(e).__name__}: {e})"
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(ROOT / "scratch" / "decode_speed"), help="datasets are made here")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {','.join(FORMATS)}")
    p.add_argument("--strategies", default=None, help=f"comma list of {','.join(STRATEGIES)} (default: all "
                   "that can run here: no GPU -> dali (VP9), twin, host)")
    p.add_argument("--height", type=int, default=360, help="prepared height (360; 240 as an option)")
    p.add_argument("--source-videos", type=int, default=8, help="distinct synthetic sources")
    p.add_argument("--source-seconds", type=float, default=10.0)
    p.add_argument("--videos", type=int, default=512, help="train rows per format (hard links to the prepared files)")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per row")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per row before the timing")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 with a GPU, 8 without")
    p.add_argument("--threads", type=int, default=None, help="decoder threads (DALI threads; NVDEC rounds up to "
                   "a multiple of the engine count); default: 8 with a GPU, 2 without")
    p.add_argument("--sample-size", type=int, default=112)
    p.add_argument("--json", default=None, help="write the rows (and versions) here, row by row")
    p.add_argument("--versions", action="store_true", help="print the versions and NVDEC's limits (and write them "
                   "to --json), then exit")
    p.add_argument("--prepare-only", action="store_true", help="make the datasets of --formats, then exit")
    a = p.parse_args(argv)
    if a.versions:
        v = json.dumps(versions(nvdec=True), indent=1)
        print(v)
        if a.json:  # (a file of its own: libraries may print to stdout too)
            Path(a.json).write_text(v + "\n")
        sys.exit(0)
    gpu = has_cuda()
    formats = tuple(f for f in a.formats.split(",") if f)
    if bad := [f for f in formats if f.split("-g")[0] not in EXT or not f.split("-g")[-1].isdigit()]:
        p.error(f"--formats: unknown {bad}; use CODEC-gGOP with CODEC in vp9, h264, hevc")
    default = ("dali", "dali-noindex", "dali-k4", "nvdec", "nvdec-low", "host", "augment") if gpu else ("dali", "twin", "host")
    strategies = tuple(s for s in (a.strategies or ",".join(default)).split(",") if s)
    if bad := [s for s in strategies if s not in STRATEGIES and not (s.startswith("dali-k") and s[6:].isdigit())]:
        p.error(f"--strategies: unknown {bad}; choose from {','.join(STRATEGIES)} (dali-kK for any K)")
    if a.seconds <= 0 or a.warmup < 0 or a.videos < 1 or a.source_videos < 1:
        p.error("--seconds must be > 0, --warmup >= 0, --videos and --source-videos >= 1")
    return Config(a.root, formats, strategies, a.height, a.source_videos, a.source_seconds, a.videos, a.seconds,
                  a.warmup, a.batch_size or (64 if gpu else 8), a.threads or (8 if gpu else 2), a.sample_size, a.json,
                  a.prepare_only)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="decode strategies x formats (train mode, one timed window per row)")
    cols = ["strategy", "format", "clips/s", "clips/CPU-s", "host CPU ms/clip", "frames/clip", "NVDEC % mean/max",
            "GPU MB", "threads", "note"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("strategy", "format", "note") else "right")

    def f(x, fmt="{:.1f}"):
        return "" if x is None else fmt.format(x)

    for r in rows:
        util = "" if r.get("nvdec_util_mean") is None else f"{r['nvdec_util_mean']:.0f}/{r['nvdec_util_max']}"
        table.add_row(r["strategy"], r["format"], f(r.get("clips_per_s")), f(r.get("clips_per_cpu_s")),
                      f(r.get("host_cpu_ms_per_clip"), "{:.3f}"),
                      f(r.get("frames_per_clip")), util, f(r.get("gpu_mem_mb"), "{:.0f}"), str(r.get("threads", "")),
                      r.get("skipped") or r.get("error", ""))
    Console(width=180).print(table)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.prepare_only:
        for fmt in cfg.formats:
            data = prepare_format(cfg, fmt)
            build_index(data)  # (cheap when prepare_format just made it; needed when the dataset was there)
            print(data, flush=True)
        return 0
    gpu = has_cuda()
    meta = {"config": asdict(cfg), "versions": versions(), "load_avg": os.getloadavg()}
    print(json.dumps(meta), flush=True)
    rows: list[dict] = []

    def save() -> None:
        if cfg.json:
            Path(cfg.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")

    datasets: dict[str, Path | str] = {}  # format -> its dataset, or why it could not be made

    def dataset(fmt: str) -> Path | str:
        if fmt not in datasets:
            try:
                datasets[fmt] = prepare_format(cfg, fmt)
            except Exception as e:  # e.g. no encoder for the codec: that format's rows say so, the others run
                datasets[fmt] = f"preparing {fmt} failed: {type(e).__name__}: {e}"[:300]
        return datasets[fmt]

    for strategy, fmt in row_order(cfg.formats, cfg.strategies):
        rows.append(measure_or_why(strategy, fmt, dataset, cfg, gpu))
        gc.collect()
        if gpu:
            import torch

            torch.cuda.empty_cache()
        r = rows[-1]
        rate = f"{r['clips_per_cpu_s']:8.1f} clips/CPU-s" if "clips_per_cpu_s" in r else \
            f"{r.get('clips_per_s', 0):8.1f} clips/s"
        print(f"{strategy:13s} {fmt:9s} {rate}  "
              f"{r.get('host_cpu_ms_per_clip') or 0:7.3f} host ms/clip  {r.get('error') or r.get('skipped') or ''}",
              flush=True)
        save()
    print_table(rows)
    return 0


def row_order(formats: tuple[str, ...], strategies: tuple[str, ...]) -> list[tuple[str, str]]:
    """The matrix's (strategy, format) rows in order of value: per format (in the order given), its strategies
    in VALUE_ORDER (dali-kK last, by K); "augment", which makes its own frames, once (format ""), at its
    place among the first format's rows."""

    def rank(s: str) -> tuple[int, int]:
        return (len(VALUE_ORDER), int(s[len("dali-k"):])) if s.startswith("dali-k") else (VALUE_ORDER.index(s), 0)

    ordered = sorted(dict.fromkeys(strategies), key=rank)
    rows = []
    for k, fmt in enumerate(formats or ("",)):
        rows += [(s, "" if s == "augment" else fmt) for s in ordered if k == 0 or s != "augment"]
    return [r for r in rows if r[1] or r[0] == "augment"]


def measure_or_why(strategy: str, fmt: str, dataset, cfg: Config, gpu: bool) -> dict:
    """measure()'s row, or a row that says why it was skipped or what failed (one row never ends the matrix)."""
    why = skip_reason(strategy, fmt.split("-g")[0], gpu)
    if why:
        return {"strategy": strategy, "format": fmt, "skipped": why}
    data = dataset(fmt) if strategy != "augment" else None  # (augment makes its own frames)
    if isinstance(data, str):
        return {"strategy": strategy, "format": fmt, "error": data}
    try:
        return measure(strategy, fmt, data, cfg, gpu)
    except Exception as e:
        return {"strategy": strategy, "format": fmt, "error": f"{type(e).__name__}: {e}"[:300]}


if __name__ == "__main__":
    sys.exit(main())
