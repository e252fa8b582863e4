"""Test videos whose pixels say where they came from, and tiny prepared-layout datasets (for any test).

Frame content (RGB): R = round(255 * x / (W - 1))  (horizontal position; reversed by a flip),
                     G = round(255 * y / (H - 1))  (vertical position),
                     B = 4 + 8 * (i % 32)          (frame index i, constant over the frame).
So after any crop, resize and flip: mean(B) gives the frame index (mod 32), mean(R) and mean(G) the centre
of the crop box, and the sign of R's horizontal slope the flip. VP9 lossless in WebM, keyframe every `gop`
frames (closed GOP), like prepare_data.py's output, written by the project's one writer
(prepare.sample.write_video).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.manifest import COLUMNS
from prepare import sample


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


# ---- VP9 with hidden frames in packets of their own (as muxers other than FFmpeg's may store them) ---------------


def write_ivf(path: Path, packets: list[bytes], width: int, height: int, fourcc: bytes = b"VP90", fps: int = 25) -> Path:
    """packets as an IVF file (32-byte header, then a 12-byte header per packet: size u32, timestamp u64)."""
    import struct

    parts = [struct.pack("<4sHH4sHHIII4x", b"DKIF", 0, 32, fourcc, width, height, fps, 1, len(packets))]
    for k, p in enumerate(packets):
        parts += [struct.pack("<IQ", len(p), k), p]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def vp9_superframe(frames: list[bytes]) -> bytes:
    """VP9 frames packed into one superframe (VP9 spec Annex B): the frames, then an index of 4-byte sizes
    between two marker bytes 0b110_11_NNN (N + 1 frames)."""
    import struct

    marker = bytes([0xC0 | 3 << 3 | (len(frames) - 1)])
    return b"".join(frames) + marker + b"".join(struct.pack("<I", len(f)) for f in frames) + marker


def write_hidden_frame_ivf(path: Path, num_frames: int, hide: list[int], packed: bool, width: int = 96,
                           height: int = 64, gop: int = 8) -> Path:
    """The test pattern (frame_rgb) as VP9 in IVF, showing frames 0..num_frames-1 in order, where each keyframe
    k in `hide` (a multiple of gop, not 0) is stored hidden (show_frame cleared) and shown by the next frame, a
    one-byte show_existing_frame of slot 0 (every keyframe refreshes all slots). packed=False: the two as
    packets of their own (num_frames + len(hide) packets: packet k is not frame k after the first); packed=True:
    the two in one superframe, as FFmpeg's muxers pack an alt-ref frame (num_frames packets, one shown frame
    each). The pixels are the lossless encoder's, so every backend can check its frames exactly."""
    import av

    src = write_video(Path(path).with_suffix(".src.webm"), num_frames, width, height, gop)
    with av.open(str(src)) as c:
        packets = [bytes(p) for p in c.demux(video=0) if p.size]
    src.unlink()
    out = []
    for k, p in enumerate(packets):
        if k not in hide:
            out.append(p)
            continue
        # First byte, profile 0: frame_marker 0b10, profile bits 00, show_existing_frame, frame_type, show_frame,
        # error_resilient_mode. A shown keyframe is 0b1000_001x.
        assert k % gop == 0 and k > 0 and p[0] & 0xFE == 0x82, f"packet {k} is not a shown profile-0 keyframe"
        hidden, show = bytes([p[0] & ~0x02]) + p[1:], bytes([0b1000_1000])  # show_existing_frame, slot 0
        out += [vp9_superframe([hidden, show])] if packed else [hidden, show]
    return write_ivf(path, out, width, height)


def reference_nv12(path: str) -> np.ndarray:
    """Every frame of `path` decoded by PyAV from the start, as NV12: (F, H*3/2, W) uint8."""
    import av

    from pipeline.video import to_nv12

    with av.open(path) as c:
        return np.stack([to_nv12(f) for f in c.decode(video=0)])


def write_pattern(path, n: int, codec: str, gop: int = 8, width: int = 192, height: int = 144, bframes: int = 0):
    """The test pattern (frame_rgb) in the container and settings prepare_data.py writes: VP9 lossless
    WebM (write_video), or H.264 / HEVC (hvc1) MP4 at high quality, keyframe every `gop` frames."""
    if codec == "vp9":
        return write_video(path, n, width, height, gop)
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        if codec == "h264":
            s = c.add_stream("libx264", rate=25, options={
                "preset": "veryfast", "crf": "12", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                "bf": str(bframes)})
        else:
            s = c.add_stream("libx265", rate=25, options={"preset": "ultrafast", "crf": "12", "x265-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop=0:log-level=error")})
            s.codec_context.codec_tag = "hvc1"  # parameter sets in the header only, as prepare_data.py writes
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, width, height), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


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
