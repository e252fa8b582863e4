"""The pinned stack imports and a DALI CPU-only pipeline builds and runs (no GPU, no driver needed)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_decord_imports_and_exposes_video_reader():
    from pipeline.backends.decord import import_decord

    assert hasattr(import_decord(), "VideoReader")


# decord's bundled FFmpeg, loaded before PyAV's, breaks PyAV's VP9 encoder. Fresh interpreters, since the
# import order of this test process is whatever collection made it.
_ENCODE_AFTER = """
import sys
sys.path.insert(0, {root!r})
{imports}
import numpy as np
from prepare.sample import write_video  # imports av, after the imports above
print(write_video({path!r}, np.zeros((1, 48, 64, 3), np.uint8), 25, "libvpx-vp9", gop=16).stat().st_size)
"""


def _encode_after(imports: str, path: Path) -> subprocess.CompletedProcess:
    code = _ENCODE_AFTER.format(root=str(ROOT), imports=imports, path=str(path))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_decord_keeps_pyav_vp9_encoder_working(tmp_path):
    done = _encode_after("from pipeline.backends.decord import import_decord; import_decord()", tmp_path / "a.webm")
    assert done.returncode == 0, done.stderr[-500:]
    assert int(done.stdout.split()[-1]) == (tmp_path / "a.webm").stat().st_size > 0


def test_plain_decord_import_first_breaks_pyav_vp9_encoder(tmp_path):
    # The hazard import_decord() exists for; if a decord or PyAV upgrade fixes it, this test says so.
    done = _encode_after("import decord", tmp_path / "a.webm")
    assert done.returncode != 0 and "avcodec_open2" in done.stderr


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
