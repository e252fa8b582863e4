"""The pinned stack imports and a DALI CPU-only pipeline builds and runs (no GPU, no driver needed)."""

import numpy as np


def test_decord_imports_and_exposes_video_reader():
    import decord

    assert hasattr(decord, "VideoReader")


def test_pyav_has_vp9_encoder():
    import av

    assert "libvpx-vp9" in av.codecs_available


def test_dali_cpu_pipeline_builds_and_runs():
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        x = fn.external_source(
            source=lambda: [np.arange(6, dtype=np.float32).reshape(1, 2, 3)] * 2, dtype=types.FLOAT
        )
        # (H, W, C) float32 -> (C, H, W) minus mean: the same operator the loaders use.
        return fn.crop_mirror_normalize(x, mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0], output_layout="CHW")

    p = pipe()
    p.build()
    (out,) = p.run()
    got = out.as_array()
    expected = np.arange(6, dtype=np.float32).reshape(1, 2, 3).transpose(2, 0, 1) - np.array(
        [1.0, 2.0, 3.0], dtype=np.float32
    ).reshape(3, 1, 1)
    assert got.shape == (2, 3, 1, 2)
    np.testing.assert_array_equal(got[0], expected)
