"""Exact checks of the sampling and augmentation parameters (pipeline.sampling), no video decoding: the paper's
training draws, its eval windows, and multi-view testing (K clips x C crops)."""

import math

import numpy as np
import pytest

from pipeline.sampling import (
    POSITIONS,
    SCALES,
    center_start,
    clip_frames,
    crop_box,
    eval_starts,
    plan_epoch,
    train_steps,
    view_boxes,
    view_starts,
)

T = 16
# chi-square critical values at p = 0.001 (df -> value); a fixed seed makes the test deterministic.
CHI2_999 = {1: 10.828, 4: 18.467, 24: 51.179}


def chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_clip_frames_consecutive_looped_and_offset():
    np.testing.assert_array_equal(clip_frames(3, 40, 5), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(clip_frames(0, 10, T), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(clip_frames(0, 3, 7, offset=100), [100, 101, 102, 100, 101, 102, 100])
    assert clip_frames(24, 40, T)[-1] == 39  # the last start reaches the last frame
    with pytest.raises(ValueError):
        clip_frames(0, 0, T)


def test_center_and_eval_starts():
    assert center_start(40, T) == 12 and center_start(16, T) == 0 and center_start(5, T) == 0
    assert center_start(17, T) == 0 and center_start(18, T) == 1
    assert list(eval_starts(10, T)) == [0]  # shorter than T: one looped window
    assert list(eval_starts(16, T)) == [0]
    assert list(eval_starts(31, T)) == [0]
    assert list(eval_starts(32, T)) == [0, 16]
    assert list(eval_starts(100, T)) == [0, 16, 32, 48, 64, 80]


@pytest.mark.parametrize(
    ("width", "height", "sides"),
    [(96, 64, [64, 53, 45, 38, 32]), (640, 360, [360, 302, 254, 214, 180]), (360, 480, [360, 302, 254, 214, 180])],
)
def test_crop_box_all_positions_and_scales(width, height, sides):
    for s, side in enumerate(sides):
        expected = {
            "tl": (0, 0, side),
            "tr": (width - side, 0, side),
            "bl": (0, height - side, side),
            "br": (width - side, height - side, side),
            "c": ((width - side) // 2, (height - side) // 2, side),
        }
        for p, name in enumerate(POSITIONS):
            assert crop_box(width, height, p, SCALES[s]) == expected[name], (name, s)


def _plan(n, mode, epoch=0, seed=0, rank=0, world=1, batch=1, starts=None):
    n = np.asarray(n)
    return plan_epoch(n, np.full(len(n), 96), np.full(len(n), 64), mode=mode, epoch=epoch, seed=seed, rank=rank,
                      world=world, batch=batch, length=T, start_frames=starts)


def test_train_plan_frames_match_starts_and_boxes_match_draws():
    n = np.array([40, 10, 100, 16, 17])
    p = _plan(n, "train", starts=np.array([0, 5, 0, 0, 3]), batch=1)
    assert sorted(p.rows) == [0, 1, 2, 3, 4]
    offset = {0: 0, 1: 5, 2: 0, 3: 0, 4: 3}
    for k, r in enumerate(p.rows):
        assert 0 <= p.starts[k] <= max(n[r] - T, 0)
        np.testing.assert_array_equal(p.frames[k], offset[r] + (p.starts[k] + np.arange(T)) % n[r])
        assert tuple(p.boxes[k]) == crop_box(96, 64, p.positions[k], SCALES[p.scales[k]])


def test_train_start_uniform_including_last():
    n = 40  # starts 0..24: 25 values
    starts = np.concatenate([_plan([n] * 50, "train", epoch=e, seed=7).starts for e in range(100)])
    counts = np.bincount(starts, minlength=25)
    assert len(counts) == 25 and counts[0] > 0 and counts[24] > 0
    assert chi2(counts) < CHI2_999[24]


def test_positions_scales_flips_uniform():
    p = [_plan(np.full(200, 50), "train", epoch=e, seed=3) for e in range(25)]
    pos = np.concatenate([x.positions for x in p])
    sc = np.concatenate([x.scales for x in p])
    fl = np.concatenate([x.flips for x in p]).astype(int)
    assert chi2(np.bincount(pos, minlength=5)) < CHI2_999[4]
    assert chi2(np.bincount(sc, minlength=5)) < CHI2_999[4]
    assert chi2(np.bincount(fl, minlength=2)) < CHI2_999[1]
    # independent of each other: all 5 x 5 x 2 combinations occur
    assert len(set(zip(pos, sc, fl, strict=True))) == 50


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_sharding_equal_disjoint_and_independent_of_world(world):
    n = np.arange(20, 123)  # 103 rows
    batch = 4
    full = _plan(n, "train", epoch=2, seed=1)
    by_row = {int(r): k for k, r in enumerate(full.rows)}
    plans = [_plan(n, "train", epoch=2, seed=1, rank=r, world=world, batch=batch) for r in range(world)]
    steps = train_steps(len(n), world, batch)
    rows = np.concatenate([p.rows for p in plans])
    assert all(len(p) == steps * batch for p in plans)
    assert len(set(rows.tolist())) == len(rows)  # disjoint
    for p in plans:  # a row's clip is the same whatever the world size
        for k, r in enumerate(p.rows):
            j = by_row[int(r)]
            np.testing.assert_array_equal(p.frames[k], full.frames[j])
            np.testing.assert_array_equal(p.boxes[k], full.boxes[j])
            assert p.flips[k] == full.flips[j]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_and_val_union_is_everything_once(world):
    n = np.array([10, 16, 47, 48, 100, 5, 33])
    starts = np.array([0, 0, 0, 0, 7, 0, 0])
    expected = [(r, s) for r in range(len(n)) for s in eval_starts(int(n[r]), T)]
    got = []
    for rank in range(world):
        p = _plan(n, "eval", rank=rank, world=world, batch=4, starts=starts)
        got += list(zip(p.rows.tolist(), p.starts.tolist(), strict=True))
        assert (p.positions == POSITIONS.index("c")).all() and (p.scales == 0).all() and not p.flips.any()
        for k, r in enumerate(p.rows):
            np.testing.assert_array_equal(p.frames[k], starts[r] + (p.starts[k] + np.arange(T)) % n[r])
    assert sorted(got) == sorted(expected) and len(got) == len(expected) == 1 + 1 + 2 + 3 + 6 + 1 + 2
    vals = [_plan(n, "val", rank=r, world=world) for r in range(world)]
    assert sorted(np.concatenate([v.rows for v in vals]).tolist()) == list(range(len(n)))
    for v in vals:
        assert all(s == center_start(int(n[r]), T) for r, s in zip(v.rows, v.starts, strict=True))


def test_determinism_and_epoch_change():
    n = np.arange(20, 60)
    a, b = _plan(n, "train", epoch=4, seed=9), _plan(n, "train", epoch=4, seed=9)
    for f in ("rows", "frames", "boxes", "flips"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = _plan(n, "train", epoch=5, seed=9)
    assert not np.array_equal(a.rows, c.rows) and not np.array_equal(a.starts[np.argsort(a.rows)],
                                                                     c.starts[np.argsort(c.rows)])
    d = _plan(n, "train", epoch=4, seed=10)
    assert not np.array_equal(a.rows, d.rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        _plan([20], "test")
    with pytest.raises(ValueError, match="rank"):
        _plan([20] * 4, "eval", rank=2, world=2)


@pytest.mark.parametrize("mode", ["train", "val", "eval"])
def test_vectorised_plan_equals_the_per_row_rules(mode):
    """plan_epoch computes all rows at once; every clip equals the scalar rules (clip_frames, crop_box,
    center_start, eval_starts) applied row by row, on random lengths (short ones included), sizes and offsets."""
    rng = np.random.default_rng(11)
    for trial in range(20):
        v = int(rng.integers(1, 60))
        n = rng.integers(1, 120, v)
        widths, heights = rng.integers(1, 700, v), rng.integers(1, 500, v)
        offsets = rng.integers(0, 50, v)
        world = int(rng.integers(1, 4))
        rank, batch = int(rng.integers(0, world)), int(rng.integers(1, 5))
        p = plan_epoch(n, widths, heights, mode=mode, epoch=trial, seed=3, rank=rank, world=world, batch=batch,
                       length=T, start_frames=offsets)
        assert p.frames.shape == (len(p), T) and p.boxes.shape == (len(p), 3)
        for k, r in enumerate(p.rows):
            expected = clip_frames(int(p.starts[k]), int(n[r]), T, int(offsets[r]))
            np.testing.assert_array_equal(p.frames[k], expected)
            assert tuple(p.boxes[k]) == crop_box(int(widths[r]), int(heights[r]), int(p.positions[k]),
                                                 SCALES[int(p.scales[k])])
        if mode == "val":
            assert [int(s) for s in p.starts] == [center_start(int(n[r]), T) for r in p.rows]
        if mode == "eval":  # this rank's share of every (row, window) pair, in manifest order
            pairs = [(r, int(s)) for r in range(v) for s in eval_starts(int(n[r]), T)]
            share = pairs[rank * len(pairs) // world : (rank + 1) * len(pairs) // world]
            assert list(zip(p.rows.tolist(), p.starts.tolist(), strict=True)) == share


# ---- multi-view testing: K clips x C crops, PySlowFast's test views ------------------------------------------


def slowfast_start(video_size: int, clip_size: int, clip_idx: int, num_clips_uniform: int) -> int:
    """facebookresearch/SlowFast slowfast/datasets/decoder.py get_start_end_idx(..., use_offset=True)'s start_idx,
    transcribed (the temporal part of the protocol pipeline.sampling.view_starts reproduces)."""
    delta = max(video_size - clip_size, 0)
    if num_clips_uniform == 1:
        return math.floor(delta / 2)
    return clip_idx * math.floor(delta / (num_clips_uniform - 1))


def slowfast_crop(height: int, width: int, size: int, spatial_idx: int) -> tuple[int, int]:
    """slowfast/datasets/transform.py uniform_crop's (x_offset, y_offset), transcribed (scale_size None)."""
    y_offset = int(math.ceil((height - size) / 2))
    x_offset = int(math.ceil((width - size) / 2))
    if height > width:
        if spatial_idx == 0:
            y_offset = 0
        elif spatial_idx == 2:
            y_offset = height - size
    else:
        if spatial_idx == 0:
            x_offset = 0
        elif spatial_idx == 2:
            x_offset = width - size
    return x_offset, y_offset


@pytest.mark.parametrize(("n", "clips", "starts"), [
    (100, 1, [42]),  # the centre clip: floor((100 - 16) / 2), as center_start
    (100, 2, [0, 84]),
    (100, 3, [0, 42, 84]),
    (100, 10, [0, 9, 18, 27, 36, 45, 54, 63, 72, 81]),  # k * floor(84 / 9): the last clip ends 3 frames early
    (40, 4, [0, 8, 16, 24]),
    (33, 3, [0, 8, 16]),  # k * floor(17 / 2); floor(k * 17 / 2) would end at 17
    (300, 10, [31 * k for k in range(10)]),  # a 10 s Kinetics clip at 30 fps
    (18, 5, [0, 0, 0, 0, 0]),  # floor(2 / 4) = 0: all K clips start at 0
    (16, 3, [0, 0, 0]),
    (10, 3, [0, 0, 0]),  # shorter than a clip: looped from frame 0 (clip_frames), K times
    (10, 1, [0]),
])  # fmt: skip
def test_view_starts_exact(n, clips, starts):
    assert view_starts(n, T, clips).tolist() == starts
    assert starts == [slowfast_start(n, T, k, clips) for k in range(clips)]
    assert view_starts(n, T, 1).tolist() == [center_start(n, T)]


def test_view_starts_and_boxes_are_slowfast_everywhere():
    for n in range(1, 400):
        for clips in (1, 2, 3, 4, 5, 7, 10, 30):
            assert view_starts(n, T, clips).tolist() == [slowfast_start(n, T, k, clips) for k in range(clips)]
    for w in range(1, 80):
        for h in range(1, 80):
            side = min(w, h)
            boxes = view_boxes(w, h, 3).tolist()
            assert boxes == [[*slowfast_crop(h, w, side, j), side] for j in range(3)]
            assert view_boxes(w, h, 1).tolist() == [[*slowfast_crop(h, w, side, 1), side]]


@pytest.mark.parametrize(("width", "height", "crops", "boxes"), [
    (640, 360, 1, [(140, 0, 360)]),  # landscape, centre = crop_box's centre at scale 1 (even free space)
    (640, 360, 3, [(0, 0, 360), (140, 0, 360), (280, 0, 360)]),  # left end, centre, right end
    (641, 360, 3, [(0, 0, 360), (141, 0, 360), (281, 0, 360)]),  # centre ceil((641 - 360) / 2) = 141
    (641, 360, 1, [(141, 0, 360)]),  # ... where crop_box's centre (val/eval modes) rounds down: 140
    (360, 640, 3, [(0, 0, 360), (0, 140, 360), (0, 280, 360)]),  # portrait: along y, top to bottom
    (360, 641, 1, [(0, 141, 360)]),
    (48, 32, 3, [(0, 0, 32), (8, 0, 32), (16, 0, 32)]),
    (64, 64, 3, [(0, 0, 64)] * 3),  # square: C equal boxes
])  # fmt: skip
def test_view_boxes_exact(width, height, crops, boxes):
    assert [tuple(b) for b in view_boxes(width, height, crops).tolist()] == boxes


def test_crops_other_than_one_or_three_are_refused():
    for crops in (2, 4, 5):
        with pytest.raises(ValueError, match=r"crops must be one of \(1, 3\)"):
            view_boxes(640, 360, crops)
        with pytest.raises(ValueError, match=r"crops must be one of \(1, 3\)"):
            plan_epoch([20], [96], [64], mode="views", epoch=0, seed=0, clips=2, crops=crops)
    assert crop_box(641, 360, POSITIONS.index("c"), 1.0) == (140, 0, 360)  # the paper's centre crop: unchanged


@pytest.mark.parametrize("world", [1, 2, 3])
def test_views_plan_is_every_view_of_every_row_once_clip_major(world):
    """mode="views": K x C views per row in manifest order, clip-major (a clip's C crops together), frames and
    boxes by view_starts and view_boxes, no flips; ranks take contiguous shares whose union is everything."""
    n = np.array([100, 10, 33, 16])
    widths, heights = np.array([640, 48, 360, 64]), np.array([360, 32, 640, 64])
    offsets = np.array([0, 5, 0, 3])
    clips, crops = 3, 3
    expected = [(r, int(s), j) for r in range(4) for s in view_starts(int(n[r]), T, clips) for j in range(crops)]
    got = []
    for rank in range(world):
        p = plan_epoch(n, widths, heights, mode="views", epoch=0, seed=0, rank=rank, world=world, batch=2,
                       length=T, start_frames=offsets, clips=clips, crops=crops)
        got += list(zip(p.rows.tolist(), p.starts.tolist(), p.positions.tolist(), strict=True))
        assert not p.flips.any() and (p.scales == 0).all()
        for k, r in enumerate(p.rows):
            np.testing.assert_array_equal(p.frames[k], offsets[r] + (p.starts[k] + np.arange(T)) % n[r])
            assert tuple(p.boxes[k]) == tuple(view_boxes(int(widths[r]), int(heights[r]), crops)[p.positions[k]])
    assert got == expected and len(got) == 4 * clips * crops


def test_views_vectorised_equals_the_per_row_rules():
    rng = np.random.default_rng(5)
    for trial in range(20):
        v = int(rng.integers(1, 40))
        n, widths, heights = rng.integers(1, 120, v), rng.integers(1, 700, v), rng.integers(1, 500, v)
        clips, crops = int(rng.integers(1, 11)), int(rng.choice([1, 3]))
        p = plan_epoch(n, widths, heights, mode="views", epoch=trial, seed=0, length=T, clips=clips, crops=crops)
        assert len(p) == v * clips * crops
        starts = np.concatenate([np.repeat(view_starts(int(x), T, clips), crops) for x in n])
        boxes = np.concatenate([np.tile(view_boxes(int(w), int(h), crops), (clips, 1))
                                for w, h in zip(widths, heights, strict=True)])
        np.testing.assert_array_equal(p.starts, starts)
        np.testing.assert_array_equal(p.boxes, boxes)
    with pytest.raises(ValueError, match="clips and crops"):
        plan_epoch([20], [96], [64], mode="views", epoch=0, seed=0, clips=0)
