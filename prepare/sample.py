"""The built-in synthetic raw dataset (docs/design.md#sample-dataset): classes told apart only by motion.

Four striped disks, one per quadrant of the frame, move over a random background (gradient, blurred noise or
flat colour with static rectangles) with per-frame noise, all the class's way, each with its own size, speed and
phase (render_clip). The six classes keep their label under a horizontal flip, and positions, sizes and phases
are drawn at random, so a single frame cannot tell them apart:

    move_up, move_down                         constant speed, wrapping round the frame (0.4-0.8 heights / 16 frames)
    grow, shrink                               radius sawtooth between 0.04 and 0.21 heights, period 20-32 frames
    oscillate_vertical, oscillate_horizontal   sine, amplitude 0.08-0.12 heights, period 6-10 frames

Files vary like real downloads: H.264 .mp4, MPEG-4 .avi or VP9 .webm; 160x120 to 320x240; 15/24/25/30 fps;
12-48 frames (about 1 in 10 shorter than 16); one name with a space and non-ASCII letters; and, in train, three
broken files (empty, truncated, not a video) that prepare_data.py must reject. Everything follows from the seed:
the same seed gives the same bytes (encoders run single-threaded with bitexact flags; x264 without its
macroblock tree, see _encoder_options).

    RAW/{train,val}/<class>/<class>_<i>.<ext>
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from prepare.transcode import CODECS, DEFAULT_CRF, EncodeSettings, encoder_options

CLASSES = ("grow", "move_down", "move_up", "oscillate_horizontal", "oscillate_vertical", "shrink")
FORMATS = (("mp4", "libx264"), ("avi", "mpeg4"), ("webm", "libvpx-vp9"))
SIZES = ((160, 120), (192, 144), (256, 144), (240, 180), (320, 240))  # (width, height)
RATES = (15, 24, 25, 30)
QUADRANTS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (column, row): one disk starts in each quarter of the frame
BROKEN = {  # train/<class>/<name>: how it is broken (all must land in rejected.csv)
    "move_up/broken_empty.mp4": "empty",
    "shrink/broken_truncated.mp4": "truncated",
    "grow/broken_not_a_video.avi": "not a video",
}


def write_video(path: Path, frames: Iterable[np.ndarray | av.VideoFrame], fps: int | Fraction = 25,
                codec: str = "libvpx-vp9", *, gop: int | None = None, crf: int | None = None,
                lossless: bool = False) -> Path:
    """Encode frames to path (container from the extension); the same frames and options give the same bytes.

    The one video writer of the project's tests and benchmarks. frames: (H, W, 3) uint8 RGB arrays (a
    (T, H, W, 3) array is such an iterable) or av.VideoFrames (e.g. yuv420p with its planes set), one size.
    codec: the PyAV encoder (libvpx-vp9, libx264, libx265, mpeg4).
    gop None: encoded like a download (this dataset's sources; x264 with B-frames). gop N: encoded like
    prepare_data.py's outputs (transcode.encoder_options: a keyframe at exactly every N frames, no B-frames,
    no hidden frames, so packet i is frame i), at quality crf (default: DEFAULT_CRF) or lossless (VP9
    lossless, x264 crf 0: for tests whose pixels carry values that must come back exactly).
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as out:
        options = _encoder_options(codec, gop, crf, lossless)
        stream = out.add_stream(codec, rate=fps, options={**options, "flags": "+bitexact"})
        frame = _as_frame(first)
        stream.height, stream.width = frame.height, frame.width
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # single-threaded: identical bytes on every machine and run
        if codec == "mpeg4":
            stream.codec_context.bit_rate = 400_000  # ~2 kB per frame at 25 fps
        for i, img in enumerate(itertools.chain([frame], frames)):
            frame = _as_frame(img)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _as_frame(img: np.ndarray | av.VideoFrame) -> av.VideoFrame:
    return img if isinstance(img, av.VideoFrame) else av.VideoFrame.from_ndarray(img, format="rgb24")


def _encoder_options(codec: str, gop: int | None, crf: int | None, lossless: bool) -> dict[str, str]:
    if gop is None:
        # mbtree=0: with B-frames and x264's macroblock tree, its output depends on uninitialised heap memory
        # (the bytes changed with MALLOC_PERTURB_); without the tree it is byte-identical. B-frames stay: real
        # downloads have them, and preparation must handle their reordering.
        options = {"libx264": {"preset": "veryfast", "crf": "20", "x264-params": "mbtree=0"},
                   "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b:v": "0"}}.get(codec, {})
    else:
        name = {encoder: name for name, (encoder, _, _) in CODECS.items()}.get(codec)
        if name is None:
            raise ValueError(f"gop={gop}: prepare_data.py's structure exists for {sorted(CODECS)}, not {codec}")
        options = encoder_options(EncodeSettings(codec=name, gop=gop, crf=DEFAULT_CRF[name]))
    if crf is not None:
        options = {**options, "crf": str(crf)}
    if lossless:
        if codec not in ("libvpx-vp9", "libx264"):
            raise ValueError(f"lossless: only libvpx-vp9 and libx264, not {codec}")
        if codec == "libx264":
            return {**options, "crf": "0"}
        return {**{k: v for k, v in options.items() if k != "crf"}, "lossless": "1"}  # libvpx refuses both
    return options


def render_clip(label: str, rng: np.random.Generator, width: int, height: int, n: int) -> np.ndarray:
    """n frames of class `label`: (n, height, width, 3) uint8 RGB.

    Four disks, one per quadrant of the frame, all moving the class's way with their own size, speed and phase.
    One per quadrant because training crops are as small as half the short side at a corner (the paper's
    augmentation): with a single disk about one training clip in five showed no moving object at all.
    """
    h, k = float(height), len(QUADRANTS)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = _background(rng, width, height)
    colours = _contrasting_colours(rng, background.mean(axis=(0, 1)))
    stripe, angle = rng.uniform(0.03, 0.05) * h, rng.uniform(0, np.pi)
    noise_sigma = rng.uniform(2, 6)

    t = np.arange(n, dtype=np.float32)[None, :]  # (1, n); per-disk values below are (k, 1) -> (k, n)
    qx, qy = np.array(QUADRANTS, np.float32).T[..., None]  # quadrant column/row in {0, 1}, (k, 1)
    cx = (qx + rng.uniform(0.2, 0.8, (k, 1))) * width / 2 + 0 * t
    cy = (qy + rng.uniform(0.2, 0.8, (k, 1))) * h / 2 + 0 * t
    r = rng.uniform(0.07, 0.15, (k, 1)) * h + 0 * t
    if label in ("move_up", "move_down"):
        speed = rng.uniform(0.025, 0.05, (k, 1)) * h * (-1 if label == "move_up" else 1)
        span = h + 2 * r[:, :1]  # leave the frame completely before coming back on the other side
        start = (rng.uniform(0, 0.5) + qy / 2) * span  # the two disks of a column half a span apart
        cy = (start + speed * t) % span - r[:, :1]
    elif label in ("grow", "shrink"):
        period, phase = rng.uniform(20, 32, (k, 1)), rng.uniform(0, 1, (k, 1))
        ramp = (phase + t / period) % 1.0
        r = (0.04 + 0.17 * (ramp if label == "grow" else 1 - ramp)) * h
    else:
        amp, period = rng.uniform(0.08, 0.12, (k, 1)) * h, rng.uniform(6, 10, (k, 1))
        wave = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, (k, 1)))
        if label == "oscillate_vertical":
            cy = cy + wave
        else:
            cx = cx + wave

    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        img = background.copy()
        for j in range(k):
            _draw_disk(img, xx, yy, cx[j, i], cy[j, i], r[j, i], colours, stripe, angle)
        img += rng.standard_normal((height, width, 1), dtype=np.float32) * noise_sigma  # luma noise
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _draw_disk(img: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float,
               colours: np.ndarray, stripe: float, angle: float) -> None:
    """Paint a striped disk into img (H, W, 3) float32, touching only its bounding box (the expensive part)."""
    height, width = img.shape[:2]
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, height)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, width)
    if y1 > y0 and x1 > x0:
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        inside = dx * dx + dy * dy < r * r
        bands = ((dx * np.cos(angle) + dy * np.sin(angle)) // stripe % 2).astype(bool)
        box = img[y0:y1, x0:x1]
        box[inside & bands] = colours[0]
        box[inside & ~bands] = colours[1]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float32 in [0, 255]: a gradient, blurred noise, or a flat colour with rectangles."""
    kind = rng.integers(3)
    if kind == 0:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
        s = (xx * np.cos(theta) + yy * np.sin(theta))[..., None]
        s = (s - s.min()) / max(np.ptp(s), 1e-6)
        return (a * (1 - s) + b * s).astype(np.float32)
    if kind == 1:
        coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3))
        return np.kron(coarse, np.ones((16, 16, 1)))[:height, :width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0:y0 + rng.integers(8, height // 2), x0:x0 + rng.integers(8, width // 2)] = rng.uniform(0, 255, 3)
    return img


def _contrasting_colours(rng: np.random.Generator, mean_bg: np.ndarray) -> np.ndarray:
    """Two stripe colours, one dark and one bright, the first far from the mean background colour."""
    bright = mean_bg.mean() < 128
    light, dark = rng.uniform(190, 255, 3), rng.uniform(0, 60, 3)
    return np.stack([light, dark] if bright else [dark, light]).astype(np.float32)


def make_sample_dataset(root: Path, seed: int = 0, train_per_class: int = 40, val_per_class: int = 12,
                        broken: bool = True, workers: int | None = None) -> dict:
    """Write the synthetic raw dataset under root in the class-folder layout; return a summary dict.

    Each video's parameters come from np.random.default_rng((seed, split, class, index)), so adding videos
    does not change the others, and the worker count does not change any byte.
    """
    root = Path(root)
    t0 = time.perf_counter()
    jobs = []
    for split_idx, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for class_idx, label in enumerate(CLASSES):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            jobs += [(root, seed, split_idx, split, class_idx, label, i) for i in range(per_class)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        results = [_make_one(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_make_one, *zip(*jobs, strict=True), chunksize=4))
    if broken:
        _write_broken(root / "train", seed)
    counts = {split: {label: per for label in CLASSES}
              for split, per in (("train", train_per_class), ("val", val_per_class))}
    return {"root": str(root), "seed": seed, "classes": list(CLASSES), "videos": counts,
            "broken": [f"train/{name}" for name in BROKEN] if broken else [],
            "frames": sum(r[0] for r in results), "bytes": sum(r[1] for r in results),
            "seconds": round(time.perf_counter() - t0, 2)}


def _make_one(root: Path, seed: int, split_idx: int, split: str, class_idx: int, label: str, i: int
              ) -> tuple[int, int]:
    """Write one video; return (frames, bytes)."""
    rng = np.random.default_rng((seed, split_idx, class_idx, i))
    ext, codec = FORMATS[rng.integers(len(FORMATS))]
    width, height = SIZES[rng.integers(len(SIZES))]
    fps = RATES[rng.integers(len(RATES))]
    n = int(rng.integers(12, 16) if rng.random() < 0.1 else rng.integers(16, 49))
    name = f"{label} {i:03d} café" if (split_idx, class_idx, i) == (0, 0, 0) else f"{label}_{i:03d}"
    path = root / split / label / f"{name}.{ext}"
    write_video(path, render_clip(label, rng, width, height, n), fps, codec)
    return n, path.stat().st_size


def _write_broken(train: Path, seed: int) -> None:
    for name, kind in BROKEN.items():
        path = train / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":  # an MP4 cut before its index (moov): nothing can be decoded
            rng = np.random.default_rng((seed, 99))
            write_video(path, render_clip("shrink", rng, 160, 120, 20), 25, "libx264")
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            path.write_text("This is a text file with a video extension.\n")
