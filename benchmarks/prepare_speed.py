"""How fast prepare_data.py prepares a dataset end to end, against the ffmpeg command line doing the same transcode.

Default: the whole `prepare_data.py SRC --out DST --workers W` command as a subprocess (start-up, listing, workers,
manifests), with W = 1 and 2, against the `ffmpeg` command line transcoding the same files one after another (and
W at a time), on a workload like OpenCV's vtest.avi: --copies copies of a generated 795-frame 768x576 10 fps
MPEG-4 AVI (a static textured scene, walking figures, sensor noise; 8 MB like the real file), class-folder layout.
On Linux a row of `--workers 1` pinned to one core is the scaling base ("16 cores give ~16x": W workers on W
cores against one worker on one core; unpinned, one worker's source decoder also uses the idle cores).
Runs are interleaved (one of each command per round, after a warm-up round) and the median of --runs is reported,
with CPU seconds (user + sys of the command and everything it started) beside the wall time: on a shared machine
the CPU seconds are the steadier number. Where `ffmpeg` is not on PATH its rows are skipped, with a message.

    .venv/bin/python benchmarks/prepare_speed.py [--copies 4] [--runs 3] [--workers 1,2] [--codec vp9] [--json out.json]

--sweep: the per-setting table instead (codec, GOP, height): transcode speed of one process with one codec thread
(prepare.transcode.transcode, with and without --verify's decode), the ffmpeg command line with the same
options, output size, and random 16-frame clip reads from the outputs with decord and with DALI's CPU
fn.decoders.video given the whole file (which decodes from the file's first frame: docs/design.md#dali-facts),
per GOP.

    .venv/bin/python benchmarks/prepare_speed.py --sweep [--videos 3] [--seconds 10] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from prepare.transcode import (  # noqa: E402
    CODECS,
    DEFAULT_CRF,
    EncodeSettings,
    count_frames,
    encoder_options,
    transcode,
)

CLIP = 16
VTEST_FRAMES = 795  # frames of OpenCV's vtest.avi, and of its stand-in here
CHOICES = [("vp9", 16, 360), ("vp9", 32, 360), ("vp9", 64, 360), ("vp9", 250, 360), ("vp9", 16, 240),
           ("h264", 16, 360), ("hevc", 16, 360)]
NO_FFMPEG = "ffmpeg not found on PATH: the ffmpeg command line rows are skipped (apt-get install -y ffmpeg)"


# ---------------------------------------------------------------- the workload


def make_surveillance_video(path: Path, n: int = VTEST_FRAMES, width: int = 768, height: int = 576, fps: int = 10,
                            seed: int = 0) -> Path:
    """A stand-in for OpenCV's vtest.avi: MPEG-4 (XVID) AVI at 800 kbit/s, 768x576, 10 fps, 795 frames.

    A static scene (smooth texture at three scales + flat rectangles), 8 figures walking across it, and
    per-frame luma noise, so the encoder sees a still background, moving edges and noise, like a real camera.
    """
    rng = np.random.default_rng(seed)
    scene = np.full((height, width, 3), 128, np.float32)
    for scale, amplitude in ((64, 60), (16, 25), (4, 10)):
        coarse = rng.uniform(-1, 1, (height // scale + 2, width // scale + 2, 3)).astype(np.float32)
        up = np.repeat(np.repeat(coarse, scale, 0), scale, 1)[:height, :width]
        k = max(scale // 2, 1)  # box blur of the blocks (summed-area table)
        sat = np.cumsum(np.cumsum(np.pad(up, ((k, k), (k, k), (0, 0)), mode="edge"), 0), 1)
        blur = (sat[2 * k:, 2 * k:] - sat[:-2 * k, 2 * k:] - sat[2 * k:, :-2 * k] + sat[:-2 * k, :-2 * k]) / (4 * k * k)
        scene += amplitude * blur[:height, :width]
    for _ in range(12):
        y, x = rng.integers(0, height - 40), rng.integers(0, width - 40)
        scene[y:y + rng.integers(20, 200), x:x + rng.integers(20, 200)] = rng.uniform(40, 220, 3)
    people = [{"x": rng.uniform(0, width), "y": rng.uniform(0.3, 0.9) * height, "vx": rng.uniform(-6, 6),
               "vy": rng.uniform(-2, 2), "rw": rng.uniform(12, 22), "rh": rng.uniform(40, 70),
               "colour": rng.uniform(20, 235, 3)} for _ in range(8)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.bit_rate, s.codec_context.codec_tag = 800_000, "XVID"
        for i in range(n):
            img = scene.copy()
            for p in people:
                p["x"] = (p["x"] + p["vx"]) % width
                p["y"] = min(max(p["y"] + p["vy"], p["rh"]), height - p["rh"])
                y0, y1 = int(max(p["y"] - p["rh"], 0)), int(min(p["y"] + p["rh"], height))
                x0, x1 = int(max(p["x"] - p["rw"], 0)), int(min(p["x"] + p["rw"], width))
                dx, dy = (xx[y0:y1, x0:x1] - p["x"]) / p["rw"], (yy[y0:y1, x0:x1] - p["y"]) / p["rh"]
                inside = dx * dx + dy * dy < 1
                img[y0:y1, x0:x1][inside] = p["colour"] + 20 * np.sin(dy[inside] * 9)[:, None]
            img += rng.standard_normal((height, width, 1), dtype=np.float32) * 3
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def make_workload(folder: Path, copies: int) -> list[Path]:
    """SRC/train/walking/vtest_<i>.avi: copies of one generated video (the issue's 4 copies of vtest.avi)."""
    original = make_surveillance_video(folder / "vtest_like.avi")
    paths = [folder / "src" / "train" / "walking" / f"vtest_{i}.avi" for i in range(copies)]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, p)
    return paths


# ---------------------------------------------------------------- end to end


def ffmpeg_command(src: Path, dst: Path, s: EncodeSettings, single_thread: bool) -> list[str]:
    """The ffmpeg command line doing prepare_data.py's transcode (same encoder and options, bicubic scale).

    single_thread False: the issue's command (`-threads 1` after -i: the encoder only; the decoder and the scale
    filter pick their own thread counts) plus `-lag-in-frames 0` for VP9, as prepare_data.py encodes; True: one
    thread throughout, like one prepare_data.py worker.
    """
    opts = [x for k, v in encoder_options(s).items() for x in (f"-{k}", v)]
    pre = ["-threads", "1"] if single_thread else []
    post = ["-filter_threads", "1"] if single_thread else []
    return ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *pre, "-i", str(src), "-an",
            "-vf", f"scale=-2:{s.height}", *post, "-c:v", CODECS[s.codec][0], *opts, "-threads", "1", str(dst)]


ONE_CORE = "prepare_data.py --workers 1, pinned to one core"


def pin_to_one_core() -> None:
    """preexec_fn: the child and everything it starts run on one core (prepare_data.py then decodes with one
    thread: it sizes its decoders by the cores it may use)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child processes it waited for, their children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(args: argparse.Namespace, console: Console) -> list[dict]:
    s = EncodeSettings(codec=args.codec, crf=DEFAULT_CRF[args.codec])
    have_ffmpeg = shutil.which("ffmpeg") is not None
    if not have_ffmpeg:
        console.print(f"[yellow]{NO_FFMPEG}[/]")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = make_workload(tmp, args.copies)
        src_dir, frames = sources[0].parents[2], args.copies * VTEST_FRAMES

        def prepare(workers: int, one_core: bool = False) -> None:
            dst = tmp / f"dst_w{workers}{'_one_core' if one_core else ''}"
            shutil.rmtree(dst, ignore_errors=True)
            subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), str(src_dir), "--out", str(dst),
                            "--workers", str(workers), "--codec", args.codec], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, preexec_fn=pin_to_one_core if one_core else None)

        def ffmpeg(at_once: int, single_thread: bool) -> None:
            out = tmp / f"ff_{at_once}_{int(single_thread)}"
            out.mkdir(exist_ok=True)
            cmds = [ffmpeg_command(p, out / f"{p.stem}{s.extension}", s, single_thread) for p in sources]
            for i in range(0, len(cmds), at_once):
                procs = [(c, subprocess.Popen(c)) for c in cmds[i:i + at_once]]
                failed = [c for c, proc in procs if proc.wait()]  # wait for all of them, then report
                if failed:
                    raise RuntimeError(f"ffmpeg failed: {' '.join(failed[0])}")

        configs = {}
        if hasattr(os, "sched_setaffinity"):  # the scaling base: one worker with one core to itself
            configs[ONE_CORE] = lambda: prepare(1, one_core=True)
        configs.update({f"prepare_data.py --workers {w}": (lambda w=w: prepare(w)) for w in args.workers})
        if have_ffmpeg:
            configs["ffmpeg CLI, 1 file at a time"] = lambda: ffmpeg(1, False)
            configs["ffmpeg CLI -threads 1 throughout, 1 file at a time"] = lambda: ffmpeg(1, True)
            for w in args.workers:
                if w > 1:
                    configs[f"ffmpeg CLI, {w} files at a time"] = lambda w=w: ffmpeg(w, False)
                    configs[f"ffmpeg CLI -threads 1 throughout, {w} files at a time"] = lambda w=w: ffmpeg(w, True)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        load = [os.getloadavg()[0]]
        for r in range(args.runs + 1):  # round 0: warm-up (page cache, imports), not counted
            for name, fn in configs.items():
                wall, cpu = timed(fn)
                console.print(f"round {r}: {name}: {wall:.2f} s, {cpu:.2f} CPU-s (load {os.getloadavg()[0]:.1f})")
                if r:
                    times[name].append((wall, cpu))
            load.append(os.getloadavg()[0])
        with open(tmp / f"dst_w{args.workers[0]}" / "train.csv", newline="") as f:
            counted = sum(int(row["num_frames"]) for row in csv.DictReader(f))
        assert counted == frames, f"prepare_data.py wrote {counted} frames, expected {frames}"
        if have_ffmpeg:  # same number of frames out of both: the comparison is like for like
            ff_frames = sum(count_frames(p)[0] for p in (tmp / "ff_1_0").iterdir())
            assert ff_frames == frames, f"ffmpeg wrote {ff_frames} frames, expected {frames}"

    base = ONE_CORE if ONE_CORE in times else f"prepare_data.py --workers {args.workers[0]}"
    ff = "ffmpeg CLI, 1 file at a time"
    rows = []
    for name, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        row = {"command": name, "wall_s": wall, "cpu_s": cpu, "frames_per_s": frames / wall, "runs": len(runs),
               "load_min": min(load), "load_max": max(load)}
        if ff in times:  # per-round ratios: the two commands of one round ran under the same load
            row["speed_vs_ffmpeg"] = statistics.median(f[0] / w for (w, _), f in zip(runs, times[ff], strict=True))
        row["speed_vs_base"] = statistics.median(b[0] / w for (w, _), b in zip(runs, times[base], strict=True))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- --sweep: per codec / GOP / height


def make_sources(folder: Path, n: int, seconds: int, fps: int = 25) -> list[Path]:
    """n H.264 sources of 640x480 (a typical Kinetics download size), seconds long, synthetic moving content."""
    from prepare.sample import render_clip, write_video

    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        frames = render_clip(("move_up", "grow", "oscillate_horizontal")[i % 3], rng, 640, 480, seconds * fps)
        paths.append(folder / f"src{i}.mp4")
        write_video(paths[-1], frames, fps, "libx264")
    return paths


def time_transcode(sources: list[Path], out: Path, s: EncodeSettings, runs: int) -> dict:
    transcode(sources[0], out / f"warmup{s.extension}", s)
    times, verify = [], []
    for r in range(runs):
        t0 = time.perf_counter()
        infos = [transcode(src, out / f"{src.stem}_{r}{s.extension}", s) for src in sources]
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for src in sources:
            count_frames(out / f"{src.stem}_{r}{s.extension}")  # what --verify adds
        verify.append(time.perf_counter() - t0)
    frames = sum(i.num_frames for i in infos)
    video_s = sum(i.num_frames / i.fps for i in infos)
    t, tv = statistics.median(times), statistics.median(verify)
    return {"videos_per_s": len(sources) / t, "frames_per_s": frames / t, "frames_per_s_verify": frames / (t + tv),
            "bytes_per_video_s": sum(i.bytes_out for i in infos) / video_s, "width": infos[0].width,
            "outputs": [(str(out / f"{src.stem}_0{s.extension}"), i.num_frames) for src, i in zip(sources, infos,
                                                                                                  strict=True)]}


def time_ffmpeg(sources: list[Path], out: Path, s: EncodeSettings, runs: int) -> dict | None:
    if shutil.which("ffmpeg") is None:
        return None

    def one(src: Path, dst: Path) -> None:
        subprocess.run(ffmpeg_command(src, dst, s, single_thread=True), check=True)

    one(sources[0], out / f"ffwarm{s.extension}")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for src in sources:
            one(src, out / f"ff_{src.stem}{s.extension}")
        times.append(time.perf_counter() - t0)
    frames = sum(count_frames(out / f"ff_{src.stem}{s.extension}")[0] for src in sources)
    return {"frames_per_s": frames / statistics.median(times)}


def clip_reads(outputs: list[tuple[str, int]], n_clips: int, runs: int) -> dict:
    """Random 16-frame clips per second, one process: decord (seeks to the keyframe) and DALI CPU on whole files.

    outputs: (file, num_frames) of prepared videos.
    """
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.backends.decord import import_decord

    decord = import_decord()

    rng = np.random.default_rng(0)
    files, lengths = [f for f, _ in outputs], [n for _, n in outputs]
    picks = [(int(v), int(rng.integers(0, lengths[v] - CLIP + 1))) for v in rng.integers(0, len(files), n_clips)]
    readers = [decord.VideoReader(f, num_threads=1) for f in files]

    def decord_run() -> None:
        for v, start in picks:
            readers[v].get_batch(list(range(start, start + CLIP))).asnumpy()

    data = [np.fromfile(f, np.uint8) for f in files]
    state = {"i": 0}

    def next_sample():
        v, start = picks[state["i"] % len(picks)]
        state["i"] += 1
        return data[v], np.arange(start, start + CLIP, dtype=np.int32)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    def dali_pipe():
        enc, frames = fn.external_source(source=next_sample, num_outputs=2, batch=False,
                                         dtype=[types.UINT8, types.INT32])
        return fn.decoders.video(enc, frames=frames, device="cpu")

    pipe = dali_pipe()
    pipe.build()

    def dali_run() -> None:
        for _ in picks:
            pipe.run()

    out = {}
    for name, fn_ in (("decord", decord_run), ("dali_cpu_whole_file", dali_run)):
        fn_()  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn_()
            times.append(time.perf_counter() - t0)
        out[f"{name}_clips_per_s"] = n_clips / statistics.median(times)
    return out


def sweep(args: argparse.Namespace, console: Console) -> list[dict]:
    rows = []
    if shutil.which("ffmpeg") is None:
        console.print(f"[yellow]{NO_FFMPEG}[/]")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = make_sources(tmp, args.videos, args.seconds)
        console.print(f"{len(sources)} sources of {args.seconds} s, 640x480, 25 fps; ffmpeg: {shutil.which('ffmpeg')}")
        for codec, gop, height in CHOICES:
            s = EncodeSettings(codec=codec, gop=gop, height=height, crf=DEFAULT_CRF[codec], threads=1)
            out = tmp / f"{codec}_{gop}_{height}"
            out.mkdir()
            row = {"codec": codec, "gop": gop, "height": height, "crf": s.crf, **time_transcode(sources, out, s, args.runs)}
            ff = time_ffmpeg(sources, out, s, args.runs)
            row["ffmpeg_frames_per_s"] = ff["frames_per_s"] if ff else None
            if codec == "vp9" and height == 360 and not args.no_reads:
                row.update(clip_reads(row["outputs"], args.clips, args.runs))
            row.pop("outputs")
            rows.append(row)
            console.print(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="timed runs (rounds) per command or setting (median reported)")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    g = p.add_argument_group("end to end (default)")
    g.add_argument("--copies", type=int, default=4, help="copies of the 795-frame 768x576 source")
    g.add_argument("--workers", default="1,2", help="comma-separated --workers values to run (the first is the base)")
    g.add_argument("--codec", default="vp9", choices=tuple(CODECS))
    g = p.add_argument_group("--sweep")
    g.add_argument("--sweep", action="store_true", help="the per codec/GOP/height table instead")
    g.add_argument("--videos", type=int, default=3, help="generated source videos")
    g.add_argument("--seconds", type=int, default=10, help="length of each source (25 fps, 640x480 H.264)")
    g.add_argument("--clips", type=int, default=24, help="random clips per read-speed run")
    g.add_argument("--no-reads", action="store_true", help="skip the clip read-speed part")
    args = p.parse_args()
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers {args.workers}: comma-separated integers, e.g. 1,2")
    if min(args.runs, args.copies, args.videos, args.seconds, args.clips, *args.workers) < 1:
        p.error("--runs, --copies, --videos, --seconds, --clips and each --workers value must be >= 1")
    console = Console()
    wide = Console(width=max(console.width, 140))
    if args.sweep:
        rows = sweep(args, console)
        table = Table(title=f"prepare speed per worker (1 process, 1 codec thread), median of {args.runs}")
        cols = [("codec", "codec", "{}"), ("gop", "GOP", "{}"), ("height", "height", "{}"),
                ("videos_per_s", "videos/s", "{:.2f}"), ("frames_per_s", "frames/s", "{:.0f}"),
                ("frames_per_s_verify", "frames/s --verify", "{:.0f}"),
                ("ffmpeg_frames_per_s", "ffmpeg 1-thread frames/s", "{:.0f}"),
                ("bytes_per_video_s", "kB/video s", "{}"), ("decord_clips_per_s", "decord clips/s", "{:.1f}"),
                ("dali_cpu_whole_file_clips_per_s", "DALI cpu clips/s", "{:.1f}")]
    else:
        rows = end_to_end(args, console)
        table = Table(title=f"end to end, {args.copies} x {VTEST_FRAMES} frames 768x576 -> {args.codec}, median of {args.runs} "
                      f"interleaved rounds, load average {rows[0]['load_min']:.1f}-{rows[0]['load_max']:.1f}")
        cols = [("command", "command", "{}"), ("wall_s", "wall s", "{:.2f}"), ("cpu_s", "CPU s", "{:.2f}"),
                ("frames_per_s", "frames/s", "{:.0f}"), ("speed_vs_ffmpeg", "speed / ffmpeg CLI", "{:.2f}"),
                ("speed_vs_base", "speed / 1 worker on 1 core" if rows[0]["command"] == ONE_CORE
                 else f"speed / {rows[0]['command']}", "{:.2f}")]
    for _, title, _ in cols:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*[("-" if r.get(k) is None else f"{r[k] / 1000:.0f}" if k == "bytes_per_video_s"
                         else fmt.format(r[k])) for k, _, fmt in cols])
    wide.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
