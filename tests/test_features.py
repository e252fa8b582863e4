"""Features for downstream work (engine/features.py, infer.py --features, evaluate.py --features): every family's
pooled features are exactly its classifier's input, with the published widths; file names for any video_id; the
rank that computes each video; the folder (journals merged, killed runs' temp files deleted, one run at a time,
another model refused); and end to end: one .npy per video with one row per window (shorter than, equal to and
longer than 16 frames), each row the model's pooled output for that window's clip (a direct forward on the same
clip tensor), exact features.csv and features.json, resuming without decoding again, a kill -9 leaving no
half-written file, two processes writing each video once."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_infer import run as run_infer  # infer.main's exit status, stdout and stderr

from engine.features import (
    COLUMNS,
    FeatureDir,
    FeatureRow,
    FeaturesError,
    FeatureWriter,
    WindowGatherer,
    file_name,
    video_owners,
)
from model import FAMILIES, build_model

ROOT = Path(__file__).resolve().parent.parent


# ---- the model: pooled features = the classifier's input --------------------------------------------------------

ONE_PER_FAMILY = [archs[0] for archs in FAMILIES.values()] + ["resnet-50", "preresnet-50", "r2plus1d-50"]


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_pooled_features_are_exactly_the_classifiers_input(arch):
    """For every family: pooled_features(x) is what the classifier receives in a forward pass (captured by a hook
    on it), and the classifier of it gives the forward pass's logits, bit for bit."""
    torch.manual_seed(0)
    net = build_model(arch, n_classes=5, widen_factor=0.25 if arch.startswith("resnext") else 0.125).eval()
    seen = []
    net.head.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        logits = net(x)
        pooled = net.pooled_features(x)
    assert pooled.shape == (2, net.head.in_features) and pooled.dtype == torch.float32
    assert torch.equal(pooled, seen[0])
    assert torch.equal(net.head(pooled), logits)


# The classifier's input at the published widths (widen_factor 1, each family's defaults): 512 for the BasicBlock
# depths, 2048 for the Bottleneck ones (ResNeXt: 2 x 1024; Wide ResNet: 2 x 512 x wide_k 2), DenseNet-BC's
# 64 + 32 per layer halved at each transition.
DIMS = {"resnet-10": 512, "resnet-18": 512, "resnet-34": 512, "resnet-50": 2048, "resnet-152": 2048,
        "preresnet-18": 512, "preresnet-200": 2048, "resnext-101": 2048, "wideresnet-50": 2048,
        "densenet-121": 1024, "densenet-169": 1664, "densenet-201": 1920, "densenet-264": 2688,
        "r2plus1d-18": 512, "r2plus1d-34": 512, "r2plus1d-101": 2048}  # fmt: skip


@pytest.mark.parametrize("arch,dim", DIMS.items())
def test_feature_dims_at_the_published_widths(arch, dim):
    with torch.device("meta"):  # shapes only: no memory, no compute
        net = build_model(arch, n_classes=400).eval()
        out = net.pooled_features(torch.empty(1, 3, 16, 112, 112))
    assert net.head.in_features == dim and tuple(out.shape) == (1, dim)


# ---- names, ranks, the folder ------------------------------------------------------------------------------------

def test_file_names_keep_safe_ids_and_escape_the_rest():
    assert file_name("abc_000010_000020") == "abc_000010_000020.npy"
    assert file_name("-4Hn7EbTfOY_000010_000020") == "-4Hn7EbTfOY_000010_000020.npy"  # Kinetics ids may start with -
    assert file_name("v_ApplyEyeMakeup_g01_c01") == "v_ApplyEyeMakeup_g01_c01.npy"
    assert file_name("#20_Rhythm_clap_u_nm_np1_fr_goo_0") == "#20_Rhythm_clap_u_nm_np1_fr_goo_0.npy"  # HMDB51
    assert file_name("Café (2)") == "Café (2).npy"
    assert file_name("a/b") == "a%2Fb.npy"
    assert file_name("100%") == "100%25.npy"
    assert file_name("a%2Fb") == "a%252Fb.npy"  # not the name of "a/b"
    assert file_name("x:y*?") == "x%3Ay%2A%3F.npy"
    assert file_name("tab\there") == "tab%09here.npy"
    assert file_name("..") == "%2E%2E.npy" and file_name(".hidden") == "%2Ehidden.npy"
    assert file_name("ends.") == "ends%2E.npy" and file_name("ends ") == "ends%20.npy"
    long_a, long_b = "é" * 150, "é" * 149 + "e"  # 300 bytes in UTF-8
    # cut at 183 bytes (a whole character: 91 x 2), then '~' and 16 hex digits: 199 bytes before ".npy"
    assert file_name(long_a) == "é" * 91 + "~" + hashlib.sha256(long_a.encode()).hexdigest()[:16] + ".npy"
    assert file_name(long_a) != file_name(long_b)
    with pytest.raises(ValueError):
        file_name("")


def test_video_owners_are_contiguous_balanced_and_whole():
    counts = np.array([2, 1, 3, 1, 2, 1, 1])  # windows per video; 11 in all
    assert video_owners(counts, 1).tolist() == [0] * 7
    assert video_owners(counts, 2).tolist() == [0, 0, 0, 1, 1, 1, 1]  # 6 and 5 windows
    assert video_owners(counts, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]  # first windows 0, 2, 3 | 6, 7 | 9, 10
    assert video_owners(np.array([5]), 4).tolist() == [0]
    assert video_owners(np.array([], np.int64), 2).tolist() == []


def test_window_gatherer_hands_over_each_video_when_its_last_window_came():
    done = []
    g = WindowGatherer({4: 3, 7: 1, 9: 2}, lambda v, f: done.append((v, f[:, 0].tolist())))
    feats = np.arange(6, dtype=np.float32)[:, None].repeat(2, 1)  # window i: [i, i]
    g.add(np.array([4, 4]), feats[:2])
    assert done == [] and g.unfinished() == [4]
    g.add(np.array([4, 7, 9]), feats[2:5])
    assert done == [(4, [0.0, 1.0, 2.0]), (7, [3.0])] and g.unfinished() == [9]
    g.add(np.array([9]), feats[5:])
    assert done[-1] == (9, [4.0, 5.0]) and g.unfinished() == []


def row(vid: str, windows: int = 2) -> FeatureRow:
    return FeatureRow(vid, file_name(vid), f"src/{vid}.mp4", 16 * windows, windows, 3, 30.0, 0.0, 16 / 30)


def test_the_folder_merges_journals_and_keeps_only_rows_with_their_file(tmp_path):
    """The previous features.csv and the journals of a killed run become features.csv: the latest row of each
    video whose .npy is there, this run's input first; a .npy without a row is not done (computed again); a
    journal line cut short is dropped; temp files of the killed run are deleted."""
    root = tmp_path
    w = FeatureWriter(root, rank=1)
    for vid in ("a", "b", "c"):
        w.write(row(vid), np.zeros((2, 3), np.float32))
    w.close()
    with open(root / ".journal-rank1.csv", "a") as f:
        f.write("d,d.npy,src/d.mp4,32,2")  # cut short by a kill
    np.save(root / "d.npy", np.zeros((2, 3), np.float32))  # its row never reached the journal
    (root / "b.npy").unlink()  # deleted by the user
    (root / ".e.npy.partial-host-1-abcd.npy").write_bytes(b"\x93NUMPY half")
    fd = FeatureDir(root, {"checkpoint_sha256": "x", "model_args": {}, "input": {}, "features": {},
                           "precision": "float32"})
    assert list(fd.done) == ["a", "c"] and fd.done["c"] == row("c")
    assert not list(root.glob(".journal-*")) and not list(root.glob("*.partial-*"))
    with open(root / "features.csv") as f:
        assert [r["video_id"] for r in csv.DictReader(f)] == ["a", "c"]
    w = FeatureWriter(root)
    w.write(row("d", 1), np.ones((1, 3), np.float32))
    w.close()
    fd.finish(["d", "c", "x"])  # this run's input order first, the other rows after
    lines = (root / "features.csv").read_text().splitlines()
    assert lines == [",".join(COLUMNS), *(",".join(row(v, k).fields()) for v, k in (("d", 1), ("c", 2), ("a", 2)))]
    assert lines[1] == "d,d.npy,src/d.mp4,16,1,3,30.0,0.0,0.5333333333333333"


def test_one_run_per_folder_and_another_model_is_refused(tmp_path):
    desc = {"checkpoint_sha256": "abc", "model_args": {"arch": "resnet-18"}, "input": {"sample_size": 112},
            "features": {"dim": 512}, "precision": "float32", "checkpoint": "a.pt", "videos": "x"}
    first = FeatureDir(tmp_path, desc)
    with pytest.raises(FeaturesError) as e:
        FeatureDir(tmp_path, desc)
    assert str(e.value) == (f"{tmp_path}: another run (pid {os.getpid()}) is writing features there; HINT: wait for "
                            "it to end, or use another --features folder")
    first.close()
    FeatureDir(tmp_path, desc | {"checkpoint": "moved/a.pt", "videos": "y"}).close()  # paths may change
    with pytest.raises(FeaturesError) as e:
        FeatureDir(tmp_path, desc | {"precision": "bf16 autocast"})
    assert str(e.value) == (f'{tmp_path} holds features of another model (precision: "float32" there, "bf16 '
                            'autocast" now); HINT: use another --features folder, or the same settings (--amp / '
                            '--no-amp)')
    with pytest.raises(FeaturesError, match="checkpoint_sha256: \"abc\" there, \"def\" now"):
        FeatureDir(tmp_path, desc | {"checkpoint_sha256": "def"})


# ---- evaluate.py --features on a prepared dataset -------------------------------------------------------------

FRAMES = [40, 10, 48, 16, 33, 20, 31]  # windows of 16: 2, 1 (looped), 3, 1 (exactly one), 2, 1, 1
WINDOWS = [2, 1, 3, 1, 2, 1, 1]
CLASSES = ("a", "b", "c", "d", "e", "f")
TINY_DIM = 64  # resnet-10 at widen 0.125: 512 / 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from videos import make_dataset

    root = tmp_path_factory.mktemp("features_data")
    return make_dataset(root, {"val": [{"frames": n} for n in FRAMES]}, classes=CLASSES, width=48, height=32)


def tiny_checkpoint(path: Path, seed: int = 0, video_height: int = 64) -> Path:
    from engine.checkpoint import RunRecord
    from pipeline.normalisation import Normalisation

    torch.manual_seed(seed)
    args = dict(arch="resnet-10", n_classes=len(CLASSES), shortcut="A", conv1_t_size=7, conv1_t_stride=1,
                no_max_pool=False, widen_factor=0.125)
    net = build_model(**args)
    record = RunRecord(args, CLASSES, Normalisation((110.0, 100.0, 90.0)), sample_size=32, sample_duration=16,
                       video_height=video_height)
    torch.save({"model": net.state_dict(), **record.to_dict()}, path)
    return path


def tiny_model(ckpt: Path) -> torch.nn.Module:
    from model import load_weights

    net = build_model("resnet-10", n_classes=len(CLASSES), widen_factor=0.125)
    load_weights(net, ckpt, verbose=False)
    return net.eval()


def evaluate_args(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "4",
            "--workers", "1", *extra]


@pytest.fixture(scope="module")
def extracted(data, tmp_path_factory):
    """evaluate.py with --features into DIR, and without, on the same checkpoint."""
    import evaluate

    tmp = tmp_path_factory.mktemp("extracted")
    ckpt = tiny_checkpoint(tmp / "best.pt")
    evaluate.main(evaluate_args(data, ckpt, tmp / "plain"))
    evaluate.main(evaluate_args(data, ckpt, tmp / "eval", "--features", str(tmp / "feats")))
    return tmp, ckpt


def test_loader_only_videos_loads_whole_videos_in_manifest_order(data):
    """loader.only_videos (evaluate.py --features): every window of the videos named, whatever the rank; [] loads
    nothing; eval mode only."""
    from pipeline import build_loader

    with build_loader(data, split="val", mode="eval", batch_size=2, workers=1, sample_size=32, rank=1,
                      world_size=2) as loader:
        loader.only_videos(np.array([2, 0]))
        plan = loader.plan
        assert plan.rows.tolist() == [0, 0, 2, 2, 2] and plan.starts.tolist() == [0, 16, 0, 16, 32]
        assert len(loader) == 3
        got = [v for _, _, video_idx in loader for v in video_idx.tolist()]
        assert got == [0, 0, 2, 2, 2]
        loader.only_videos([])
        assert len(loader) == 0 and list(loader) == []
    with build_loader(data, split="val", mode="val", batch_size=2, workers=1, sample_size=32) as loader:
        with pytest.raises(ValueError, match="only_videos is for eval mode, not 'val'"):
            loader.only_videos([0])


def test_evaluate_writes_each_windows_pooled_output(data, extracted):
    """One .npy per video, one row per window; row k is the model's pooled output for window k's clip, as the
    loader gives it in eval mode (a direct forward on the same clip tensor)."""
    from engine.cli import loader_backend
    from pipeline import build_loader
    from pipeline.normalisation import Normalisation

    tmp, ckpt = extracted
    net = tiny_model(ckpt)
    seen = []
    net.head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with build_loader(data, split="val", mode="eval", batch_size=4, workers=1, sample_size=32,
                      normalisation=Normalisation((110.0, 100.0, 90.0)),
                      backend=loader_backend("auto", on_gpu=False)) as loader:  # the backend evaluate.py used
        by_video: dict[int, list] = {}
        with torch.no_grad():
            for clips, _, video_idx in loader:
                net(clips)
                for v, f in zip(video_idx.tolist(), seen.pop(), strict=True):
                    by_video.setdefault(v, []).append(f.numpy())
    for v, n_windows in enumerate(WINDOWS):
        feats = np.load(tmp / "feats" / f"val{v:03d}.npy")
        assert feats.dtype == np.float32 and feats.shape == (n_windows, TINY_DIM)
        np.testing.assert_allclose(feats, np.stack(by_video[v]), rtol=1e-5, atol=1e-4)


def test_evaluate_features_csv_json_and_unchanged_metrics(data, extracted):
    from engine.checkpoint import file_digest

    tmp, ckpt = extracted
    feats = tmp / "feats"
    expected = [",".join(COLUMNS)] + [
        f"val{v:03d},val{v:03d}.npy,{data}/videos/val/{CLASSES[v % 6]}/val{v:03d}.webm,{n},{w},{TINY_DIM},25.0,0.0,0.64"
        for v, (n, w) in enumerate(zip(FRAMES, WINDOWS, strict=True))]
    assert (feats / "features.csv").read_text().splitlines() == expected
    desc = json.loads((feats / "features.json").read_text())
    assert desc == {
        "checkpoint": str(ckpt), "checkpoint_sha256": file_digest(ckpt), "arch": "resnet-10",
        "model_args": {"arch": "resnet-10", "n_classes": 6, "shortcut": "A", "conv1_t_size": 7, "conv1_t_stride": 1,
                       "no_max_pool": False, "widen_factor": 0.125, "cardinality": 32, "wide_k": 2},
        "class_names": list(CLASSES),
        "input": {"normalisation": {"value_scale": 255.0, "mean": [110.0, 100.0, 90.0], "std": [1.0, 1.0, 1.0]},
                  "sample_size": 32, "sample_duration": 16},
        "features": {"layer": "input of fc (the global average pool of the last stage)", "dim": TINY_DIM,
                     "dtype": "float32", "window_frames": 16, "window_stride": 16,
                     "crop": "centre square at the maximum scale, resized to 32x32",
                     "short_videos": "a video shorter than 16 frames gives one window, looped from frame 0"},
        "precision": "float32", "videos": f"evaluate.py: {data} val"}
    assert sorted(p.name for p in feats.iterdir()) == [".lock", "features.csv", "features.json",
                                                        *(f"val{v:03d}.npy" for v in range(7))]
    plain = json.loads((tmp / "plain" / "metrics.json").read_text())
    with_features = json.loads((tmp / "eval" / "metrics.json").read_text())
    for key in ("video_top1", "video_top5", "clip_top1", "clip_top5", "n_videos", "n_clips"):
        assert with_features[key] == pytest.approx(plain[key]), key


def test_evaluate_resumes_without_computing_what_is_written(data, extracted, tmp_path, capsys):
    """A second run computes only the videos missing from DIR (here one deleted, one whose row never reached a
    journal), deletes a killed run's temp file, leaves the others untouched, and gives the same metrics and
    predictions: the videos written before count with the logits of their stored features."""
    import shutil

    import evaluate

    tmp, ckpt = extracted
    feats = tmp_path / "feats"
    shutil.copytree(tmp / "feats", feats)
    (feats / "val002.npy").unlink()
    rows = (feats / "features.csv").read_text().splitlines()
    (feats / "features.csv").write_text("\n".join(r for r in rows if not r.startswith("val005,")) + "\n")
    (feats / ".val004.npy.partial-host-9-0a0b.npy").write_bytes(b"half")
    before = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.npy")}
    capsys.readouterr()
    evaluate.main(evaluate_args(data, ckpt, tmp_path / "eval", "--features", str(feats)))
    out = capsys.readouterr().out
    assert "features: 2 videos to compute into" in out and ", 5 there already" in out
    assert "features: wrote 2 videos, 5 there already" in out
    after = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.npy")}
    assert sorted(n for n in after if after[n] != before.get(n)) == ["val002.npy", "val005.npy"]
    assert not list(feats.glob(".*partial*"))
    assert (feats / "features.csv").read_text() == (tmp / "feats" / "features.csv").read_text()
    for v in (2, 5):
        np.testing.assert_allclose(np.load(feats / f"val{v:03d}.npy"), np.load(tmp / "feats" / f"val{v:03d}.npy"),
                                   rtol=1e-5, atol=1e-4)
    m1 = json.loads((tmp / "eval" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("video_top1", "video_top5", "clip_top1", "clip_top5", "n_clips"):
        assert m2[key] == pytest.approx(m1[key]), key
    p1 = json.loads((tmp / "eval" / "predictions.json").read_text())["results"]
    p2 = json.loads((tmp_path / "eval" / "predictions.json").read_text())["results"]
    for vid in p1:
        assert [t["label"] for t in p2[vid]] == [t["label"] for t in p1[vid]]
        assert [t["score"] for t in p2[vid]] == pytest.approx([t["score"] for t in p1[vid]], abs=1e-6)


def test_two_processes_write_each_video_once(data, extracted, tmp_path, capfd):
    """--nproc 2: each video computed whole by one rank (3 and 4 of them: 6 and 5 windows; rank 0 checks that the
    ranks wrote each video exactly once), the same features and features.csv as one process."""
    import evaluate

    tmp, ckpt = extracted
    evaluate.main(evaluate_args(data, ckpt, tmp_path / "eval", "--features", str(tmp_path / "feats"), "--nproc", "2"))
    assert "features: wrote 7 videos (rank 0: 3, rank 1: 4), 0 there already" in capfd.readouterr().out
    assert (tmp_path / "feats" / "features.csv").read_text() == (tmp / "feats" / "features.csv").read_text()
    for v in range(7):
        np.testing.assert_allclose(np.load(tmp_path / "feats" / f"val{v:03d}.npy"),
                                   np.load(tmp / "feats" / f"val{v:03d}.npy"), rtol=1e-5, atol=1e-4)


def test_features_of_another_checkpoint_or_with_views_are_refused(data, extracted, tmp_path, capsys):
    import evaluate

    tmp, _ = extracted
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(SystemExit) as e:
        evaluate.main(evaluate_args(data, other, tmp_path / "eval", "--features", str(tmp / "feats")))
    message = str(e.value.code)
    assert message.startswith(f"error: {tmp / 'feats'} holds features of another model (checkpoint_sha256: ")
    assert message.endswith("HINT: use another --features folder, or the same settings") and "\n" not in message
    with pytest.raises(SystemExit) as e:
        evaluate.main(evaluate_args(data, other, tmp_path / "eval", "--features", str(tmp_path / "f"), "--views",
                                    "2,1"))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --features: the features are those of the paper's windows; drop --views/--clips/--crops")


# ---- infer.py --features on video files --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Files of 10, 16 and 40 frames (shorter than, equal to and longer than one window), 96x64 at 25 fps."""
    from videos import write_video

    root = tmp_path_factory.mktemp("raw")
    write_video(root / "short.mp4", 10, codec="libx264")
    write_video(root / "-equal.webm", 16)  # a Kinetics-like name that starts with '-'
    write_video(root / "long:one.webm", 40)  # ':' is escaped in the file name
    return root


def test_infer_writes_each_windows_pooled_output_and_resumes_without_decoding(raw, tmp_path, capsys, monkeypatch):
    import infer

    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    feats, out = tmp_path / "feats", tmp_path / "out"
    code, stdout, _ = run_infer([str(raw), "--checkpoint", str(ckpt), "--out", str(out), "--features", str(feats)],
                                capsys)
    assert code == 0 and "features: wrote 3 file(s), 0 there already" in stdout
    names = {"-equal": "-equal.npy", "long:one": "long%3Aone.npy", "short": "short.npy"}
    frames = {"-equal": 16, "long:one": 40, "short": 10}
    windows = {"-equal": 1, "long:one": 2, "short": 1}
    ext = {"-equal": "webm", "long:one": "webm", "short": "mp4"}
    assert (feats / "features.csv").read_text().splitlines() == [",".join(COLUMNS)] + [
        f"{vid},{names[vid]},{raw}/{vid}.{ext[vid]},{frames[vid]},{windows[vid]},{TINY_DIM},25.0,0.0,0.64"
        for vid in ("-equal", "long:one", "short")]  # the files' order (sorted)
    desc = json.loads((feats / "features.json").read_text())
    assert desc["features"]["video_height"] == 64 and desc["videos"] == "infer.py: video files"

    # Each row: the pooled output of the same clip tensor infer.py builds (window_clips), by a direct forward.
    net = tiny_model(ckpt)
    seen = []
    net.head.register_forward_hook(lambda module, args, o: seen.append(args[0]))
    record = infer.parse_args([str(raw), "--checkpoint", str(ckpt), "--out", str(out)])[1]
    for vid, name in names.items():
        stored = np.load(feats / name)
        assert stored.dtype == np.float32 and stored.shape == (windows[vid], TINY_DIM)
        batch = list(infer.windows(iter(infer.Frames(f"{raw}/{vid}.{ext[vid]}", record.video_height)), 16))
        with torch.no_grad():
            net(infer.window_clips(batch, record, torch.device("cpu")))
        np.testing.assert_allclose(stored, seen.pop().numpy(), rtol=1e-5, atol=1e-4)

    first = (out / "predictions.json").read_text(), (out / "timeline.csv").read_text()
    monkeypatch.setattr(infer, "Frames", lambda *a, **kw: pytest.fail("a file was decoded again"))
    code, stdout, _ = run_infer([str(raw), "--checkpoint", str(ckpt), "--out", str(out), "--features", str(feats)],
                                capsys)
    assert code == 0 and "features: wrote 0 file(s), 3 there already" in stdout
    assert ((out / "predictions.json").read_text(), (out / "timeline.csv").read_text()) == first


def test_infer_refuses_two_files_with_one_name(raw, tmp_path, capsys):
    from videos import write_video

    other = write_video(tmp_path / "elsewhere" / "short.webm", 20)
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    (tmp_path / "elsewhere" / "long:one.jpg").write_bytes(b"")  # a thumbnail: refused as a still, no features
    code, _, err = run_infer([str(raw), str(other), str(tmp_path / "elsewhere" / "long:one.jpg"), "--checkpoint",
                              str(ckpt), "--features", str(tmp_path / "f")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].endswith(
        f"error: --features: {raw}/short.mp4 and {other} would both be 'short' (short.npy); HINT: give them separate "
        "--features folders (one run each)")
    # An image never gets features (a still, refused in one line), so its name takes no video's
    code, _, err = run_infer([f"{raw}/long:one.webm", str(tmp_path / "elsewhere" / "long:one.jpg"), "--checkpoint",
                              str(ckpt), "--out", str(tmp_path / "out"), "--features", str(tmp_path / "f")], capsys)
    assert code == 1 and f"error: {tmp_path / 'elsewhere' / 'long:one.jpg'}: " in err
    assert (tmp_path / "f" / "features.csv").read_text().splitlines()[1].startswith("long:one,long%3Aone.npy,")


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
import numpy as np
import engine.features as features
save, calls = np.save, []
def save_then_die(f, arr, **kw):
    calls.append(1)
    if len(calls) == 2:  # the second file: half of it reaches the disk, then the process is killed
        f.write(b"\\x93NUMPY" + bytes(20))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    save(f, arr, **kw)
features.np.save = save_then_die
import infer
sys.exit(infer.main(sys.argv[1:]))
"""


def test_a_killed_run_leaves_no_half_written_file_and_is_finished_by_running_again(raw, tmp_path, capsys):
    """kill -9 while the second .npy is being written: the first is whole, the second is only a hidden temp file
    (no <name>.npy), features.csv is not needed to know it; running again finishes the job (the temp file
    deleted, the first file not computed again) with the features of an uninterrupted run."""
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    feats = tmp_path / "feats"
    argv = [str(raw), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--features", str(feats)]
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.format(root=str(ROOT)), *argv], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in feats.iterdir() if p.suffix == ".npy" and p.name[0] != ".") == ["-equal.npy"]
    assert np.load(feats / "-equal.npy").shape == (1, TINY_DIM)  # the first file, whole
    assert len(list(feats.glob(".long%3Aone.npy.partial-*"))) == 1  # the second: a temp file only
    assert [r.split(",")[0] for r in (feats / ".journal-rank0.csv").read_text().splitlines()] == ["-equal"]
    first_mtime = (feats / "-equal.npy").stat().st_mtime_ns

    code, stdout, _ = run_infer(argv, capsys)
    assert code == 0 and "features: wrote 2 file(s), 1 there already" in stdout
    assert (feats / "-equal.npy").stat().st_mtime_ns == first_mtime
    assert not list(feats.glob(".*partial*")) and not list(feats.glob(".journal-*"))
    clean = tmp_path / "clean"
    assert run_infer([*argv[:-1], str(clean)], capsys)[0] == 0
    for name in ("-equal.npy", "long%3Aone.npy", "short.npy"):
        np.testing.assert_array_equal(np.load(feats / name), np.load(clean / name))
    assert (feats / "features.csv").read_text() == (clean / "features.csv").read_text()
