"""pipeline/kernels.py (the pyav backend's compiled loops) against plain numpy and float64, and YUV420Clip's
two outputs (uint8 planes for the GPU, float RGB on the CPU) against each other."""

import numpy as np
import pytest
import torch
from test_augment import cpu_clip, fed_clip, yuv420_frames

from pipeline.augment import conversion, yuv_to_rgb
from pipeline.normalisation import PRESETS

pytest.importorskip("numba", reason="numba (requirements.txt; the pyav backend's compiled loops) is not installed")
from pipeline import kernels  # noqa: E402


def test_pack4_interleaves_four_regions_byte_k_from_plane_k():
    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 256, (40, 64), dtype=np.uint8) for _ in range(4)]
    dst = np.zeros((3, 17, 23, 4), np.uint8)
    kernels.pack4(*planes, 5, 9, dst[1].view(np.uint32)[..., 0])
    for k in range(4):
        np.testing.assert_array_equal(dst[1, ..., k], planes[k][5:22, 9:32])
    assert not dst[0].any() and not dst[2].any()  # nothing written outside the group


def reference_rgb(y: np.ndarray, c: np.ndarray, t: int, flip: bool, matrix: np.ndarray) -> np.ndarray:
    """packed_to_rgb's result in float64, a frame and a channel at a time: (3, T, S, S)."""
    q = y.shape[0]
    a, b, lo, hi = matrix[:, :3], matrix[:, 3], matrix[:, 4], matrix[:, 5]
    out = np.empty((3, t, *y.shape[1:3]), np.float64)
    for f in range(t):
        p = np.stack([y[f // 4, ..., f % 4], c[f // 4, ..., f % 4], c[q + f // 4, ..., f % 4]]).astype(np.float64)
        rgb = np.einsum("ij,jhw->ihw", a, p) + b[:, None, None]
        out[:, f] = np.clip(rgb, lo[:, None, None], hi[:, None, None])
    return out[..., ::-1] if flip else out


@pytest.mark.parametrize("t", [16, 5])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("norm", ["kinetics", "kinetics-0-1"])
def test_packed_to_rgb_is_the_affine_map_and_clamp_per_frame(t, flip, norm):
    """Frame 4q + k from byte k of group q (U in c[q], V in c[Q + q]; T = 5: a last group of 1), flipped,
    converted, normalised and clamped: within float32 rounding of float64, and clamped values exactly the
    bounds. Random planes reach both clamps."""
    rng = np.random.default_rng(t + flip)
    q, s = -(-t // 4), 20
    y = rng.integers(0, 256, (q, s, s, 4), dtype=np.uint8)
    c = rng.integers(0, 256, (2 * q, s, s, 4), dtype=np.uint8)
    matrix = np.column_stack(conversion(PRESETS[norm]))
    out = np.full((3, t, s, s), np.nan, np.float32)
    kernels.packed_to_rgb(y.view(np.uint32)[..., 0], c.view(np.uint32)[..., 0], flip, matrix, out)
    want = reference_rgb(y, c, t, flip, matrix)
    scale = np.abs(want).max()
    np.testing.assert_allclose(out, want, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
    for i in range(3):
        for bound in matrix[i, 4:]:
            hit = want[i] == bound
            assert hit.any() and (out[i][hit] == np.float32(bound)).all()


def clip_rgb(frames, box, flip: bool, size: int, norm, order=None) -> np.ndarray:
    """YUV420Clip.to_rgb (the pyav backend's CPU output), frames put in `order`."""
    out = np.empty((3, len(frames), size, size), np.float32)
    fed_clip(frames, box, flip, size, order).to_rgb(out, np.column_stack(conversion(norm)))
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_clip_to_rgb_equals_its_planes_converted(flip):
    """to_rgb (steps 1-5: frames packed 4 at a time by pack4, converted by packed_to_rgb) equals resize's uint8
    planes (the GPU path's) converted by yuv_to_rgb (torch), within float32 rounding: 10 frames (groups of 4, 4
    and 2), one of them a looped repeat, 58 px frames (padded rows)."""
    rng = np.random.default_rng(3)
    frames = yuv420_frames(rng, 9, 46, 58)
    frames.insert(6, frames[1])
    box, norm = (7, 3, 33), PRESETS["kinetics"]
    got = clip_rgb(frames, box, flip, 24, norm)
    want = yuv_to_rgb(torch.from_numpy(cpu_clip(frames, box, flip, 24))[None], norm)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got[:, 6], got[:, 1])


def test_frames_put_out_of_order_give_the_same_clip():
    """Groups left incomplete when a later group starts are copied a frame at a time and completed later:
    the same pixels as in order."""
    rng = np.random.default_rng(4)
    frames = yuv420_frames(rng, 10, 46, 58)
    box, norm = (0, 0, 46), PRESETS["kinetics"]
    in_order = clip_rgb(frames, box, True, 24, norm)
    shuffled = clip_rgb(frames, box, True, 24, norm, order=[0, 1, 4, 8, 2, 3, 9, 5, 6, 7])
    np.testing.assert_array_equal(shuffled, in_order)
