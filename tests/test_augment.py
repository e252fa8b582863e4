"""pipeline/augment.py: the batched pixel operations against their per-clip reference (crop, then torch's
antialiased bilinear resize, round, flip, minus mean), the colour conversion against DALI's CPU decoder, and
layout. The same functions run on the GPU (tests/test_nvdec.py, marked gpu)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import YUV_TO_RGB, augment_nv12, augment_rgb, chunk_clips, nv12_crop_to_rgb
from pipeline.normalisation import Normalisation

S = 24
MEAN = Normalisation((110.5, 103.25, 96.0))


def reference_clip(frames: np.ndarray, box, flip: bool, size: int, norm: Normalisation) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (3, T, S, S) float32, one clip at a time: the decord backend's old transform."""
    x0, y0, side = box
    x = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y0 + side, x0:x0 + side])).permute(0, 3, 1, 2).float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    if flip:
        x = x.flip(-1)
    x = x - torch.tensor(norm.mean).view(1, 3, 1, 1)  # (value scale 255, std 1: the mean alone)
    return x.permute(1, 0, 2, 3).numpy()


def random_frames(rng, n, t, h, w):
    return rng.integers(0, 256, (n, t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("side", [1, 7, S - 1, S, S + 1, 50, 97])
def test_rgb_crop_resize_flip_equal_the_per_clip_reference(side):
    rng = np.random.default_rng(side)
    h, w = 100, 131
    frames = random_frames(rng, 4, 3, h, w)
    boxes = np.array([[0, 0, side], [w - side, h - side, side], [(w - side) // 2, 3, side], [5, h - side, side]])
    flips = np.array([False, True, True, False])
    out = augment_rgb(torch.from_numpy(frames), np.tile([h, w], (4, 1)), boxes, flips, S, MEAN)
    assert out.shape == (4, 3, 3, S, S) and out.dtype == torch.float32
    for k in range(4):
        np.testing.assert_array_equal(out[k].numpy(), reference_clip(frames[k], boxes[k], flips[k], S, MEAN))


def test_mixed_sides_and_frame_sizes_in_one_batch():
    """Clips of different crop sides (grouped internally) and different frame sizes (top-left of padded planes)
    come back in their own places, each equal to the per-clip reference."""
    rng = np.random.default_rng(1)
    sizes = np.array([[64, 96], [80, 80], [64, 96], [40, 60], [80, 80]])
    boxes = np.array([[10, 0, 64], [0, 0, 80], [32, 0, 32], [0, 2, 38], [7, 9, 57]])
    flips = np.array([True, False, False, True, True])
    frames = np.zeros((5, 2, 80, 96, 3), np.uint8)
    for k, (h, w) in enumerate(sizes):
        frames[k, :, :h, :w] = random_frames(rng, 1, 2, h, w)[0]
    out = augment_rgb(torch.from_numpy(frames), sizes, boxes, flips, S, MEAN)
    for k, (h, w) in enumerate(sizes):
        np.testing.assert_array_equal(out[k].numpy(), reference_clip(frames[k, :, :h, :w], boxes[k], flips[k], S, MEAN))


def test_chunks_bound_memory_without_changing_the_result(monkeypatch):
    import pipeline.augment as augment

    rng = np.random.default_rng(2)
    frames = random_frames(rng, 6, 2, 40, 50)
    args = (torch.from_numpy(frames), np.tile([40, 50], (6, 1)), np.tile([3, 1, 37], (6, 1)), np.arange(6) % 2 == 1,
            S, MEAN)
    whole = augment_rgb(*args)
    assert chunk_clips(16, 360, 2**30) == 2**30 // (16 * 360 * 360 * 24) and chunk_clips(16, 360, 1) == 1
    calls = []
    real = augment.resize_flip_normalize
    monkeypatch.setattr(augment, "resize_flip_normalize", lambda crop, *a: calls.append(len(crop)) or real(crop, *a))
    monkeypatch.setitem(augment.CHUNK_BYTES, "cpu", 1)  # one clip per chunk
    np.testing.assert_array_equal(augment_rgb(*args).numpy(), whole.numpy())
    assert calls == [1] * 6


def test_boxes_outside_the_frame_are_refused():
    frames = torch.zeros((1, 1, 10, 10, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        augment_rgb(frames, [[10, 10]], [[2, 0, 9]], [False], S, MEAN)


# ---- colour conversion ------------------------------------------------------------------------------------


def to_nv12(planes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """PyAV's yuv420p ndarray (H*3/2, W) -> Y (H, W) and NV12's interleaved UV plane (H/2, W)."""
    uv = np.empty((h // 2, w), np.uint8)
    uv[:, 0::2] = planes[h:h + h // 4].reshape(h // 2, w // 2)
    uv[:, 1::2] = planes[h + h // 4:].reshape(h // 2, w // 2)
    return planes[:h], uv


def bt601(yy, u, v):
    """The conversion written out per pixel in float64 (Y, U, V already at luma resolution)."""
    yuv = np.stack([yy - 16.0, u - 128.0, v - 128.0], axis=-1)
    return np.clip(np.round(yuv @ np.array(YUV_TO_RGB).T), 0, 255)


def test_nv12_conversion_is_bt601_with_centre_sited_bilinear_chroma():
    rng = np.random.default_rng(3)
    h, w = 12, 16
    yy = rng.integers(0, 256, (h, w)).astype(np.uint8)
    u = rng.integers(0, 256, (h // 2, w // 2)).astype(np.uint8)
    v = rng.integers(0, 256, (h // 2, w // 2)).astype(np.uint8)
    uv = np.empty((h // 2, w), np.uint8)
    uv[:, 0::2], uv[:, 1::2] = u, v

    def up(c):  # centre-sited bilinear x2 with edge clamping = torch's align_corners=False upsampling
        t = torch.from_numpy(c.astype(np.float64))[None, None]
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()

    want = bt601(yy.astype(np.float64), up(u), up(v))  # (H, W, 3)
    for x0, y0, side in [(0, 0, 12), (1, 1, 11), (3, 2, 9), (4, 0, 12)]:
        got = nv12_crop_to_rgb(torch.from_numpy(yy)[None, None], torch.from_numpy(uv)[None, None],
                               torch.tensor([[h, w]]), torch.tensor([[x0, y0, side]]), side, torch.tensor([0]))
        np.testing.assert_array_equal(got[0, 0].permute(1, 2, 0).numpy(), want[y0:y0 + side, x0:x0 + side])


def test_nv12_conversion_matches_dali_cpu_within_one_level(tmp_path):
    """Uniformly random Y, Cb, Cr (chroma's worst case) in a lossless VP9 file: DALI's CPU decoder's RGB and
    ours from PyAV's planes differ by at most 1 level (PyAV's own rgb24 differs by up to ~180 here)."""
    av = pytest.importorskip("av")
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    from prepare.sample import write_video

    h, w = 64, 96
    rng = np.random.default_rng(4)
    path = tmp_path / "random.webm"
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, shape in zip(frame.planes, [(h, w), (h // 2, w // 2), (h // 2, w // 2)], strict=True):
        plane.update(rng.integers(0, 256, shape, dtype=np.uint8).tobytes())
    write_video(path, [frame], 25, "libvpx-vp9", lossless=True)
    with av.open(str(path)) as c:
        planes = next(c.decode(video=0)).to_ndarray()  # yuv420p (H*3/2, W)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def graph():
        enc = fn.external_source(source=lambda: [np.fromfile(path, np.uint8)], batch=True, dtype=types.UINT8)
        return fn.decoders.video(enc, frames=np.array([0], np.int32), device="cpu")

    pipe = graph()
    pipe.build()
    dali = np.array(pipe.run()[0][0])[0].astype(np.float32)  # (H, W, 3)
    del pipe
    yy, uv = to_nv12(planes, h, w)
    ours = nv12_crop_to_rgb(torch.from_numpy(yy)[None, None], torch.from_numpy(uv)[None, None],
                            torch.tensor([[h, w]]), torch.tensor([[0, 0, 64]]), 64, torch.tensor([0]))
    diff = np.abs(ours[0, 0].permute(1, 2, 0).numpy() - dali[:, :64])
    # DALI's last row once in a while holds 0 where we (and the other rows) saturate at 255: a wrap-around
    # in DALI at the frame's bottom edge (seen with seeds 4 and 5, at one pixel each); the rest is within 1.
    assert diff[:-1].max() <= 1 and diff.mean() < 0.05


def test_augment_nv12_equals_rgb_path_on_the_converted_frames():
    """augment_nv12 = colour conversion of the whole frame, then augment_rgb: one arithmetic after the crop."""
    rng = np.random.default_rng(5)
    n, t, h = 3, 2, 48  # square frames: the whole frame is one crop box
    y = torch.from_numpy(rng.integers(0, 256, (n, t, h, h), dtype=np.uint8))
    uv = torch.from_numpy(rng.integers(0, 256, (n, t, h // 2, h), dtype=np.uint8))
    sizes = np.tile([h, h], (n, 1))
    boxes = np.array([[0, 0, 48], [16, 0, 32], [5, 7, 33]])
    flips = np.array([True, False, True])
    out = augment_nv12(y, uv, sizes, boxes, flips, S, MEAN)
    assert out.shape == (n, 3, t, S, S) and out.dtype == torch.float32
    rgb = nv12_crop_to_rgb(y, uv, torch.from_numpy(sizes), torch.tensor([[0, 0, h]] * n), h, torch.arange(n))
    ref = augment_rgb(rgb.permute(0, 1, 3, 4, 2).to(torch.uint8), sizes, boxes, flips, S, MEAN)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())


def test_mean_is_subtracted_per_channel():
    frames = torch.full((1, 2, 8, 8, 3), 200, dtype=torch.uint8)
    out = augment_rgb(frames, [[8, 8]], [[0, 0, 8]], [False], 4, MEAN)
    for c in range(3):
        assert torch.all(out[0, c] == 200 - MEAN.mean[c])


@pytest.mark.parametrize("name", ["kinetics", "activitynet", "kinetics-0-1", "activitynet-0-1"])
def test_every_preset_normalisation_is_its_formula(name):
    """(p * value_scale / 255 - mean) / std on the uint8 pixel p after crop, resize and flip, for both inputs:
    the same pixels normalised with each preset equal the formula applied to the un-normalised clip."""
    from pipeline.normalisation import PRESETS, Normalisation

    norm = PRESETS[name]
    rng = np.random.default_rng(9)
    frames = torch.from_numpy(random_frames(rng, 2, 2, 40, 60))
    args = ([[40, 60]] * 2, [[3, 0, 40], [20, 5, 35]], [False, True], S)
    raw = augment_rgb(frames, *args, Normalisation((0.0, 0.0, 0.0))).numpy().astype(np.float64)  # (N, 3, T, S, S)
    mean = np.array(norm.mean).reshape(1, 3, 1, 1, 1)
    std = np.array(norm.std).reshape(1, 3, 1, 1, 1)
    want = (raw * norm.value_scale / 255 - mean) / std
    np.testing.assert_allclose(augment_rgb(frames, *args, norm).numpy(), want, rtol=0, atol=2e-5)
    y = torch.from_numpy(rng.integers(0, 256, (2, 2, 40, 60), dtype=np.uint8))
    uv = torch.from_numpy(rng.integers(0, 256, (2, 2, 20, 60), dtype=np.uint8))
    raw = augment_nv12(y, uv, *args, Normalisation((0.0, 0.0, 0.0))).numpy().astype(np.float64)
    np.testing.assert_allclose(augment_nv12(y, uv, *args, norm).numpy(), (raw * norm.value_scale / 255 - mean) / std,
                               rtol=0, atol=2e-5)
    if norm.value_scale == 255 and norm.std == (1.0, 1.0, 1.0):  # the mean alone, bit for bit (no division)
        assert torch.equal(augment_rgb(frames, *args, norm), augment_rgb(frames, *args, Normalisation((0.0,) * 3))
                           - torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1, 1))
