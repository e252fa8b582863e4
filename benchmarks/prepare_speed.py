"""How fast prepare_data.py transcodes, how big its outputs are, and how fast random clips read back, per setting.

For each choice (codec, GOP, height) it transcodes a few generated 10 s sources with the real code path
(pipeline.prepare.transcode.transcode: decode -> resize -> encode -> decode again to count frames) in one
process with one codec thread, i.e. the speed of one --workers process. When `ffmpeg` is on PATH it times the
ffmpeg command line doing the same transcode (same encoder options, bicubic scale, one thread) for comparison.
Then it reads random 16-frame clips from the outputs with decord and with DALI's CPU fn.decoders.video given the
whole file (which decodes from the file's first frame: design.md 4), per GOP.

    .venv/bin/python benchmarks/prepare_speed.py [--videos 3] [--seconds 10] [--runs 3] [--json out.json]

Warm-up: one transcode per setting before timing. Reported: median of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.prepare.sample import render_clip, write_video  # noqa: E402
from pipeline.prepare.transcode import (  # noqa: E402
    DEFAULT_CRF,
    EncodeSettings,
    count_frames,
    encoder_options,
    transcode,
)

CLIP = 16
CHOICES = [("vp9", 16, 360), ("vp9", 32, 360), ("vp9", 64, 360), ("vp9", 250, 360), ("vp9", 16, 240),
           ("h264", 16, 360)]


def make_sources(folder: Path, n: int, seconds: int, fps: int = 25) -> list[Path]:
    """n H.264 sources of 640x480 (a typical Kinetics download size), seconds long, synthetic moving content."""
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
            count_frames(out / f"{src.stem}_{r}{s.extension}")
        verify.append(time.perf_counter() - t0)
    frames = sum(i.num_frames for i in infos)
    video_s = sum(i.num_frames / i.fps for i in infos)
    t, tv = statistics.median(times), statistics.median(verify)
    return {"videos_per_s": len(sources) / t, "frames_per_s": frames / t,
            "frames_per_s_without_check": frames / (t - tv), "bytes_per_video_s": sum(i.bytes_out for i in infos)
            / video_s, "width": infos[0].width, "outputs": [str(out / f"{src.stem}_0{s.extension}") for src in sources]}


def time_ffmpeg(sources: list[Path], out: Path, s: EncodeSettings, runs: int) -> dict | None:
    if shutil.which("ffmpeg") is None:
        return None
    codec = {"vp9": "libvpx-vp9", "h264": "libx264"}[s.codec]
    opts = [x for k, v in encoder_options(s).items() for x in (f"-{k}", v)]

    def one(src: Path, dst: Path) -> None:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-threads", "1", "-i", str(src), "-an",
                        "-vf", f"scale=-2:{s.height}:flags=bicubic", "-filter_threads", "1", "-c:v", codec,
                        "-threads", "1", "-pix_fmt", "yuv420p", *opts, str(dst)], check=True)

    one(sources[0], out / f"ffwarm{s.extension}")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for src in sources:
            one(src, out / f"ff_{src.stem}{s.extension}")
        times.append(time.perf_counter() - t0)
    frames = sum(count_frames(out / f"ff_{src.stem}{s.extension}")[0] for src in sources)
    return {"frames_per_s": frames / statistics.median(times)}


def clip_reads(files: list[str], n_clips: int, runs: int) -> dict:
    """Random 16-frame clips per second, one process: decord (seeks to the keyframe) and DALI CPU on whole files."""
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.decord_loader import import_decord

    decord = import_decord()

    rng = np.random.default_rng(0)
    lengths = [count_frames(Path(f))[0] for f in files]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="generated source videos")
    p.add_argument("--seconds", type=int, default=10, help="length of each source (25 fps, 640x480 H.264)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per setting (median reported)")
    p.add_argument("--clips", type=int, default=24, help="random clips per read-speed run")
    p.add_argument("--no-reads", action="store_true", help="skip the clip read-speed part")
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = p.parse_args()
    console = Console()
    rows = []
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
    table = Table(title=f"prepare speed per worker (1 process, 1 codec thread), median of {args.runs}")
    cols = [("codec", "codec", "{}"), ("gop", "GOP", "{}"), ("height", "height", "{}"),
            ("videos_per_s", "videos/s", "{:.2f}"), ("frames_per_s", "frames/s", "{:.0f}"),
            ("frames_per_s_without_check", "frames/s no check", "{:.0f}"),
            ("ffmpeg_frames_per_s", "ffmpeg frames/s", "{:.0f}"), ("bytes_per_video_s", "kB/video s", "{}"),
            ("decord_clips_per_s", "decord clips/s", "{:.1f}"),
            ("dali_cpu_whole_file_clips_per_s", "DALI cpu clips/s", "{:.1f}")]
    for _, title, _ in cols:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*[("-" if r.get(k) is None else f"{r[k] / 1000:.0f}" if k == "bytes_per_video_s"
                         else fmt.format(r[k])) for k, _, fmt in cols])
    Console(width=max(console.width, 130)).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
