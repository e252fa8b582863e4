"""Test videos whose pixels say where they came from, and tiny prepared-layout datasets (for any test).

Frame content (RGB): R = round(255 * x / (W - 1))  (horizontal position; reversed by a flip),
                     G = round(255 * y / (H - 1))  (vertical position),
                     B = 4 + 8 * (i % 32)          (frame index i, constant over the frame).
So after any crop, resize and flip: mean(B) gives the frame index (mod 32), mean(R) and mean(G) the centre
of the crop box, and the sign of R's horizontal slope the flip. VP9 lossless in WebM, keyframe every `gop`
frames (closed GOP), like prepare_data.py's output, written by the project's one writer
(pipeline.prepare.sample.write_video).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.manifest import COLUMNS
from pipeline.prepare import sample


def frame_rgb(i: int, width: int, height: int) -> np.ndarray:
    """The test pattern of frame i: (H, W, 3) uint8."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = np.round(255 * np.arange(width) / (width - 1)).astype(np.uint8)[None, :]
    img[..., 1] = np.round(255 * np.arange(height) / (height - 1)).astype(np.uint8)[:, None]
    img[..., 2] = frame_code(i)
    return img


def frame_code(i: int | np.ndarray) -> int | np.ndarray:
    """Blue level of frame i."""
    return 4 + 8 * (np.asarray(i) % 32)


def decode_code(blue_mean: np.ndarray) -> np.ndarray:
    """Frame index mod 32 from the mean blue level of each frame."""
    return np.round((np.asarray(blue_mean) - 4) / 8).astype(np.int64) % 32


def write_video(path: Path, num_frames: int, width: int = 96, height: int = 64, gop: int = 16, fps: int = 25,
                lossless: bool = True, codec: str = "libvpx-vp9") -> Path:
    """Write the test pattern in prepare_data.py's structure (a keyframe every `gop` frames, packet i = frame i)
    as a VP9 WebM, or with another encoder, e.g. libx264 into .mp4; lossless unless told otherwise."""
    frames = (frame_rgb(i, width, height) for i in range(num_frames))
    return sample.write_video(path, frames, fps, codec, gop=gop, lossless=lossless)


def make_dataset(root: Path, splits: dict[str, list[dict]], classes: list[str] = ("a", "b", "c"),
                 width: int = 96, height: int = 64, gop: int = 16) -> Path:
    """A prepared-layout dataset under root: videos/<split>/<label>/<id>.webm, <split>.csv, classes.csv.

    splits: {split: [row, ...]}, a row is a dict with `frames` (length of the file) and optional `label`
    (default i % K), `segments` ([(start, end), ...]: several manifest rows over one file), `width`,
    `height`, `id`. Every row's file is written (rows never share one; segments of one file are one row's).
    """
    import pandas as pd

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"index": range(len(classes)), "name": list(classes)}).to_csv(root / "classes.csv", index=False)
    for split, rows in splits.items():
        out = []
        for i, r in enumerate(rows):
            label = r.get("label", i % len(classes))
            vid = r.get("id", f"{split}{i:03d}")
            w, h, n = r.get("width", width), r.get("height", height), r["frames"]
            rel = Path("videos") / split / classes[label] / f"{vid}.webm"
            write_video(root / rel, n, w, h, gop)
            for a, b in r.get("segments", [(0, n)]):
                out.append([vid, rel.as_posix(), label, classes[label], split, n, 25.0, w, h, a, b])
        pd.DataFrame(out, columns=list(COLUMNS)).to_csv(root / f"{split}.csv", index=False)
    return root


def textured_frames(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Real-looking content for fidelity tests: (n, H, W, 3) uint8 of a texture panning 3 px a frame (colour at a
    coarse scale, brightness detail down to 2 px, as a camera's chroma is smoother than its luma), grain, and two
    sharp-edged saturated blocks moving over it (the colour edges where conversion and resampling differ most)."""
    rng = np.random.default_rng(seed)
    wide = width + 3 * n

    def texture(cell: int, channels: int) -> np.ndarray:
        g = rng.normal(0, 1, (height // cell + 2, wide // cell + 2, channels))
        return np.repeat(np.repeat(g, cell, 0), cell, 1)[:height, :wide]

    base = 45 * texture(32, 3) + 25 * texture(8, 1) + 10 * texture(2, 1)
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        img = base[:, 3 * i:3 * i + width] + 128 + rng.normal(0, 3, (height, width, 1))
        y, x = (7 * i) % (height // 2), (11 * i) % (width // 2)
        img[y:y + height // 3, x:x + width // 4] = (230, 30, 40)
        img[height // 2:height // 2 + 20, width - x - 40:width - x] = (20, 60, 220)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out
