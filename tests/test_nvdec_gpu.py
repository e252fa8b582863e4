"""NVDEC on what a first real run meets, checked against its CPU twin (PyAVDecoder: PyAV decoding the same
packet slices).

Data: prepare_data.py's own encoder (prepare.transcode) at --height 360, a keyframe every 8 frames,
40 frames of the test pattern (tests/videos.py: the pixels carry the frame index and the position), as H.264
and HEVC (MP4, hvc1) and VP9 (WebM), 640, 480 and 202 px wide (16:9, 4:3, a 9:16 phone video), and 840 (21:9).
H.264 and HEVC code whole 16-pixel rows, so these are coded 368 lines high and cropped to 360 (202 -> 208 and
840 -> 848 wide too); VP9 codes what it shows. The other GPU tests use 192x144, a multiple of 16: no cropping.

The GPU tests (marked gpu, skipped without CUDA), simplest first, so that a failure further down is explained
by the first one that fails:
  1. one decoder per codec, 640x360 clips one after the other: cropping, and the frames of each clip;
  2. one decoder reused after end of stream: the same clip twice gives the same frames, and a clip whose only
     wanted frame is its last packet (held back by the display delay until end of stream) gets it;
  3. one decoder fed clips of three widths in turn: the output follows each size (setReconfigParams);
  4. the loader over the nine files (three codecs x three widths), train and eval mode: the clips of the twin
     loader, batch by batch;
  5. a decoder made for the dataset's largest frame in display pixels (840x360) given a smaller stream first and
     then the 840 one, coded 848x368 (what the loader does when a dataset's widest video is not a multiple of
     16 wide). NVIDIA's decoder raises its limit to the first stream's coded size only; a larger coded size later
     can abort the process ("Reconfigure Not supported when width/height > maxwidth/maxheight"), so this one
     runs in a child process and an abort fails this test only.
Tolerance: none, every sample equal. H.264, HEVC and VP9 specify decoding to the bit (integer transforms,
prediction and in-loop filters), so NVDEC and FFmpeg return the same 8-bit samples for the same packets; one
level of difference is a wrong frame, crop, pitch or plane, not rounding. The loaders' clips come from equal
NV12 planes through the same augmentation on the same GPU, so they are equal too. A failure says how the
frames differ: the frame indices each decoder returned, the count of differing samples, the largest
difference, the PSNR and the first differing sample.

The CPU tests run the same data, sequences, helpers and child process through the twin, on every machine.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import videos
from videos import decode_code, frame_rgb

from pipeline import build_loader
from pipeline.augment import nv12_crop_to_rgb
from pipeline.backends.nvdec import NvdecLoader
from pipeline.backends.nvdec_decoders import LATENCIES, PyAVDecoder
from pipeline.base import LoaderConfig
from pipeline.bitstream import packet_slice
from pipeline.index.build import index_file
from pipeline.manifest import COLUMNS
from pipeline.normalisation import Normalisation
from prepare.sample import write_video
from prepare.transcode import EncodeSettings, transcode

ROOT = Path(__file__).resolve().parent.parent
T, HEIGHT, N, GOP = 16, 360, 40, 8
WIDTHS = (640, 480, 202)
WIDE = 840
CODECS = ("h264", "hevc", "vp9")
# Finer than prepare_data.py's defaults (32 / 23 / 28): the frame index is the blue level, in steps of 8.
CRF = {"vp9": 20, "h264": 12, "hevc": 12}
# The coded (decoded before cropping) size of each file, as FFmpeg reports it (checked on CPU below).
CODED = {**{("vp9", w): (w, HEIGHT) for w in (*WIDTHS, WIDE)},
         **{(c, w): (-(-w // 16) * 16, 368) for c in ("h264", "hevc") for w in (*WIDTHS, WIDE)}}

# Clips fed to one decoder one after the other: (width, first packet (a keyframe), last packet, wanted frames as
# indices into the slice, in output order: loops and repeats as the loader asks for them).
SINGLE = [(640, 0, 15, np.arange(16)), (640, 16, 39, 8 + np.arange(16)), (640, 32, 39, np.arange(8))]
REUSE = [(480, 8, 23, np.arange(16)), (480, 24, 39, np.arange(16)), (480, 8, 23, np.arange(16)),
         (480, 32, 39, np.array([7]))]
RECONFIGURE = [
    (640, 16, 31, np.arange(16)),  # the largest frame first
    (202, 0, 15, np.arange(16)),  # smaller: setReconfigParams
    (480, 8, 39, 12 + np.arange(16)),  # frames 20..35, decoded from the keyframe at 8
    (640, 32, 39, np.arange(16) % 8),  # back to the largest; a short tail looped; the file's last frame
    (640, 0, 7, np.array([7, 0, 7, 3])),  # the same size: no reconfiguration; a frame twice
    (202, 24, 39, np.arange(16)[::-1]),  # smaller again, frames in reverse, the file's last frame
]
WIDER = [(640, 0, 15, np.arange(16)), (WIDE, 0, 15, np.arange(16)), (202, 16, 31, np.arange(16)),
         (WIDE, 24, 39, np.arange(16))]
SEQUENCES = {"SINGLE": SINGLE, "REUSE": REUSE, "RECONFIGURE": RECONFIGURE, "WIDER": WIDER}


# ---- data and helpers (shared by the CPU and the GPU tests) ----------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, int], str]:
    """{(codec, width): path} of the 12 prepared files (module docstring)."""
    root = tmp_path_factory.mktemp("nvdec_360p")
    out = {}
    for w in (*WIDTHS, WIDE):
        src = write_video(root / f"source_{w}.mp4", (frame_rgb(i, w, HEIGHT) for i in range(N)), 25, "libx264",
                          gop=GOP, lossless=True)
        for codec in CODECS:
            s = EncodeSettings(codec=codec, height=HEIGHT, gop=GOP, crf=CRF[codec])
            dst = root / f"{codec}_{w}{s.extension}"
            info = transcode(src, dst, s)
            assert (info.num_frames, info.width, info.height) == (N, w, HEIGHT)
            out[codec, w] = str(dst)
    return out


@functools.cache
def _index(path: str):
    return index_file(path)


def run_sequence(decoder, files: dict, codec: str, steps: list) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    """Feed decoder.decode_clip the steps' packet slices in order; [(label, (T,) file frame indices, output)]."""
    out = []
    for w, first, last, wanted in steps:
        path = files[codec, w]
        clip = packet_slice(path, _index(path), first, last)
        out.append((f"{codec} {w}x{HEIGHT} packets {first}..{last}", first + wanted, decoder.decode_clip(clip, wanted)))
    return out


def frame_codes(nv12: np.ndarray) -> list[int]:
    """(F, H*3/2, W) uint8 NV12 frames of the test pattern -> each frame's index mod 32 (from its blue level)."""
    x = torch.from_numpy(np.ascontiguousarray(nv12))
    f, h, w = x.shape[0], x.shape[1] * 2 // 3, x.shape[2]
    if f == 0 or h < 2:
        return []
    side = min(h, w) // 2 * 2
    rgb = nv12_crop_to_rgb(x[None, :, :h], x[None, :, h:], torch.tensor([[h, w]]),
                           torch.tensor([[(w - side) // 2 // 2 * 2, 0, side]]), side, torch.tensor([0]))
    return decode_code(rgb[0, :, 2].mean(dim=(1, 2)).numpy()).tolist()


def assert_same_frames(got: torch.Tensor, want: torch.Tensor, label: str) -> None:
    """got, want: (T, H*3/2, W) uint8 NV12 on any device. Equal to the bit, or an AssertionError saying how not."""
    g, w = got.cpu().numpy(), want.cpu().numpy()
    if g.shape != w.shape:
        raise AssertionError(f"{label}: NVDEC gave {g.shape}, the twin {w.shape} (T, H*3/2, W); frames NVDEC "
                             f"{frame_codes(g)}, twin {frame_codes(w)} (index mod 32)")
    diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
    if diff.any():
        t, r, c = (int(v) for v in np.argwhere(diff)[0])
        h = w.shape[1] * 2 // 3
        mse = float(np.mean(diff.astype(np.float64) ** 2))
        raise AssertionError(
            f"{label}: {np.count_nonzero(diff)} of {diff.size} samples differ, up to {diff.max()} levels, PSNR "
            f"{10 * np.log10(255**2 / mse):.1f} dB; frames NVDEC {frame_codes(g)}, twin {frame_codes(w)} (index mod "
            f"32); first at clip frame {t}, {'Y row ' + str(r) if r < h else 'UV row ' + str(r - h)}, column {c}: "
            f"{g[t, r, c]} vs {w[t, r, c]}")


def check_against_twin(decoder, files: dict, codec: str, steps: list) -> list[torch.Tensor]:
    """Run `steps` through `decoder` and through a fresh twin; every clip equal to the bit. Returns decoder's."""
    mine = run_sequence(decoder, files, codec, steps)
    twin = run_sequence(PyAVDecoder(), files, codec, steps)
    for (label, _, got), (_, _, want) in zip(mine, twin, strict=True):
        assert_same_frames(got, want, label)
    return [x for _, _, x in mine]


reference_nv12 = functools.cache(videos.reference_nv12)  # (each file decoded once per process)


def dataset(files: dict, root: Path) -> Path:
    """The nine files of WIDTHS (three codecs each) as a prepared dataset (hard links); train and val list all."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"index": [0, 1, 2], "name": ["a", "b", "c"]}).to_csv(root / "classes.csv", index=False)
    rows = []
    for k, (codec, w) in enumerate((c, w) for w in WIDTHS for c in CODECS):
        src = Path(files[codec, w])
        rel = Path("videos") / "a" / src.name
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (root / rel).exists():
            (root / rel).hardlink_to(src)
        rows.append([f"v{k}", rel.as_posix(), k % 3, "abc"[k % 3], "train", N, 25.0, w, HEIGHT, 0, N])
    for split in ("train", "val"):
        pd.DataFrame(rows, columns=list(COLUMNS)).assign(split=split).to_csv(root / f"{split}.csv", index=False)
    return root


LOADER = dict(backend="nvdec", batch_size=4, sample_size=112, seed=7, workers=2, progress=False)


def child_main(argv: list[str]) -> None:
    """In a child process (test 5): python -c 'import test_nvdec_gpu as t; t.child_main(sys.argv[1:])' DECODER
    CODEC MAX_W MAX_H SEQUENCE FILES_JSON OUT_NPZ. Decodes SEQUENCES[SEQUENCE] with one decoder ("nvdec": made
    for MAX_W x MAX_H on cuda:0; "pyav": the twin) and saves the clips to OUT_NPZ as clip0, clip1, ..."""
    kind, codec, max_w, max_h, sequence, files_json, out = argv
    files = {tuple(k.split(":")[:1]) + (int(k.split(":")[1]),): v for k, v in json.loads(files_json).items()}
    if kind == "nvdec":
        from pipeline.backends.nvdec_decoders import NvdecDecoder

        decoder = NvdecDecoder({codec: (int(max_w), int(max_h))}, torch.device("cuda", 0))
    else:
        decoder = PyAVDecoder()
    clips = run_sequence(decoder, files, codec, SEQUENCES[sequence])
    np.savez(out, **{f"clip{k}": x.cpu().numpy() for k, (_, _, x) in enumerate(clips)})


def run_child(kind: str, codec: str, max_size: tuple[int, int], sequence: str, files: dict, out: Path):
    """child_main in a fresh interpreter: (CompletedProcess, [clips] or None)."""
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]; import test_nvdec_gpu as t; "
            "t.child_main(sys.argv[1:])")
    files_json = json.dumps({f"{c}:{w}": p for (c, w), p in files.items()})
    r = subprocess.run([sys.executable, "-c", code, kind, codec, str(max_size[0]), str(max_size[1]), sequence,
                        files_json, str(out)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not out.exists():
        return r, None
    with np.load(out) as z:
        return r, [torch.from_numpy(z[f"clip{k}"]) for k in range(len(z.files))]


def describe_exit(r: subprocess.CompletedProcess) -> str:
    how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
    return f"{how}; stderr: {r.stderr.strip()[-1500:]}"


# ---- on the CPU: the data and everything around the hardware call ------------------------------------------


def test_files_are_coded_larger_than_shown(files):
    """The premise: the 360-px H.264/HEVC files are decoded at 368 lines (202 and 840 wide: 208 and 848) and
    cropped; one packet per frame, a keyframe every 8, no reordering."""
    import av

    for (codec, w), path in sorted(files.items()):
        with av.open(path) as c:
            s = c.streams.video[0]
            next(c.decode(s))
            coded = (s.codec_context.coded_width, s.codec_context.coded_height)
        ix = _index(path)
        assert (ix.codec, ix.width, ix.height, coded) == (codec, w, HEIGHT, CODED[codec, w])
        assert len(ix) == N and list(np.flatnonzero(ix.keyframes)) == [0, 8, 16, 24, 32] and not ix.reordered


@pytest.mark.parametrize("codec", CODECS)
def test_twin_decodes_every_sequence_to_the_wanted_frames(files, codec):
    """What the GPU tests compare NVDEC with: each clip of each sequence is exactly the frames asked for, as a
    whole-file decode gives them, and the pattern says which frame each is."""
    decoder = PyAVDecoder()  # one for all sequences: flushed between clips, like the hardware decoder
    for name, steps in SEQUENCES.items():
        for (label, frames, got), (w, *_rest) in zip(run_sequence(decoder, files, codec, steps), steps, strict=True):
            want = reference_nv12(files[codec, w])[frames]
            assert got.shape == (len(frames), HEIGHT * 3 // 2, w), label
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{name}: {label}")
            assert frame_codes(got.numpy()) == (frames % 32).tolist(), f"{name}: {label}"


def test_assert_same_frames_says_how_frames_differ(files):
    (_, _, a), (_, _, b) = run_sequence(PyAVDecoder(), files, "vp9", SINGLE[:2])
    assert_same_frames(a, a.clone(), "same")
    with pytest.raises(AssertionError, match=r"^x: NVDEC gave \(16, 540, 640\), the twin \(8, 540, 640\)"):
        assert_same_frames(a, a[:8], "x")
    c = a.clone()
    c[3, 365, 8] += 1  # one chroma sample, one level
    with pytest.raises(AssertionError, match=r"^y: 1 of 5529600 samples differ, up to 1 levels, PSNR 115\.6 dB; "
                       r"frames NVDEC \[0, 1, .*first at clip frame 3, UV row 5, column 8: \d+ vs \d+$"):
        assert_same_frames(c, a, "y")
    with pytest.raises(AssertionError, match=r"frames NVDEC \[24, 25, 26, 27, 28, 29, 30, 31, 0, 1, .*\], twin \[0, 1, "):
        assert_same_frames(b, a, "z")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_twin_loader_over_three_codecs_and_widths_delivers_the_plan(files, tmp_path_factory, mode):
    """The loader the GPU test 4 runs, on the twin: each clip's frames, crop box and flip are the plan's."""
    root = dataset(files, tmp_path_factory.mktemp("ds360"))
    split = "train" if mode == "train" else "val"
    config = LoaderConfig(data=root, split=split, mode=mode, device="cpu", normalisation=Normalisation((0.0, 0.0, 0.0)), **LOADER)
    with NvdecLoader(config, decoder="pyav") as loader:
        assert loader.decoder_kind == "pyav"
        plan = loader.plan
        batches = [tuple(x.numpy() for x in b) for b in loader]
    clips, _, vidx = (np.concatenate(z) for z in zip(*batches, strict=True))
    np.testing.assert_array_equal(vidx, plan.rows)
    assert len(clips) == (8 if mode == "train" else 9 * (N // T))  # train: whole batches only
    widths = [w for w in WIDTHS for _ in CODECS]
    for k, r in enumerate(plan.rows.tolist()):
        b = clips[k][2]  # (T, S, S) blue, 0-255 scale
        np.testing.assert_array_equal(decode_code(b.mean(axis=(1, 2))), plan.frames[k] % 32)
        x0, y0, side = plan.boxes[k]
        red, green = clips[k][0], clips[k][1]
        assert abs(red.mean() - 255 * (x0 + side / 2 - 0.5) / (widths[r] - 1)) < 3
        assert abs(green.mean() - 255 * (y0 + side / 2 - 0.5) / (HEIGHT - 1)) < 3
        assert ((red[:, :, -1] - red[:, :, 0]).mean() < 0) == bool(plan.flips[k])


def test_child_process_decodes_a_sequence(files, tmp_path):
    """GPU test 5's child process, with the twin: the clips come back, equal to the twin's in this process."""
    r, clips = run_child("pyav", "h264", (WIDE, HEIGHT), "WIDER", files, tmp_path / "clips.npz")
    assert clips is not None, describe_exit(r)
    for (label, _, want), got in zip(run_sequence(PyAVDecoder(), files, "h264", WIDER), clips, strict=True):
        assert_same_frames(got, want, label)
    r, clips = run_child("pyav", "h264", (WIDE, HEIGHT), "NO-SUCH", files, tmp_path / "x.npz")
    assert clips is None and describe_exit(r).startswith("exit status 1; stderr: Traceback")


# ---- on the GPU (in the order of the module docstring) ------------------------------------------------------


def nvdec(codec: str, size: tuple[int, int], latency: str = "native"):
    from pipeline.backends.nvdec_decoders import NvdecDecoder

    return NvdecDecoder({codec: size}, torch.device("cuda", 0), latency)


@pytest.mark.gpu
@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_1_cropped_360p_clips_are_the_twins_to_the_bit(files, codec, latency):
    out = check_against_twin(nvdec(codec, (640, HEIGHT), latency), files, codec, SINGLE)
    assert all(x.is_cuda for x in out)


@pytest.mark.gpu
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_2_decoder_reused_after_end_of_stream(files, codec):
    first, _, again, last = check_against_twin(nvdec(codec, (480, HEIGHT)), files, codec, REUSE)
    assert torch.equal(first, again)
    assert last.shape == (1, HEIGHT * 3 // 2, 480)


@pytest.mark.gpu
@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_3_one_decoder_follows_every_size_change(files, codec, latency):
    out = check_against_twin(nvdec(codec, (640, HEIGHT), latency), files, codec, RECONFIGURE)
    assert [tuple(x.shape) for x in out] == [(len(wanted), HEIGHT * 3 // 2, w) for w, _, _, wanted in RECONFIGURE]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gpu_4_loader_over_three_codecs_and_widths_is_the_twin_loader_to_the_bit(files, tmp_path_factory, mode):
    """Both decode on their own (NVDEC, PyAV) and augment on the GPU: every batch equal."""
    root = dataset(files, tmp_path_factory.mktemp("ds360gpu"))
    split = "train" if mode == "train" else "val"
    kw = dict(data=root, split=split, mode=mode, device="gpu", device_id=0, **LOADER)
    with NvdecLoader(LoaderConfig(**kw), decoder="pyav") as twin:
        want = [tuple(x.cpu() for x in b) for b in twin]
    with build_loader(**kw) as loader:
        assert loader.decoder_kind == "nvdec" and loader.workers % loader.engines == 0
        got = [tuple(x.cpu() for x in b) for b in loader]
    assert len(got) == len(want) == (2 if mode == "train" else 5)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g[2], w[2]) and torch.equal(g[1], w[1])
        diff = (g[0] - w[0]).abs()
        assert torch.equal(g[0], w[0]), (f"batch {k} (videos {w[2].tolist()}): {int((diff > 0).sum())} values "
                                         f"differ, up to {float(diff.max()):.1f}")


@pytest.mark.gpu
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_5_widest_frame_after_a_smaller_one(files, codec, tmp_path):
    r, clips = run_child("nvdec", codec, (WIDE, HEIGHT), "WIDER", files, tmp_path / "clips.npz")
    assert clips is not None, f"the decoding process failed ({describe_exit(r)})"
    for (label, _, want), got in zip(run_sequence(PyAVDecoder(), files, codec, WIDER), clips, strict=True):
        assert_same_frames(got, want, label)
