"""The NVDEC backend on CPU through its twin (PyAV decoding the same packet slices): packet slices and Annex-B,
the decoder limits, and the loader end to end against the epoch plan, decord and DALI; marked gpu: NVDEC
itself against the twin. Test videos: tests/videos.py (pixels carry the frame index, the crop box and flip)."""

import numpy as np
import pytest
import torch
from videos import decode_code, frame_rgb, write_video

from pipeline import KINETICS_MEAN
from pipeline.augment import nv12_crop_to_rgb
from pipeline.nvdec_loader import STATIC_LIMITS, DecodeError, PyAVDecoder, needed_height, row_problems
from pipeline.packets import (
    PacketTable,
    VideoIndex,
    index_file,
    load_or_build,
    packet_slice,
    parameter_sets,
    to_annexb,
)

T, S = 16, 24
W, H = 192, 144  # at or above NVDEC's smallest frame for every codec (HEVC: 144x144)
ZERO = (0.0, 0.0, 0.0)
CODECS = ["vp9", "h264", "hevc"]


def write_pattern(path, n: int, codec: str, gop: int = 8, width: int = W, height: int = H, bframes: int = 0):
    """The test pattern (videos.frame_rgb) in the container and settings prepare_data.py writes: VP9 lossless
    WebM (videos.write_video), or H.264 / HEVC (hvc1) MP4 at high quality, keyframe every `gop` frames."""
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


EXT = {"vp9": ".webm", "h264": ".mp4", "hevc": ".mp4"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One 40-frame file per codec, keyframe every 8 frames."""
    root = tmp_path_factory.mktemp("nvdec_files")
    return {c: str(write_pattern(root / f"{c}{EXT[c]}", 40, c)) for c in CODECS}


def reference_nv12(path: str) -> np.ndarray:
    """Every frame of `path` decoded by PyAV from the start, as NV12: (F, H*3/2, W) uint8."""
    import av

    out = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            p = f.to_ndarray()
            h, w = f.height, f.width
            nv12 = np.empty((h * 3 // 2, w), np.uint8)
            nv12[:h] = p[:h]
            nv12[h:, 0::2] = p[h:h + h // 4].reshape(h // 2, w // 2)
            nv12[h:, 1::2] = p[h + h // 4:].reshape(h // 2, w // 2)
            out.append(nv12)
    return np.stack(out)


def frame_codes(nv12: torch.Tensor) -> np.ndarray:
    """(F, H*3/2, W) NV12 frames of the test pattern -> their frame index mod 32 (from the blue level)."""
    f = nv12.shape[0]
    h, w = nv12.shape[1] * 2 // 3, nv12.shape[2]
    rgb = nv12_crop_to_rgb(nv12[None, :, :h].cpu(), nv12[None, :, h:].cpu(), torch.tensor([[h, w]]),
                           torch.tensor([[0, 0, h]]), h, torch.tensor([0]))  # (1, F, 3, h, h)
    return decode_code(rgb[0, :, 2].mean(dim=(1, 2)).numpy()) if f else np.zeros(0, np.int64)


# ---- packet index: extradata, reordering, Annex-B --------------------------------------------------------


def test_extradata_and_reordering_are_indexed_and_cached(files, tmp_path, monkeypatch):
    import pipeline.packets as packets

    bframes = str(write_pattern(tmp_path / "b.mp4", 24, "h264", bframes=2))
    paths = [files["vp9"], files["h264"], files["hevc"], bframes]
    fresh = [index_file(p) for p in paths]
    assert [ix.reordered for ix in fresh] == [False, False, False, True]
    assert fresh[1].extradata[0] == 1 and fresh[2].extradata[0] == 1  # avcC, hvcC records
    cache = tmp_path / "packets.idx"
    load_or_build(paths, cache, progress=False, workers=1)
    monkeypatch.setattr(packets, "index_file", lambda p: pytest.fail(f"re-indexed {p}"))
    table, bad = load_or_build(paths[::-1], cache, progress=False, workers=1)
    assert not bad
    for row, ix in enumerate(fresh[::-1]):
        got = table.video(row)
        assert (got.extradata, got.reordered, got.codec) == (ix.extradata, ix.reordered, ix.codec)
    both = PacketTable.concat([table.take([3, 1]), PacketTable.from_videos(fresh[:2])])
    assert [both.video(r).extradata for r in range(4)] == [fresh[0].extradata, fresh[2].extradata,
                                                            fresh[0].extradata, fresh[1].extradata]


def nal_types(codec: str, annexb: bytes) -> list[int]:
    units = [u for u in annexb.split(b"\x00\x00\x00\x01") if u]
    return [u[0] & 0x1F if codec == "h264" else (u[0] >> 1) & 0x3F for u in units]


def test_parameter_sets_from_avcc_and_hvcc(files):
    head, size = parameter_sets("h264", index_file(files["h264"]).extradata)
    assert size == 4 and nal_types("h264", head) == [7, 8]  # SPS, PPS
    head, size = parameter_sets("hevc", index_file(files["hevc"]).extradata)
    assert size == 4 and nal_types("hevc", head)[:3] == [32, 33, 34]  # VPS, SPS, PPS (then x265's SEI)
    assert parameter_sets("h264", b"\x00\x00\x00\x01\x67\x42") == (b"\x00\x00\x00\x01\x67\x42", 0)  # Annex-B
    with pytest.raises(ValueError, match="past the end"):
        parameter_sets("h264", b"\x01\x64\x00\x1f\xff\xe1\x00\x40\x67")


def test_to_annexb():
    two = b"\x00\x00\x00\x03abc" + b"\x00\x00\x00\x01d"
    assert to_annexb(two, 4) == b"\x00\x00\x00\x01abc\x00\x00\x00\x01d"
    assert to_annexb(b"\x00\x02ab\x00\x01c", 2) == b"\x00\x00\x00\x01ab\x00\x00\x00\x01c"
    assert to_annexb(b"\x00\x00\x01xyz", 0) == b"\x00\x00\x01xyz"
    with pytest.raises(ValueError, match="runs past"):
        to_annexb(b"\x00\x00\x00\x09abc", 4)


@pytest.mark.parametrize("codec", CODECS)
def test_twin_decodes_packet_slices_frame_exact(files, codec):
    """Slices from a keyframe to a clip's last frame decode to exactly the frames of a whole-file decode,
    including looped and repeated frame lists; one decoder serves every clip and codec (flushed between)."""
    ix = index_file(files[codec])
    ref = reference_nv12(files[codec])
    assert len(ref) == len(ix) == 40 and list(np.flatnonzero(ix.keyframes)) == [0, 8, 16, 24, 32]
    decoder = PyAVDecoder()
    other = "vp9" if codec != "vp9" else "h264"
    for first, last, wanted in [(16, 30, np.arange(3, 15)), (8, 9, np.array([1, 1, 0, 1])),
                                (0, 39, (35 + np.arange(T)) % 40), (32, 39, np.arange(8))]:
        assert ix.keyframes[first]
        clip = packet_slice(files[codec], ix, first, last)
        assert len(clip) == last - first + 1
        out = decoder.decode_clip(clip, wanted)
        assert out.dtype == torch.uint8 and out.shape == (len(wanted), H * 3 // 2, W)
        np.testing.assert_array_equal(out.numpy(), ref[first + wanted])
        decoder.decode_clip(packet_slice(files[other], index_file(files[other]), 0, 3), np.arange(4))
    np.testing.assert_array_equal(frame_codes(torch.from_numpy(ref)), np.arange(40) % 32)


def test_twin_reports_missing_frames(files):
    ix = index_file(files["vp9"])
    with pytest.raises(DecodeError, match="missing"):
        PyAVDecoder().decode_clip(packet_slice(files["vp9"], ix, 8, 11), np.array([0, 1, 5]))


# ---- limits ------------------------------------------------------------------------------------------------


def table_of(*videos: tuple) -> PacketTable:
    one = np.zeros(1, np.int64)
    return PacketTable.from_videos([VideoIndex(codec, w, h, 25.0, one, one.astype(np.int32), np.ones(1, bool),
                                               b"", reordered) for codec, w, h, reordered in videos])


def test_row_problems_name_the_fix():
    table = table_of(("vp9", 96, 64, False), ("vp9", 640, 360, False), ("hevc", 192, 108, False),
                     ("mpeg4", 640, 360, False), ("vp9", 129, 128, False), ("h264", 640, 360, True),
                     ("h264", 8192, 360, False), ("h264", 48, 16, False))
    got = row_problems(table, STATIC_LIMITS)
    assert sorted(got) == [0, 2, 3, 4, 5, 6]
    assert got[0].startswith("96x64 is below 128x128, the smallest vp9 frame NVDEC decodes")
    assert "prepare_data.py --height 128 or larger" in got[0]
    assert "below 144x144" in got[2] and "--height 144" in got[2]
    assert "codec mpeg4 is not decoded" in got[3] and "--codec vp9" in got[3]
    assert "odd frame size" in got[4]
    assert "B-frames" in got[5]
    assert "above 4096x4096" in got[6]
    assert needed_height(640, 360, STATIC_LIMITS["hevc"]) == 144
    assert needed_height(100, 300, STATIC_LIMITS["vp9"]) == 384  # portrait: the width is the limit


def psnr(a, b):
    return 10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


# ---- NVDEC itself (GPU) ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("latency", ["native", "low"])
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_nvdec_matches_the_twin_on_the_same_slices(files, codec, latency):
    """One persistent decoder per codec, clips one after the other (flushed, or not with latency low):
    exactly the wanted frames, in order, and the pixels of PyAV's decoder."""
    from pipeline.nvdec_loader import NvdecDecoder

    ix = index_file(files[codec])
    nvdec = NvdecDecoder({codec: (W, H)}, torch.device("cuda", 0), latency)
    twin = PyAVDecoder()
    for first, last, wanted in [(16, 30, np.arange(3, 15)), (0, 39, (35 + np.arange(T)) % 40),
                                (8, 9, np.array([1, 1, 0, 1])), (32, 39, np.arange(8))]:
        clip = packet_slice(files[codec], ix, first, last)
        gpu, cpu = nvdec.decode_clip(clip, wanted), twin.decode_clip(clip, wanted)
        assert gpu.is_cuda and gpu.shape == cpu.shape
        np.testing.assert_array_equal(frame_codes(gpu), (first + wanted) % 32)
        assert psnr(gpu.cpu().numpy(), cpu.numpy()) >= 40


@pytest.mark.gpu
def test_gpu_augment_matches_cpu():
    from pipeline.augment import augment_nv12

    rng = np.random.default_rng(0)
    n, h, w = 6, 144, 192
    y = torch.from_numpy(rng.integers(0, 256, (n, T, h, w), dtype=np.uint8))
    uv = torch.from_numpy(rng.integers(0, 256, (n, T, h // 2, w), dtype=np.uint8))
    args = (np.tile([h, w], (n, 1)), [[0, 0, 144], [48, 0, 144], [3, 5, 101], [0, 0, 72], [9, 1, 72], [1, 1, 24]],
            [True, False, True, False, True, False], 112, KINETICS_MEAN)
    cpu = augment_nv12(y, uv, *args)
    gpu = augment_nv12(y.cuda(), uv.cuda(), *args)
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() <= 1
