"""The paper's clip sampling and augmentation parameters, as pure numpy functions shared by every backend.

Every random choice is drawn here, on the host, from generators seeded by (seed, epoch[, purpose]); the
backends only execute the plan. So the DALI, decord and NVDEC backends see identical parameters, a clip
does not depend on the world size or on the order it is loaded in, and tests can check every value exactly.

Vocabulary: a *row* is one manifest row, the frame range [start_frame, end_frame) of a file; n is its length.
A *clip* is T frame indices into the file plus a square crop box and a flip flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Crop scales, as fractions of the short side (paper: {1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2}).
SCALES: tuple[float, ...] = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
# Crop positions: the 4 corners and the centre.
POSITIONS: tuple[str, ...] = ("tl", "tr", "bl", "br", "c")
CENTER = POSITIONS.index("c")
MODES = ("train", "val", "eval", "views")


def clip_frames(start: int, n: int, length: int, offset: int = 0) -> np.ndarray:
    """Frame indices of a clip: offset + (start + arange(length)) % n.  (length,) int64.

    The modulo loops rows shorter than `length` (frame i -> i mod n); offset is the row's start_frame.
    """
    if n < 1:
        raise ValueError(f"a row needs at least one frame, got n={n}")
    return offset + (start + np.arange(length, dtype=np.int64)) % n


def train_start_high(n: int | np.ndarray, length: int) -> int | np.ndarray:
    """Number of valid training starts: starts are uniform in [0, n - length] (last included), or {0}."""
    return np.maximum(np.asarray(n) - length, 0) + 1


def center_start(n: int, length: int) -> int:
    """Start of the centre clip (val mode): (n - length) // 2, clamped at 0 (shorter rows loop from 0)."""
    return max((n - length) // 2, 0)


def eval_starts(n: int, length: int) -> np.ndarray:
    """Starts of every non-overlapping window: 0, T, 2T, ... while a full window fits; n < T -> [0] (looped)."""
    if n < length:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, n - length + 1, length, dtype=np.int64)


# Multi-view testing ("K clips x C crops") is PySlowFast's test-time sampling, reproduced exactly (facebookresearch/
# SlowFast, slowfast/datasets/decoder.py: get_start_end_idx with use_offset=True, i.e. DATA.USE_OFFSET_SAMPLING:
# True as its MViTv2 and ViT Kinetics configs set; slowfast/datasets/transform.py: uniform_crop; clip and crop
# indices as slowfast/datasets/kinetics.py assigns them in test mode: clip-major, spatial_idx 1 for one crop).
# The crop is taken on the stored frames at size = their short side, then resized; PySlowFast first scales the
# short side to the crop size, so its box is the same one up to that resize's rounding. One difference on
# purpose: PySlowFast's one-crop test crops TEST_CROP_SIZE out of a TRAIN_JITTER_SCALES[0] short side (224 of
# 256); C = 1 here keeps the paper's maximum scale (the whole short side), at uniform_crop's centre offset.
VIEW_CROPS = (1, 3)  # uniform_crop's spatial_idx is 0, 1 or 2: one centre crop, or both ends and the centre


def view_starts(n: int, length: int, clips: int) -> np.ndarray:
    """Starts of the K clips of multi-view testing, PySlowFast's get_start_end_idx(video_size=n,
    clip_size=length, clip_idx=k, num_clips_uniform=K, use_offset=True) for k = 0..K-1: with
    d = max(n - length, 0), start_k = k * floor(d / (K - 1)) when K > 1 (the first clip starts at frame 0; the
    last ends within K - 2 frames of the last frame), floor(d / 2) when K = 1 (the centre clip, center_start).
    Rows shorter than the clip: every start is 0 (looped by clip_frames). (K,) int64.
    E.g. n=100, T=16, K=3 -> [0, 42, 84]; K=10 -> [0, 9, 18, ..., 81] (floor(84 / 9) = 9)."""
    d = max(n - length, 0)
    if clips == 1:
        return np.array([d // 2], dtype=np.int64)
    return np.arange(clips, dtype=np.int64) * (d // (clips - 1))


def view_boxes(width: int, height: int, crops: int) -> np.ndarray:
    """The C square crop boxes of multi-view testing (C in VIEW_CROPS), PySlowFast's uniform_crop(frames,
    size=short side, spatial_idx) at the maximum scale: side = the short side, covered whole; along the long
    side, with free = long - side, offsets 0, ceil(free / 2), free for spatial_idx 0, 1, 2 (C = 3: both ends and
    the centre) and ceil(free / 2) for C = 1 (spatial_idx 1). Landscape or square: along x; portrait: along y.
    (C, 3) int64 (x0, y0, side). E.g. 640x360, C=3 -> x0 = 0, 140, 280; 641x360 -> 0, 141, 281 (ceil).
    Note the rounding: crop_box's centre box (val and eval modes) rounds down, (641 - 360) // 2 = 140."""
    if crops not in VIEW_CROPS:
        raise ValueError(f"crops must be one of {VIEW_CROPS} (PySlowFast's uniform_crop), got {crops}")
    side = max(min(width, height), 1)
    free = max(width, height) - side
    offsets = np.array([0, -(-free // 2), free] if crops == 3 else [-(-free // 2)], np.int64)
    zeros = np.zeros(crops, np.int64)
    x0, y0 = (offsets, zeros) if width >= height else (zeros, offsets)
    return np.stack([x0, y0, np.full(crops, side, np.int64)], axis=1)


def crop_box(width: int, height: int, position: int, scale: float) -> tuple[int, int, int]:
    """Square crop box (x0, y0, side) in pixels for a position index into POSITIONS and a scale.

    side = floor(short side * scale); corners are flush with the frame's edges; the centre box starts at
    ((W - side) // 2, (H - side) // 2).
    """
    side = int(np.floor(min(width, height) * scale + 1e-9))  # 1e-9: scale 1 and 1/2 are exact
    side = max(side, 1)
    name = POSITIONS[position]
    if name == "c":
        return (width - side) // 2, (height - side) // 2, side
    x0 = 0 if name[1] == "l" else width - side
    y0 = 0 if name[0] == "t" else height - side
    return x0, y0, side


@dataclass(frozen=True)
class Plan:
    """One epoch of clips for one rank, in loading order (M clips).

    rows:      (M,) int64   row index into the manifest in use
    frames:    (M, T) int64 frame indices into the row's file (start_frame already added)
    boxes:     (M, 3) int64 crop box (x0, y0, side) in pixels of the stored video
    flips:     (M,) bool    horizontal flip
    positions: (M,) int64   index into POSITIONS (for tests and statistics); views mode: the crop's index j
    scales:    (M,) int64   index into SCALES
    starts:    (M,) int64   clip start relative to the row (before the modulo)
    """

    rows: np.ndarray
    frames: np.ndarray
    boxes: np.ndarray
    flips: np.ndarray
    positions: np.ndarray
    scales: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray | slice) -> Plan:
        return Plan(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def _rng(seed: int, epoch: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose])


def rank_share(total: int, rank: int, world: int) -> slice:
    """Contiguous share of `total` items for `rank`: sizes differ by at most one, union = everything."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world_size {world}")
    return slice(rank * total // world, (rank + 1) * total // world)


def train_steps(num_rows: int, world: int, batch: int) -> int:
    """Steps per epoch in train mode: every rank gets the same number of full batches."""
    return (num_rows // world) // batch


def plan_epoch(
    num_frames: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    *,
    mode: str,
    epoch: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    batch: int = 1,
    length: int = 16,
    start_frames: np.ndarray | None = None,
    clips: int = 1,
    crops: int = 1,
) -> Plan:
    """The clips rank `rank` of `world` loads in epoch `epoch`.

    num_frames, widths, heights, start_frames: (V,) per manifest row (n = end_frame - start_frame).
    train: the rows permuted by (seed, epoch), the same permutation on all ranks; rank r takes the r-th
      contiguous block of (V // world) // batch * batch rows (equal steps, partial batch dropped); each row's
      start, position, scale and flip come from arrays drawn once for all V rows from (seed, epoch), so a
      row's clip does not depend on world size, rank or order.
    val: one centre clip per row, centre crop at scale 1; eval: every window of eval_starts per row (the
      paper's protocol); views: clips x crops views per row, view_starts x view_boxes, clip-major (each clip's
      crops together); val, eval and views go in manifest order and rank r takes a contiguous share (union
      over ranks = everything exactly once).
    Linear time, no Python loop over rows: the same values as center_start, eval_starts, view_starts,
    view_boxes, clip_frames and crop_box row by row (tests/test_sampling.py checks it), ~0.1 s for 240k rows in train mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world_size {world}")
    if clips < 1 or crops < 1:
        raise ValueError(f"clips and crops must be >= 1, got {clips} and {crops}")
    if crops not in VIEW_CROPS:
        raise ValueError(f"crops must be one of {VIEW_CROPS} (PySlowFast's uniform_crop), got {crops}")
    n = np.asarray(num_frames, dtype=np.int64)
    v = len(n)
    if v and n.min() < 1:
        raise ValueError(f"a row needs at least one frame, got n={n.min()} (row {int(n.argmin())})")
    offset = np.zeros(v, np.int64) if start_frames is None else np.asarray(start_frames, np.int64)
    widths = np.asarray(widths, np.int64)
    heights = np.asarray(heights, np.int64)
    if mode == "train":
        order = _rng(seed, epoch, 0).permutation(v)
        per_rank = train_steps(v, world, batch) * batch
        rows = order[rank * per_rank : (rank + 1) * per_rank]
        g = _rng(seed, epoch, 1)
        all_starts = g.integers(0, train_start_high(n, length))  # (V,) uniform, last start included
        all_pos = g.integers(0, len(POSITIONS), size=v)
        all_scale = g.integers(0, len(SCALES), size=v)
        all_flip = g.integers(0, 2, size=v).astype(bool)
        starts, pos, scale, flips = all_starts[rows], all_pos[rows], all_scale[rows], all_flip[rows]
    elif mode == "views":
        all_rows, all_starts, all_crops = _views(n, length, clips, crops)
        share = rank_share(len(all_rows), rank, world)
        rows, starts, pos = all_rows[share], all_starts[share], all_crops[share]
        scale = np.zeros(len(rows), np.int64)
        flips = np.zeros(len(rows), bool)
        frames = clip_frames_of(starts, n[rows], length, offset[rows])
        boxes = _view_boxes_of(widths[rows], heights[rows], pos, crops)
        return Plan(rows, frames, boxes, flips, pos, scale, starts)
    else:
        if mode == "val":
            all_rows = np.arange(v, dtype=np.int64)
            all_starts = np.maximum((n - length) // 2, 0)  # center_start
        else:
            all_rows, all_starts = _eval_windows(n, length)
        share = rank_share(len(all_rows), rank, world)
        rows, starts = all_rows[share], all_starts[share]
        pos = np.full(len(rows), CENTER, np.int64)
        scale = np.zeros(len(rows), np.int64)
        flips = np.zeros(len(rows), bool)
    rows = rows.astype(np.int64)
    frames = clip_frames_of(starts, n[rows], length, offset[rows])
    boxes = crop_boxes(widths[rows], heights[rows], pos, scale)
    return Plan(rows, frames, boxes, flips, pos.astype(np.int64), scale.astype(np.int64), starts.astype(np.int64))


# ---- the scalar rules above, for many rows at once (plan_epoch) -------------------------------------------------

_SCALES = np.array(SCALES)  # (5,) float64
# Box origin per position in halves of the free space (W - side, H - side): 0 = flush left/top, 2 = flush
# right/bottom, 1 = centred (crop_box's (W - side) // 2).
_X_HALVES = np.array([1 if p == "c" else 2 * (p[1] == "r") for p in POSITIONS], np.int64)
_Y_HALVES = np.array([1 if p == "c" else 2 * (p[0] == "b") for p in POSITIONS], np.int64)


def _eval_windows(n: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """eval_starts of every row, concatenated in row order: (rows (K,) int64, starts (K,) int64)."""
    count = np.where(n >= length, (n - length) // length + 1, 1)  # len(eval_starts(n, length))
    rows = np.repeat(np.arange(len(n), dtype=np.int64), count)
    first = np.cumsum(count) - count  # index of each row's first window
    starts = (np.arange(len(rows), dtype=np.int64) - first[rows]) * length
    return rows, starts


def _views(n: np.ndarray, length: int, clips: int, crops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """view_starts x crop indices of every row, clip-major: (rows, starts, crop indices), each (V * K * C,)."""
    d = np.maximum(n - length, 0)[:, None]  # (V, 1)
    k = np.arange(clips, dtype=np.int64)[None, :]
    starts = k * (d // (clips - 1)) if clips > 1 else d // 2  # (V, K), view_starts
    shape = (len(n), clips, crops)
    rows = np.broadcast_to(np.arange(len(n), dtype=np.int64)[:, None, None], shape).ravel()
    crop = np.broadcast_to(np.arange(crops, dtype=np.int64)[None, None, :], shape).ravel()
    return rows, np.broadcast_to(starts[:, :, None], shape).ravel(), crop


def _view_boxes_of(widths: np.ndarray, heights: np.ndarray, j: np.ndarray, crops: int) -> np.ndarray:
    """view_boxes(w, h, crops)[j] for M views: (M,) widths, heights, crop indices -> (M, 3) int64."""
    side = np.maximum(np.minimum(widths, heights), 1)
    free = np.maximum(widths, heights) - side
    idx = j if crops == 3 else np.ones_like(j)  # uniform_crop's spatial_idx: C = 1 is the centre crop
    offset = np.where(idx == 0, 0, np.where(idx == 2, free, -(-free // 2)))
    landscape = widths >= heights
    x0, y0 = np.where(landscape, offset, 0), np.where(landscape, 0, offset)
    return np.stack([x0, y0, side], axis=1).reshape(-1, 3).astype(np.int64)


def clip_frames_of(starts: np.ndarray, n: np.ndarray, length: int, offset: np.ndarray) -> np.ndarray:
    """clip_frames for M clips: (M,) starts, row lengths n and offsets -> (M, length) int64."""
    t = np.arange(length, dtype=np.int64)
    return offset[:, None] + (np.asarray(starts, np.int64)[:, None] + t) % n[:, None]


def crop_boxes(widths: np.ndarray, heights: np.ndarray, positions: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """crop_box for M clips: (M,) widths, heights, position and scale indices -> (M, 3) int64 (x0, y0, side).

    The same float64 arithmetic as crop_box, so the sides are bit-identical.
    """
    short = np.minimum(widths, heights).astype(np.float64)
    side = np.maximum(np.floor(short * _SCALES[scales] + 1e-9).astype(np.int64), 1)
    x0 = (widths - side) * _X_HALVES[positions] // 2
    y0 = (heights - side) * _Y_HALVES[positions] // 2
    return np.stack([x0, y0, side], axis=1).reshape(-1, 3)
