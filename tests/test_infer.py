"""infer.py: any file PyAV opens (containers, codecs, rotation, variable frame rate) read as prepare_data.py would
store it, the paper's windows streamed one at a time, exactly evaluate.py's predictions on prepared videos,
our checkpoints and 3D-ResNets-PyTorch's (flags, class names, normalisation), the output files, and errors: one
line per unreadable file (exit status 1), usage errors (exit status 2)."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from videos import make_dataset

import infer
from pipeline.normalisation import PRESETS, Normalisation
from pipeline.sampling import eval_starts

CLASSES = ("a", "b", "c", "d", "e", "f")


def write_source(path: Path, n: int, codec: str = "libx264", size: tuple[int, int] = (96, 64), rate: int = 25,
                 times: list[int] | None = None, time_base: Fraction | None = None,
                 rotation: tuple[int, bool, bool] | None = None) -> Path:
    """n frames, frame i a flat grey 20 + 6 i with a white top-left block (shows orientation); pts times[i] in
    time_base (default: i / rate); rotation: the display matrix (degrees counter-clockwise, hflip, vflip)."""
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = time_base or Fraction(1, rate)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options={"libx264": {"crf": "0"}}.get(codec, {}))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(*rotation)
        for i in range(n):
            img = np.full((h, w, 3), min(20 + 6 * i, 250), np.uint8)
            img[: h // 4, : w // 4] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = (i if times is None else times[i]), time_base
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def our_checkpoint(path: Path, norm: Normalisation = PRESETS["kinetics"], video_height: int = 64,
                   fc_bias: list[float] | None = None) -> Path:
    """train.py's entries for a tiny untrained model; fc_bias: a zero fc.weight and this bias (known outputs)."""
    from engine.checkpoint import RunRecord
    from model import build_model

    torch.manual_seed(0)
    args = dict(arch="resnet-10", n_classes=len(CLASSES), shortcut="A", conv1_t_size=7, conv1_t_stride=1,
                no_max_pool=False, widen_factor=0.125)
    net = build_model(**args)
    if fc_bias is not None:
        with torch.no_grad():
            net.fc.weight.zero_()
            net.fc.bias.copy_(torch.tensor(fc_bias))
    record = RunRecord(args, CLASSES, norm, sample_size=32, sample_duration=16, video_height=video_height)
    torch.save({"model": net.state_dict(), **record.to_dict()}, path)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = infer.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def timeline(out: Path) -> list[dict]:
    with open(out / "timeline.csv") as f:
        return list(csv.DictReader(f))


# ---- reading and cutting ------------------------------------------------------------------------------------------

def test_windows_are_the_papers_and_streamed_one_at_a_time():
    """Starts 0, 16, ... while a full window fits (eval_starts); a short video loops from frame 0; the frames are
    pulled lazily: the first window comes after 16 frames, not after the whole video."""
    pulled = []

    def frames(n):
        for i in range(n):
            pulled.append(i)
            yield np.full((4, 6), i, np.uint8), np.full((2, 6), i, np.uint8)

    for n in (1, 10, 16, 31, 32, 100):
        got = list(infer.windows(frames(n), 16))
        assert [s for s, _, _ in got] == eval_starts(n, 16).tolist()
        for start, y, uv in got:
            idx = (start + np.arange(16)) % n
            assert y.shape == (16, 4, 6) and uv.shape == (16, 2, 6)
            np.testing.assert_array_equal(y[:, 0, 0], idx) and np.testing.assert_array_equal(uv[:, 0, 0], idx)
    pulled.clear()
    first = next(infer.windows(frames(1000), 16))
    assert first[0] == 0 and len(pulled) == 16


@pytest.mark.parametrize("name,kw", [
    ("hole.mp4", dict(times=[i * 3600 for i in range(12)] + [(i + 10) * 3600 for i in range(12, 24)],
                      time_base=Fraction(1, 90000))),  # 25 fps with a 0.4 s hole: 10 frames held
    ("vfr.mkv", dict(codec="ffv1", rate=30, times=[i * 10 for i in range(30)] + [300 + 30 * i for i in range(10)],
                     time_base=Fraction(1, 300))),  # 30 fps, then 10 fps: frames repeated 3 times
    ("phone.mp4", dict(n=20, size=(192, 128), rotation=(-90, False, False))),  # rotated 90 degrees clockwise
    ("flipped.mov", dict(n=20, size=(128, 96), rotation=(180, False, False))),
])
def test_frames_are_what_prepare_data_stores(tmp_path, name, kw):
    """The frames infer.py sees are prepare_data.py's output frames: the same count at the same constant rate
    (retimed by presentation time), the same upright size and the same pictures (codec noise only)."""
    from prepare.transcode import EncodeSettings, transcode

    n = kw.pop("n", len(kw.get("times", [])))
    src = write_source(tmp_path / name, n, **kw)
    info = transcode(src, tmp_path / "out.webm", EncodeSettings(height=64, crf=4))
    frames = infer.Frames(str(src), 64)
    got = [y for y, _ in frames]
    assert (len(got), float(frames.rate), frames.width) == (info.num_frames, info.fps, info.width)
    with av.open(str(tmp_path / "out.webm")) as c:
        stored = [f.to_ndarray()[:64] for f in c.decode(video=0)]  # Y planes (H, W)
    assert all(y.shape == (64, info.width) for y in got)
    for k, (a, b) in enumerate(zip(got, stored, strict=True)):
        assert np.abs(a.astype(int) - b).mean() < 2.5, k  # neighbouring frames differ by ~5 levels


def test_a_full_range_source_is_read_in_the_limited_range_as_prepare_data_stores_it(tmp_path):
    """MJPEG decodes to full-range pixels (0-255); preparation brings them to the limited range (16-235), and
    infer.py reads them the same way (pipeline/video.py's Geometry.apply): a black half at Y 16, a white one at 235
    in every frame (before, infer.py kept 0 and 255 and saw other pixels than the model was trained on)."""
    w, h = 64, 48
    path = tmp_path / "mjpeg.avi"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuvj420p"
        s.codec_context.qmax = s.codec_context.qmin = 2
        img = np.zeros((h, w, 3), np.uint8)
        img[:, w // 2:] = 255
        for _ in range(20):
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    ys = [y for y, _ in infer.Frames(str(path), h)]
    assert len(ys) == 20
    for y in ys:
        assert np.unique(y[:, : w // 2 - 8]).tolist() == [16] and np.unique(y[:, w // 2 + 8:]).tolist() == [235]


def test_unreadable_files_each_say_why(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mkv").write_bytes(b"\x00garbage" * 500)
    reasons = {}
    for name in ("empty.mp4", "garbage.mkv", "missing.avi"):
        with pytest.raises(infer.Rejected) as e:
            list(infer.Frames(str(tmp_path / name), 64))
        reasons[name] = str(e.value)
    assert reasons == {"empty.mp4": "empty file (0 bytes)", "missing.avi": "missing: file not found",
                       "garbage.mkv": reasons["garbage.mkv"]}
    assert reasons["garbage.mkv"].startswith("not a video: ffmpeg cannot open it")


def test_a_still_image_is_refused_named_or_in_a_folder(tmp_path, capsys):
    """A JPEG or PNG (or any file that decodes to one frame) has no motion to recognise: refused with one line,
    exit status 1, whether named or found in a folder; the videos beside it are still predicted."""
    from PIL import Image

    ckpt = our_checkpoint(tmp_path / "best.pt")
    folder = tmp_path / "shots"
    video = write_source(folder / "clip.mp4", 20)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=90)
    one_frame = write_source(tmp_path / "one_frame.mp4", 1)
    out = tmp_path / "out"
    code, _, err = run([str(tmp_path / "photo.jpg"), str(folder), str(one_frame), "--checkpoint", str(ckpt), "--out",
                        str(out)], capsys)
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {tmp_path / 'photo.jpg'}: a still image (mjpeg, one frame), not a video: nothing moves in it for the "
        "model to recognise",
        f"error: {folder / 'photo.png'}: a still image (png, one frame), not a video: nothing moves in it for the model "
        "to recognise",
        f"error: {one_frame}: a still image (h264, one frame), not a video: nothing moves in it for the model to "
        "recognise"]
    assert err.splitlines()[-1] == "3 of 4 file(s) failed"
    assert list(json.loads((out / "predictions.json").read_text())["results"]) == [str(video)]
    assert infer.video_files([str(folder)]) == [str(video), str(folder / "photo.png")]


def test_an_unwritable_out_is_found_before_any_file_runs(tmp_path, capsys, monkeypatch):
    """--out that cannot be made (a file stands in its way): one line and status 2 before any decoding."""
    ckpt = our_checkpoint(tmp_path / "best.pt")
    video = write_source(tmp_path / "v.mp4", 20)
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(infer, "infer_file", lambda *a, **kw: pytest.fail("a file ran"))
    code, stdout, err = run([str(video), "--checkpoint", str(ckpt), "--out", str(tmp_path / "taken" / "out")], capsys)
    assert (code, stdout) == (2, "")
    assert err == (f"error: --out {tmp_path / 'taken' / 'out'}: {tmp_path / 'taken'} is a file, not a folder; HINT: "
                   "choose another --out\n")


def test_results_that_cannot_be_written_at_the_end_are_one_line(tmp_path, capsys):
    """predictions.json cannot be written after every file ran (here it is a folder): the table is still printed,
    then one line naming the folder and the reason, exit status 1."""
    ckpt = our_checkpoint(tmp_path / "best.pt")
    video = write_source(tmp_path / "v.mp4", 20)
    (tmp_path / "out" / "predictions.json").mkdir(parents=True)
    code, stdout, err = run([str(video), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "v.mp4" in stdout
    assert err == (f"error: cannot write the results to {tmp_path / 'out'} ([Errno 21] Is a directory: "
                   f"'{tmp_path / 'out' / 'predictions.json'}')\n")


# ---- end to end -----------------------------------------------------------------------------------------------------

def test_any_container_and_codec_a_folder_and_bad_files(tmp_path, capsys):
    """H.264 MP4, MPEG-4 AVI, VP9 WebM, FFV1 MKV and an H.264 MOV in a folder and by name, plus an unreadable
    and a missing file: one line each for the two, exit status 1, the rest predicted. A model whose every window
    gets the logits fc_bias: every file's scores are softmax(fc_bias), its windows those of eval_starts."""
    bias = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    ckpt = our_checkpoint(tmp_path / "best.pt", fc_bias=bias)
    folder = tmp_path / "videos"
    sources = {folder / "h264.mp4": ("libx264", 40), folder / "mpeg4.avi": ("mpeg4", 10),
               folder / "vp9.webm": ("libvpx-vp9", 33), folder / "sub" / "ffv1.mkv": ("ffv1", 16),
               tmp_path / "clip.mov": ("libx264", 50)}
    for path, (codec, n) in sources.items():
        write_source(path, n, codec)
    (folder / "notes.txt").write_text("not a video: not picked up from the folder")
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    out = tmp_path / "out"
    code, stdout, err = run([str(folder), str(tmp_path / "clip.mov"), str(tmp_path / "missing.webm"),
                             "--checkpoint", str(ckpt), "--out", str(out), "--top-k", "3"], capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {folder / 'broken.mp4'}: not a video: ffmpeg cannot open it (Invalid data found "
                      "when processing input)", f"error: {tmp_path / 'missing.webm'}: missing: file not found"]
    pred = json.loads((out / "predictions.json").read_text())
    assert sorted(pred["results"]) == sorted(str(p) for p in sources)
    want = torch.tensor(bias).softmax(0).tolist()[::-1][:3]
    for top in pred["results"].values():
        assert [t["label"] for t in top] == ["f", "e", "d"]
        assert [t["score"] for t in top] == pytest.approx(want, abs=1e-6)
    rows = timeline(out)
    for path, (_, n) in sources.items():
        mine = [r for r in rows if r["file"] == str(path)]
        assert [float(r["start_s"]) for r in mine] == [s / 25 for s in eval_starts(n, 16)]
        assert all(r["label"] == "f" and float(r["score"]) == pytest.approx(want[0], abs=1e-6) for r in mine)
    assert "h264.mp4" in stdout and "f 0.2" in stdout  # the table


def test_infer_gives_evaluate_s_predictions_on_prepared_videos(tmp_path, capsys, monkeypatch):
    """On prepared videos (VP9, the checkpoint's video height already) infer.py's frames are the stored frames and
    its pixel operations the nvdec backend's (pipeline/augment.py): the same predictions as evaluate.py --backend
    nvdec (its CPU twin decodes with PyAV too), for a model trained with the authors' later normalisation, which
    infer.py takes from the checkpoint."""
    import evaluate

    frames = [40, 10, 33]
    data = make_dataset(tmp_path / "data", {"val": [{"frames": n} for n in frames]}, classes=CLASSES, width=160,
                        height=128)
    ckpt = our_checkpoint(tmp_path / "best.pt", norm=PRESETS["kinetics-0-1"], video_height=128)

    def nvdec_twin(data, **kw):  # evaluate.py's loader, built as the nvdec backend with its CPU twin decoder
        from pipeline.backends.nvdec import NvdecLoader
        from pipeline.base import LoaderConfig

        return NvdecLoader(LoaderConfig(data=Path(data), **{**kw, "backend": "nvdec"}), decoder="pyav")

    monkeypatch.setattr(evaluate, "build_loader", nvdec_twin)  # ("nvdec" on the CPU is refused on the command line)
    evaluate.main(["--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval"), "--backend",
                   "decord", "--workers", "1", "--batch-size", "4"])
    files = sorted((data / "videos").rglob("*.webm"))
    code, stdout, _ = run([*map(str, files), "--checkpoint", str(ckpt), "--out", str(tmp_path / "infer"),
                           "--top-k", "6", "--batch-size", "2"], capsys)
    assert code == 0 and "kinetics-0-1" in stdout
    want = json.loads((tmp_path / "eval" / "predictions.json").read_text())["results"]
    got = json.loads((tmp_path / "infer" / "predictions.json").read_text())["results"]
    for f in files:
        mine = {t["label"]: t["score"] for t in got[str(f)]}
        theirs = {t["label"]: t["score"] for t in want[f.stem]}
        assert set(theirs) <= set(mine)
        for label, score in theirs.items():
            assert mine[label] == pytest.approx(score, abs=1e-6), (f.name, label)
    assert len(timeline(tmp_path / "infer")) == sum(len(eval_starts(n, 16)) for n in frames)


def test_authors_checkpoint_with_flags_class_names_and_normalisation(tmp_path, capsys):
    """A 3D-ResNets-PyTorch checkpoint ({"state_dict": module.-prefixed, "arch"}, type B) runs with --shortcut B,
    its normalisation flag and --classes; without the flag that describes it, or with a class file of the wrong
    length, a one-line usage error (exit status 2)."""
    from model import build_model

    net = build_model("resnet-10", n_classes=4, shortcut="B", widen_factor=0.125)
    ckpt = tmp_path / "r3d10_K_200ep.pth"
    torch.save({"epoch": 200, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer": {}}, ckpt)
    video = write_source(tmp_path / "v.mp4", 20, size=(128, 96))
    (tmp_path / "classes.txt").write_text("run\njump\nswim\nclimb\n\n")
    common = [str(video), "--checkpoint", str(ckpt), "--widen-factor", "0.125", "--sample-size", "32"]
    code, stdout, _ = run([*common, "--shortcut", "B", "--norm", "kinetics-0-1", "--classes",
                           str(tmp_path / "classes.txt"), "--out", str(tmp_path / "o"), "--height", "96"], capsys)
    assert code == 0
    top = json.loads((tmp_path / "o" / "predictions.json").read_text())["results"][str(video)]
    assert sorted(t["label"] for t in top) == ["climb", "jump", "run", "swim"]
    assert "kinetics-0-1 (value scale 1" in stdout
    code, stdout, _ = run([*common, "--shortcut", "B", "--out", str(tmp_path / "n")], capsys)
    top = json.loads((tmp_path / "n" / "predictions.json").read_text())["results"][str(video)]
    assert code == 0 and sorted(t["label"] for t in top) == ["0", "1", "2", "3"]  # no --classes: numbered

    code, _, err = run([*common, "--out", str(tmp_path / "x")], capsys)  # type A: the downsample weights do not fit
    assert code == 2 and err.count("\n") == 1 and "HINT: give --arch, --shortcut" in err
    (tmp_path / "three.txt").write_text("run\njump\nswim\n")
    code, _, err = run([*common, "--shortcut", "B", "--classes", str(tmp_path / "three.txt")], capsys)
    assert code == 2 and err.splitlines()[-1].endswith("three.txt: 3 names, the checkpoint has 4 classes")


@pytest.mark.parametrize("flags,message", [
    (["--top-k", "0"], "--top-k 0: must be >= 1"),
    (["--height", "63"], "--height 63: must be even (yuv420p)"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--std-values", "1", "0", "1", "--value-scale", "1", "--mean-values", "0", "0", "0"],
     "--std-values 0: must be > 0"),
    (["--norm", "kinetics", "--value-scale", "1"], "--norm kinetics and --value-scale: give a preset or custom "
                                                   "values, not both"),
    (["--classes", "nowhere.txt"], "--classes nowhere.txt: no such file"),
])
def test_usage_errors_are_one_line_and_status_2(tmp_path, capsys, flags, message):
    ckpt = our_checkpoint(tmp_path / "best.pt")
    video = write_source(tmp_path / "v.mp4", 5)
    code, _, err = run([str(video), "--checkpoint", str(ckpt), *flags], capsys)
    assert code == 2 and "Traceback" not in err and err.splitlines()[-1].endswith(f"error: {message}")


def test_no_video_files_and_no_checkpoint_are_usage_errors(tmp_path, capsys):
    ckpt = our_checkpoint(tmp_path / "best.pt")
    (tmp_path / "empty").mkdir()
    code, _, err = run([str(tmp_path / "empty"), "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and f"error: no video files in {tmp_path / 'empty'}" in err
    code, _, err = run([str(tmp_path / "empty"), "--checkpoint", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and err.splitlines()[-1].endswith(f"--checkpoint {tmp_path / 'nope.pt'}: no such file")


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    """A real SIGINT to this process while the second file runs (as a terminal's Ctrl-C, with Python's own
    handler): one line, nothing written, exit status 130."""
    import os
    import signal

    ckpt = our_checkpoint(tmp_path / "best.pt")
    videos = [write_source(tmp_path / f"v{i}.mp4", 20) for i in range(3)]
    infer_file, calls = infer.infer_file, []

    def pressing_ctrl_c_in_the_second_file(*a, **kw):
        calls.append(a[0])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return infer_file(*a, **kw)

    monkeypatch.setattr(infer, "infer_file", pressing_ctrl_c_in_the_second_file)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest may run with SIGINT ignored
    try:
        code, _, err = run([*map(str, videos), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and len(calls) == 2
    assert err == "interrupted: nothing was written (the files come at the end); run the same command again\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_gpu_gives_the_cpu_predictions(tmp_path, capsys):
    """--device cuda (pixel operations and model on the GPU, fp32) predicts what the CPU does."""
    ckpt = our_checkpoint(tmp_path / "best.pt", norm=PRESETS["kinetics-0-1"])
    video = write_source(tmp_path / "v.mp4", 40)
    results = {}
    for device in ("cpu", "cuda"):
        code, _, _ = run([str(video), "--checkpoint", str(ckpt), "--out", str(tmp_path / device), "--device", device,
                          "--no-amp"], capsys)
        assert code == 0
        results[device] = json.loads((tmp_path / device / "predictions.json").read_text())["results"][str(video)]
    cpu = {t["label"]: t["score"] for t in results["cpu"]}
    for t in results["cuda"]:
        assert t["score"] == pytest.approx(cpu[t["label"]], abs=1e-3)
