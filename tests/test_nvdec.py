"""The NVDEC backend on CPU through its twin (PyAV decoding the same packet slices): packet slices and Annex-B,
the decoder limits, and the loader end to end against the epoch plan, decord and DALI; marked gpu: NVDEC
itself against the twin. Test videos: tests/videos.py (pixels carry the frame index, the crop box and flip)."""

import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from videos import (
    COLUMNS,
    decode_code,
    frame_rgb,
    make_dataset,
    reference_nv12,
    write_hidden_frame_ivf,
    write_pattern,
)

from pipeline import DatasetError, LoaderConfig, build_loader
from pipeline.augment import nv12_crop_to_rgb
from pipeline.backends.nvdec import NvdecLoader
from pipeline.backends.nvdec_decoders import (
    STATIC_LIMITS,
    DecodeError,
    PyAVDecoder,
    import_nvc,
    low_latency_problems,
    needed_height,
    nv12_problem,
    row_problems,
)
from pipeline.bitstream import packet_slice, parameter_sets, to_annexb
from pipeline.index.build import index_file, load_or_build
from pipeline.index.table import PacketTable, VideoIndex
from pipeline.normalisation import PRESETS, Normalisation
from pipeline.sampling import eval_starts

T, S = 16, 24
W, H = 192, 144  # at or above NVDEC's smallest frame for every codec (HEVC: 144x144)
ZERO = (0.0, 0.0, 0.0)
CODECS = ["vp9", "h264", "hevc"]


EXT = {"vp9": ".webm", "h264": ".mp4", "hevc": ".mp4"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One 40-frame file per codec, keyframe every 8 frames."""
    root = tmp_path_factory.mktemp("nvdec_files")
    return {c: str(write_pattern(root / f"{c}{EXT[c]}", 40, c)) for c in CODECS}




def frame_codes(nv12: torch.Tensor) -> np.ndarray:
    """(F, H*3/2, W) NV12 frames of the test pattern -> their frame index mod 32 (from the blue level)."""
    f = nv12.shape[0]
    h, w = nv12.shape[1] * 2 // 3, nv12.shape[2]
    rgb = nv12_crop_to_rgb(nv12[None, :, :h].cpu(), nv12[None, :, h:].cpu(), torch.tensor([[h, w]]),
                           torch.tensor([[0, 0, h]]), h, torch.tensor([0]))  # (1, F, 3, h, h)
    return decode_code(rgb[0, :, 2].mean(dim=(1, 2)).numpy()) if f else np.zeros(0, np.int64)


# ---- packet index: extradata, reordering, Annex-B --------------------------------------------------------


def test_extradata_and_reordering_are_indexed_and_cached(files, tmp_path, monkeypatch):
    import pipeline.index.build as packets

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


def test_row_problems_refuse_other_pixel_formats_and_hidden_frames():
    one = np.zeros(1, np.int64)

    def video(codec="vp9", **kw):
        return VideoIndex(codec, W, H, 25.0, one, one.astype(np.int32), np.ones(1, bool), **kw)

    table = PacketTable.from_videos([
        video(), video("hevc", bit_depth=10), video(chroma=2), video("h264", chroma=3), video(chroma=0),
        video(chroma=255), video(shown=0, odd_packets=1), video(reorder=2), video("h264", reorder=-1),
    ])  # fmt: skip
    got = row_problems(table, STATIC_LIMITS)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    fix = "NVDEC's NV12 output needs 8-bit 4:2:0: re-prepare with prepare_data.py (it writes 8-bit 4:2:0)"
    assert got[1] == f"10-bit 4:2:0 pixels; {fix}"
    assert got[2] == f"8-bit 4:2:2 pixels; {fix}" and got[3] == f"8-bit 4:4:4 pixels; {fix}"
    assert got[4] == f"8-bit 4:0:0 pixels; {fix}"
    assert got[5] == f"8-bit non-YUV or unusual subsampling pixels; {fix}"
    assert got[6].startswith("1 of its 1 packets do not show exactly one frame (hidden VP8/VP9 frames stored in "
                             "packets of their own), so packet k is not frame k; re-prepare with prepare_data.py")
    assert low_latency_problems(table) == {
        6: "1 packet(s) do not show exactly one frame",
        7: "its vp9 sequence parameter set allows 2 reordered frame(s)",
        8: "its h264 sequence parameter set does not declare max_num_reorder_frames"}


def test_ten_bit_and_422_rows_are_refused_when_the_loader_is_built(tmp_path):
    """Real 10-bit HEVC and 4:2:2 H.264 files: refused with the fix when the loader is built (before, the twin
    failed on them mid-epoch and NVDEC would have copied P016 or 4:2:2 frames as if NV12)."""
    import av

    root = mp4_dataset(tmp_path / "ds", [("h264", 20, W, H), ("h264", 20, W, H)])  # then rewritten:
    df = pd.read_csv(root / "train.csv")
    for (encoder, pix_fmt), rel in zip([("libx265", "yuv420p10le"), ("libx264", "yuv422p")], df["path"], strict=True):
        with av.open(str(root / rel), "w") as c:
            s = c.add_stream(encoder, rate=25, options={"x265-params": "log-level=error", "bf": "0"})
            s.width, s.height, s.pix_fmt = W, H, pix_fmt
            for i in range(20):
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, W, H), format="rgb24").reformat(format=pix_fmt)))
            c.mux(s.encode())
    with pytest.raises(DatasetError, match=f"{root / df['path'][0]}: 10-bit 4:2:0 pixels; NVDEC's NV12 output needs "
                                           "8-bit 4:2:0: re-prepare with prepare_data.py .*2 bad row"):
        load(root, mode="val", batch_size=1)


def test_nv12_problem_names_what_nvdec_gave():
    """What NVDEC's NATIVE output is for each kind of stream, against the NV12 of an indexed 192x144 video."""
    assert nv12_problem((216, 192), "torch.uint8", 144, 192) == ""
    p016 = nv12_problem((216, 192), "torch.uint16", 144, 192)  # 10/12-bit 4:2:0
    assert p016 == ("the decoder gave a (216, 192) uint16 frame where NV12 of the indexed 192x144 is (216, 192) "
                    "uint8 (a frame that is not 8-bit 4:2:0 at that size)")
    assert "(432, 192) uint8 frame" in nv12_problem((432, 192), "torch.uint8", 144, 192)  # 4:4:4: three planes
    assert "(288, 192) uint8 frame" in nv12_problem((288, 192), "torch.uint8", 144, 192)  # 4:2:2
    assert "(360, 320) uint8 frame" in nv12_problem((360, 320), "torch.uint8", 144, 192)  # another size


def ivf_dataset(root, packed: list[bool]):
    """One VP9 IVF row per entry: hidden keyframes at 8 and 24 stored apart (False) or in superframes (True)."""
    rows = []
    for i, p in enumerate(packed):
        rel = f"videos/val/a/v{i}.ivf"
        write_hidden_frame_ivf(root / rel, 40, hide=[8, 24], packed=p, width=W, height=H)
        rows.append([f"v{i}", rel, 0, "a", "val", 40, 25.0, W, H, 0, 40])
    pd.DataFrame({"index": [0], "name": ["a"]}).to_csv(root / "classes.csv", index=False)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "val.csv", index=False)
    return root


def test_hidden_frames_in_packets_of_their_own_are_refused_superframes_decode(tmp_path):
    """Packet k is frame k only when each packet shows one frame: a file with hidden frames stored apart is
    refused when the loader is built (before this check the twin failed mid-epoch: "1 frame(s) missing"); the
    same frames packed in superframes decode exactly."""
    root = ivf_dataset(tmp_path / "ds", [True, False])
    split = root / "videos/val/a/v1.ivf"
    with pytest.raises(DatasetError, match=f"{split}: 2 of its 42 packets do not show exactly one frame"):
        load(root, "val", "eval")
    with load(root, "val", "eval", batch_size=2, skip_bad=True) as loader:
        assert loader.skipped == 1
        plan = loader.plan
        clips, _, vidx = epoch(loader)
    assert list(vidx) == [0, 0]
    for k in range(2):
        check_clip_content(clips[k], plan.frames[k], plan.boxes[k], False)


def test_low_latency_falls_back_to_native_when_a_stream_does_not_declare_no_reordering(tmp_path, capsys):
    """latency "low" sends no end of stream, so it loses the frames NVIDIA's parser holds back for a stream
    that does not declare max_num_reorder_frames = 0: such a row (x264 output with its SPS's
    bitstream_restriction removed, test_packets.flip_h264_bitstream_restriction) makes the loader use "native",
    said with a count; prepared rows keep "low"."""
    from test_packets import flip_h264_bitstream_restriction

    root = mp4_dataset(tmp_path / "ds", [("h264", 20, W, H), ("vp9", 20, W, H), ("h264", 24, W, H)])
    config = LoaderConfig(data=root, split="train", mode="val", backend="nvdec", batch_size=1, sample_size=S,
                          progress=False)
    assert NvdecLoader(config, decoder="pyav", latency="low").latency == "low"
    flip_h264_bitstream_restriction(root / "videos/train/a/v2.mp4")
    loader = NvdecLoader(config, decoder="pyav", latency="low")
    assert (loader.latency, loader.low_latency_refused) == ("native", 1)
    assert capsys.readouterr().out.endswith(
        f"NVDEC latency 'low' would lose frames of 1 of 3 row(s) (first: {root / 'videos/train/a/v2.mp4'}: its "
        "h264 sequence parameter set does not declare max_num_reorder_frames); decoding with latency 'native' "
        "instead\n")
    assert epoch(loader)[0].shape == (3, 3, T, S, S)
    with pytest.raises(ValueError, match="latency must be one of"):
        NvdecLoader(config, latency="zero")


def test_a_failed_clip_stops_its_batch(data, monkeypatch):
    """Clips of a batch fail (here every clip that starts at frame 0 of its file; the epoch's first clip is
    one): the error reaches the caller only once no clip of the epoch decodes any more (those not started are
    cancelled, the running ones waited for), and the next epoch is exactly a clean one. Before, the failed
    batch's other clips went on decoding after the caller had the error."""
    decode_clip = PyAVDecoder.decode_clip
    late: list[bool] = []  # per clip decoded: did it finish after the caller had the error?
    raised = threading.Event()
    failing = [True]

    def decode_or_fail(self, clip, wanted):
        if failing[0] and clip.first + int(wanted.min()) == 0:
            raise DecodeError("injected")
        out = decode_clip(self, clip, wanted)
        late.append(raised.is_set())
        return out

    with load(data, "train", "eval", batch_size=8, workers=2, prefetch=1) as clean:
        reference = epoch(clean)
    monkeypatch.setattr(PyAVDecoder, "decode_clip", decode_or_fail)
    with load(data, "train", "eval", batch_size=8, workers=2, prefetch=1) as loader:
        assert loader.num_clips == 31 and loader.plan.starts[0] == 0
        with pytest.raises(DatasetError, match="frames 0..15: injected"):
            list(loader)
        raised.set()
        time.sleep(1.0)  # a clip left running would finish now
        assert late.count(True) == 0 and len(late) < 8
        failing[0] = False
        again = tuple(np.concatenate(z) for z in zip(*[tuple(x.numpy() for x in b) for b in loader], strict=True))
    for x, y in zip(reference, again, strict=True):
        np.testing.assert_array_equal(x, y)


def psnr(a, b):
    return 10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


# ---- NVDEC itself (GPU) ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("latency", ["native", "low"])
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_nvdec_matches_the_twin_on_the_same_slices(files, codec, latency):
    """One persistent decoder per codec, clips one after the other (flushed, or not with latency low):
    exactly the wanted frames, in order, and the pixels of PyAV's decoder."""
    from pipeline.backends.nvdec_decoders import NvdecDecoder

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
            [True, False, True, False, True, False], 112, PRESETS["kinetics"])
    cpu = augment_nv12(y, uv, *args)
    gpu = augment_nv12(y.cuda(), uv.cuda(), *args)
    # The CPU runs torch's uint8 kernels (rounded after the chroma upsampling and each resize pass), the GPU
    # float32 rounded once (augment.py step 2): Y within 1 level, U and V within 2 (tests/test_augment.py), so
    # RGB within max over rows of |a_Y| + 2 (|a_U| + |a_V|) of the BT.601 matrix: 5.2 levels (B). On these
    # uniformly random planes (the worst case) the float path computed on the CPU gives max 5.2, mean 0.59.
    from pipeline.augment import YUV_TO_RGB

    bound = max(abs(r[0]) + 2 * (abs(r[1]) + abs(r[2])) for r in YUV_TO_RGB)
    diff = (gpu.cpu() - cpu).abs()
    assert gpu.is_cuda and diff.max() <= bound + 1e-4 and diff.mean() < 0.8


# ---- the loader on CPU (the twin) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train: 12 VP9 files (lengths incl. < T, == T, mid-GOP ends); val: segments of a file + a short file."""
    root = tmp_path_factory.mktemp("prepared_nvdec")
    lengths = [40, 10, 100, 33, 17, 64, 50, 16, 81, 23, 70, 29]
    return make_dataset(root, {
        "train": [{"frames": n} for n in lengths],
        "val": [{"frames": 90, "segments": [(0, 20), (20, 57), (57, 90)], "label": 1}, {"frames": 7, "label": 2}],
    }, width=W, height=H)  # fmt: skip


def load(data, split="train", mode="train", backend="nvdec", **kw):
    """build_loader's loader; for backend "nvdec" on the CPU the NVDEC loader with its CPU twin decoder (PyAV):
    everything but the hardware call (build_loader refuses "nvdec" on the CPU)."""
    kw.setdefault("batch_size", 4)
    kw.setdefault("sample_size", S)
    kw.setdefault("normalisation", Normalisation(ZERO))
    if backend == "nvdec" and kw.get("device", "cpu") == "cpu":
        config = LoaderConfig(data=data, split=split, mode=mode, backend=backend, progress=False, **kw)
        return NvdecLoader(config, decoder="pyav")
    return build_loader(data, split=split, mode=mode, backend=backend, progress=False, **kw)


def epoch(loader):
    with loader:
        out = [tuple(x.cpu().numpy() for x in b) for b in loader]
    return tuple(np.concatenate(z) for z in zip(*out, strict=True))


def check_clip_content(clip, frames, box, flip, width=W, height=H):
    """clip: (3, T, S, S) float32 with mean 0: frame indices, crop box centre and flip (tests/videos.py)."""
    r, g, b = clip
    np.testing.assert_array_equal(decode_code(b.mean(axis=(1, 2))), frames % 32)
    x0, y0, side = box
    assert abs(r.mean() - 255 * (x0 + side / 2 - 0.5) / (width - 1)) < 3
    assert abs(g.mean() - 255 * (y0 + side / 2 - 0.5) / (height - 1)) < 3
    slope = (r[:, :, -1] - r[:, :, 0]).mean()
    assert (slope < 0) == bool(flip) and abs(slope) > 10


def test_train_epoch_is_exactly_the_plan(data):
    loader = load(data)
    assert loader.decoder_kind == "pyav" and len(loader) == 3 and loader.num_clips == 12
    plan = loader.plan
    clips, labels, vidx = epoch(loader)
    assert clips.shape == (12, 3, T, S, S) and clips.dtype == np.float32
    assert labels.dtype == vidx.dtype == np.int64
    np.testing.assert_array_equal(vidx, plan.rows)
    np.testing.assert_array_equal(labels, loader.videos["label"].to_numpy()[plan.rows])
    for k in range(len(clips)):
        check_clip_content(clips[k], plan.frames[k], plan.boxes[k], plan.flips[k])


def test_eval_windows_segments_and_short_videos(data):
    clips, labels, vidx = epoch(load(data, "val", "eval", batch_size=3))
    n, start = [20, 37, 33, 7], [0, 20, 57, 0]
    expected = [(r, s) for r in range(4) for s in eval_starts(n[r], T)]
    np.testing.assert_array_equal(vidx, [r for r, _ in expected])
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 1, 2])
    for k, (r, s) in enumerate(expected):
        check_clip_content(clips[k], start[r] + (s + np.arange(T)) % n[r], ((W - H) // 2, 0, H), False)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_same_clips_as_decord_and_dali(data, mode):
    """Same seed and epoch: the same rows, frames, boxes and flips as the other backends; pixels within
    40 dB of decord (whose colour conversion uses nearest chroma) and 45 dB of DALI on CPU (measured 51 dB: the
    twin crops and resizes in YUV and converts at 112 x 112, augment.py; DALI converts whole frames first)."""
    split = "train" if mode == "train" else "val"
    kw = dict(normalisation=PRESETS["kinetics"], sample_size=112, seed=3)
    ours = epoch(load(data, split, mode, **kw))
    for backend in ("decord", "dali"):
        other = epoch(load(data, split, mode, backend=backend, **kw))
        np.testing.assert_array_equal(ours[1], other[1])
        np.testing.assert_array_equal(ours[2], other[2])
        for x, y in zip(ours[0], other[0], strict=True):
            assert psnr(x, y) >= (40 if backend == "decord" else 45)


def mp4_dataset(root, rows: list[tuple[str, int, int, int]]):
    """A prepared-layout dataset whose rows are (codec, frames, width, height) files in any codec."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"index": [0, 1], "name": ["a", "b"]}).to_csv(root / "classes.csv", index=False)
    out = []
    for i, (codec, n, w, h) in enumerate(rows):
        rel = f"videos/train/a/v{i}{EXT[codec]}"
        write_pattern(root / rel, n, codec, gop=8, width=w, height=h)
        out.append([f"v{i}", rel, i % 2, "ab"[i % 2], "train", n, 25.0, w, h, 0, n])
    pd.DataFrame(out, columns=COLUMNS).to_csv(root / "train.csv", index=False)
    return root


def test_h264_hevc_and_mixed_frame_sizes(tmp_path):
    """H.264 and HEVC rows (Annex-B slices) beside VP9, frames of two sizes in one batch (padded planes)."""
    rows = [("h264", 30, W, H), ("hevc", 30, W, H), ("vp9", 20, 160, 128), ("h264", 12, 160, 128),
            ("hevc", 25, 256, 144), ("vp9", 30, W, H)]
    root = mp4_dataset(tmp_path / "ds", rows)
    loader = load(root, mode="val", batch_size=6)
    clips, _, vidx = epoch(loader)
    np.testing.assert_array_equal(vidx, np.arange(6))
    for k, (_, n, w, h) in enumerate(rows):
        check_clip_content(clips[k], (max((n - T) // 2, 0) + np.arange(T)) % n, ((w - h) // 2, 0, h), False, w, h)
    train = load(root, batch_size=3, seed=1)
    clips, _, vidx = epoch(train)
    for k, r in enumerate(vidx):
        _, _, w, h = rows[r]
        check_clip_content(clips[k], train.plan.frames[k], train.plan.boxes[k], train.plan.flips[k], w, h)


def test_videos_too_small_for_nvdec_are_refused_or_skipped(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}, {"frames": 20, "width": 96, "height": 64},
                                                    {"frames": 24}, {"frames": 18}]}, width=W, height=H)
    small = root / pd.read_csv(root / "train.csv")["path"][1]
    with pytest.raises(DatasetError, match=f"{small}: 96x64 is below 128x128.*prepare_data.py --height 128"):
        load(root)
    loader = load(root, batch_size=1, skip_bad=True)
    assert "skipping 1 bad row(s) of 4" in capsys.readouterr().out
    assert len(loader.videos) == 3 and loader.skipped == 1
    assert epoch(loader)[0].shape == (3, 3, T, S, S)


def test_abandoned_epoch_then_full_epoch_and_close(data):
    loader = load(data, batch_size=2, workers=3, prefetch=1)
    assert loader.workers == 3
    with loader:
        full = [tuple(x.numpy() for x in b) for b in loader]
        for _ in loader:  # break after one step: nothing of it may leak into the next epoch
            break
        again = [tuple(x.numpy() for x in b) for b in loader]
    for x, y in zip(full, again, strict=True):
        for a, b in zip(x, y, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not [t for t in threading.enumerate() if t.name.startswith("nvdec")]
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))


def test_each_worker_thread_keeps_its_own_decoder(data, monkeypatch):
    """One decoder per thread, never shared (the twin goes through the same pool)."""
    used = set()
    decode_clip = PyAVDecoder.decode_clip

    def spy(self, clip, wanted):
        used.add((threading.get_ident(), id(self)))
        return decode_clip(self, clip, wanted)

    monkeypatch.setattr(PyAVDecoder, "decode_clip", spy)
    with load(data, batch_size=2, workers=3) as loader:
        for e in range(2):
            loader.set_epoch(e)
            assert len(list(loader)) == 6
    threads, decoders = {t for t, _ in used}, {d for _, d in used}
    assert len(used) == len(threads) == len(decoders) <= 3


def test_close_in_the_middle_of_an_epoch(data):
    loader = load(data, "val", "eval", batch_size=1, workers=2)
    batches = iter(loader)
    next(batches)  # the pool has more clips in flight
    loader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("nvdec")]
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_a_file_damaged_after_indexing_is_one_named_error(tmp_path, damage):
    """Mid-epoch, a file gone or rewritten since the index was built: a DatasetError (train.py and evaluate.py
    print it as one line) that names the file, not an OSError or a PyAV traceback."""
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}, {"frames": 24}]}, width=W, height=H)
    victim = root / pd.read_csv(root / "train.csv")["path"][1]
    with load(root, mode="val", batch_size=1) as loader:
        if damage == "delete":
            victim.unlink()
        else:
            victim.write_bytes(bytes(victim.stat().st_size))  # same size, zeros
        with pytest.raises(DatasetError, match=f"{victim}: frames 4..19: .*prepare_data.py"):
            list(loader)


def test_host_pass_reports_cost_per_clip_and_leaves_the_plan_alone(data):
    from benchmarks.common import host_pass

    with load(data, "val", "eval", batch_size=3) as loader:
        plan = loader.plan
        r = host_pass(loader)
        assert loader.plan is plan  # timed from a plan of its own: the loader's is not made again
    assert r["clips"] == loader.num_clips == 6 and r["packets"] >= 6 * T
    assert 0 < r["cpu_ms_per_clip"] < 1000
    print(f"host cost: {r['cpu_ms_per_clip']:.3f} ms CPU per clip")


def test_nvdec_decoder_needs_a_gpu_and_the_package(tmp_path):
    try:
        import_nvc()
    except ImportError as e:
        assert "pip install pynvvideocodec==2.2.4" in str(e)
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}]}, width=W, height=H)
    config = LoaderConfig(data=root, split="train", mode="val", backend="nvdec", progress=False)
    gpu_only = "backend='nvdec' decodes on the GPU (device='gpu'); on the CPU use backend='pyav', 'dali' or 'decord'"
    with pytest.raises(ValueError) as refused:
        NvdecLoader(config)
    assert str(refused.value) == gpu_only
    with pytest.raises(ValueError) as refused:  # "nvdec" means the hardware decoder: no silent CPU substitute
        build_loader(root, split="train", mode="val", backend="nvdec", progress=False)
    assert str(refused.value) == gpu_only


# ---- the loader on the GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gpu_loader_matches_the_twin(data, mode):
    split = "train" if mode == "train" else "val"
    twin = epoch(load(data, split, mode, normalisation=PRESETS["kinetics"]))
    with load(data, split, mode, normalisation=PRESETS["kinetics"], device="gpu", device_id=0) as loader:
        assert loader.decoder_kind == "nvdec" and loader.workers % loader.engines == 0
        assert loader.limits["vp9"].min_width >= 128
        first = next(iter(loader))
        assert first.clips.is_cuda and first.clips.shape == (4, 3, T, S, S)
    gpu = epoch(load(data, split, mode, normalisation=PRESETS["kinetics"], device="gpu", device_id=0))
    np.testing.assert_array_equal(twin[2], gpu[2])
    for x, y in zip(twin[0], gpu[0], strict=True):
        assert psnr(x, y) >= 40


@pytest.mark.gpu
def test_gpu_refuses_videos_nvdec_cannot_decode(tmp_path):
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20, "width": 96, "height": 64}]})
    with pytest.raises(DatasetError, match="96x64 is below .*prepare_data.py --height"):
        load(root, device="gpu", batch_size=1)


# ---- benchmarks/decode_speed.py ------------------------------------------------------------------------------


def test_decode_speed_benchmark_runs_on_cpu(tmp_path):
    """The decode matrix on a machine without GPU: what can run runs (~1 s a row), the rest says why not."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import decode_speed

    out = tmp_path / "decode.json"
    decode_speed.main(["--root", str(tmp_path / "data"), "--formats", "vp9-g8,h264-g8,hevc-g8", "--height", "144",
                       "--source-videos", "4", "--source-seconds", "1.2", "--videos", "4", "--batch-size", "2",
                       "--seconds", "2", "--warmup", "1", "--strategies", "dali,twin,host", "--json", str(out)])
    rows = {(r["strategy"], r["format"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 9
    assert rows[("dali", "h264-g8")]["skipped"].startswith("DALI's CPU decoder reads VP8/VP9")
    for key, r in rows.items():
        if key[0] == "twin" or key[0] == "host" or key == ("dali", "vp9-g8"):
            assert "error" not in r, r
            rate = "clips_per_cpu_s" if key[0] == "host" else "clips_per_s"  # host: one thread's CPU, not wall
            assert r["clips"] > 0 and r[rate] > 0 and r["host_cpu_ms_per_clip"] > 0 and rate in r, r
            assert ("clips_per_s" in r) == (key[0] != "host"), r
            assert 1 <= r["frames_per_clip"] <= 16 + 7
