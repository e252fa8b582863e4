"""pipeline/video.py's NV12 layout and pipeline/bitstream.py's clip span: the pieces written once and shared by
preparation, inference and the NVDEC backend's CPU twin (their end-to-end behaviour: test_prepare_timing.py,
test_infer.py, test_nvdec.py)."""

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, VideoReformatter

from pipeline.bitstream import clip_span
from pipeline.index.table import VideoIndex
from pipeline.video import Geometry, to_nv12


def test_to_nv12_puts_luma_first_then_u_and_v_interleaved():
    h, w = 8, 18  # 18 px: the planes' rows are padded in memory (line_size > width)
    planes = np.arange(h * 3 // 2 * w, dtype=np.int64).astype(np.uint8).reshape(h * 3 // 2, w)  # PyAV's layout
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    assert frame.planes[0].line_size > w
    y, u, v = planes[:h], planes[h:h + h // 4].reshape(h // 2, w // 2), planes[h + h // 4:].reshape(h // 2, w // 2)
    out = to_nv12(frame)
    assert out.shape == (12, 18) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:h], y)
    np.testing.assert_array_equal(out[h:, 0::2], u)
    np.testing.assert_array_equal(out[h:, 1::2], v)
    assert out[h, :4].tolist() == [u[0, 0], v[0, 0], u[0, 1], v[0, 1]] == [144, 180, 145, 181]
    into = np.zeros((12, 18), np.uint8)
    assert to_nv12(frame, into) is into and np.array_equal(into, out)


@pytest.mark.parametrize("fmt,tag,levels", [
    ("yuv420p", None, (0, 255)),  # limited range (untagged reads as limited): copied as it is
    ("yuv420p", ColorRange.MPEG, (0, 255)),
    ("yuv420p", ColorRange.JPEG, (16, 235)),  # full range (some phones' H.264): brought to the limited range
    ("yuvj420p", None, (16, 235)),  # JPEG's format is full range by definition
])
def test_geometry_brings_full_range_frames_to_the_limited_range(fmt, tag, levels):
    h, w = 8, 16
    planes = np.full((h * 3 // 2, w), 128, np.uint8)
    planes[:h, : w // 2], planes[:h, w // 2:] = 0, 255  # Y: a black half and a white half; grey chroma
    frame = av.VideoFrame.from_ndarray(planes, format=fmt)
    if tag is not None:
        frame.color_range = tag
    out = Geometry.of(frame, None, h).apply(frame, VideoReformatter())
    assert out.format.name == "yuv420p" and (out.width, out.height) == (w, h)
    y = out.to_ndarray()[:h]
    assert np.unique(y[:, : w // 2]).tolist() == [levels[0]] and np.unique(y[:, w // 2:]).tolist() == [levels[1]]
    assert np.unique(out.to_ndarray()[h:]).tolist() == [128]


def test_clip_span_starts_at_the_keyframe_at_or_before_the_first_frame():
    keys = np.arange(40) % 16 == 0  # keyframes at 0, 16, 32
    ix = VideoIndex("vp9", 64, 48, 25.0, np.arange(40, dtype=np.int64), np.ones(40, np.int32), keys)
    assert clip_span(ix, np.arange(20, 36)) == (16, 35)
    assert clip_span(ix, np.arange(16, 32)) == (16, 31)
    assert clip_span(ix, np.array([38, 39, 0, 1])) == (0, 39)  # a looped clip: all it shows
    assert clip_span(ix, np.arange(33, 37)) == (32, 36)
