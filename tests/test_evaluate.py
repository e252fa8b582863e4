"""evaluate.py and engine/metrics.py: video averaging and top-k on hand-made scores (exact values), the output
files of a model with known outputs (exact metrics.json, predictions.json in 3D-ResNets-PyTorch's format,
per_class.csv), several processes counting every video once and a miscount refused, multi-view testing (--views
K,C: a model that reads each view's start and crop from its pixels gives exactly the expected averages),
3D-ResNets-PyTorch checkpoints (with each published normalisation: only the documented one gives the direct
model call's outputs), model flags checked against our checkpoints' run record, and one-line errors (every
numeric flag, Ctrl-C)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.metrics import (
    VideoAccumulator,
    accuracy_summary,
    confusion_matrix,
    per_class_rows,
    reference_predictions,
    topk_correct,
)

# Six classes, three videos, five clips (probabilities, each row sums to 1, no ties where it matters).
CLIPS = {  # video: (label, [clip probabilities])
    0: (0, [[0.60, 0.30, 0.05, 0.02, 0.02, 0.01], [0.20, 0.70, 0.04, 0.03, 0.02, 0.01]]),
    1: (3, [[0.12, 0.11, 0.10, 0.60, 0.04, 0.03]]),
    2: (5, [[0.30, 0.25, 0.20, 0.15, 0.07, 0.03], [0.10, 0.20, 0.30, 0.25, 0.10, 0.05]]),
}
# Video means: v0 [0.40, 0.50, ...] -> top-1 wrong (class 1), top-5 right; v1 -> right; v2 [0.2, 0.225, 0.25,
# 0.2, 0.085, 0.04] -> label 5 ranks last: top-1 and top-5 wrong. Video top-1 1/3, top-5 2/3.
# Clips: v0c0 right, v0c1 top-5 only, v1 right, both v2 clips miss top-5. Clip top-1 2/5, top-5 3/5.


def hand_made_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Two batches of (logits, labels, video_idx) in a shuffled clip order; logits = log(p), so softmax = p."""
    order = [(2, 0), (0, 1), (1, 0), (0, 0), (2, 1)]  # (video, clip)
    logits = torch.tensor([CLIPS[v][1][c] for v, c in order], dtype=torch.float64).log().float()
    labels = torch.tensor([CLIPS[v][0] for v, _ in order])
    video_idx = torch.tensor([v for v, _ in order])
    return [(logits[:3], labels[:3], video_idx[:3]), (logits[3:], labels[3:], video_idx[3:])]


def test_video_averaging_and_topk_on_hand_made_logits():
    acc = VideoAccumulator(n_videos=3, n_classes=6)
    for batch in hand_made_batches():
        acc.add(*batch)
    assert acc.counts.tolist() == [2, 1, 2]
    expected_v0 = [(0.60 + 0.20) / 2, (0.30 + 0.70) / 2, 0.045, 0.025, 0.02, 0.01]
    assert acc.video_probs()[0].tolist() == pytest.approx(expected_v0, abs=1e-7)
    m = acc.summary(torch.tensor([0, 3, 5]))
    assert (m["video_top1"], m["video_top5"], m["video_avg"]) == (1 / 3, 2 / 3, 0.5)
    assert (m["clip_top1"], m["clip_top5"]) == (2 / 5, 3 / 5)
    assert (m["n_videos"], m["n_clips"], m["n_labelled_videos"]) == (3, 5, 3)


def test_merging_rank_shares_equals_one_pass():
    """Two 'ranks' with a video split between them give exactly the single-process result."""
    (b1, b2), whole = hand_made_batches(), VideoAccumulator(3, 6)
    ranks = [VideoAccumulator(3, 6), VideoAccumulator(3, 6)]
    ranks[0].add(*b1)
    ranks[1].add(*b2)
    for b in (b1, b2):
        whole.add(*b)
    merged = VideoAccumulator.merge([r.state() for r in ranks], 3, 6)
    assert torch.equal(merged.counts, whole.counts)
    assert torch.allclose(merged.sums, whole.sums, rtol=0, atol=1e-15)
    assert merged.summary(torch.tensor([0, 3, 5])) == whole.summary(torch.tensor([0, 3, 5]))


def test_topk_unknown_labels_and_fewer_classes_than_k():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, -1])  # -1: unlabelled, never a hit
    assert topk_correct(scores, labels, (1, 2, 5)).tolist() == [1, 2, 2]  # top-5 of 3 classes = top-3
    s = accuracy_summary(scores, labels)
    assert (s["top1"], s["top5"], s["n"]) == (0.5, 1.0, 2)
    assert accuracy_summary(scores, torch.tensor([-1, -1, -1]))["top1"] is None
    assert confusion_matrix(scores.argmax(1), labels, 3).tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_per_class_rows_and_reference_predictions():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    rows = per_class_rows(probs, labels, ["a", "b", "c"])
    assert rows == [{"class": "a", "n": 1, "top1": 1.0, "top5": 1.0}, {"class": "b", "n": 2, "top1": 0.5, "top5": 1.0},
                    {"class": "c", "n": 0, "top1": None, "top5": None}]
    pred = reference_predictions(probs, ["v0", "v1", "v2"], ["a", "b", "c"], k=2)
    assert pred["results"]["v1"] == [{"label": "b", "score": 0.6}, {"label": "a", "score": 0.3}]
    assert list(pred["results"]) == ["v0", "v1", "v2"]


# ---- evaluate.py end to end on a tiny prepared dataset -------------------------------------------------------

FRAMES = [40, 10, 48, 16, 33, 20, 31]  # eval windows of 16: 2, 1 (looped), 3, 1, 2, 1, 1 -> 11 clips
CLASSES = ("a", "b", "c", "d", "e", "f")  # video i has label i % 6: a, b, c, d, e, f, a


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from videos import make_dataset  # the pipeline tests' helper: VP9 test-pattern videos, prepared layout

    root = tmp_path_factory.mktemp("eval_data")
    return make_dataset(root, {"val": [{"frames": n} for n in FRAMES]}, classes=CLASSES, width=48, height=32)


def our_checkpoint(path: Path, mean: tuple = (110.0, 100.0, 90.0), fc_bias: list[float] | None = None,
                   **model_args) -> Path:
    """A train.py checkpoint's weights and run record (the entries evaluate.py reads) for an untrained tiny model;
    fc_bias: a zero fc.weight and this bias, so that every clip gets the logits fc_bias."""
    from engine.checkpoint import RunRecord
    from model import build_model
    from pipeline.normalisation import Normalisation

    torch.manual_seed(0)
    args = dict(arch="resnet-10", n_classes=len(CLASSES), shortcut="A", conv1_t_size=7, conv1_t_stride=1,
                no_max_pool=False, widen_factor=0.125) | model_args
    net = build_model(**args)
    if fc_bias is not None:
        with torch.no_grad():
            net.fc.weight.zero_()
            net.fc.bias.copy_(torch.tensor(fc_bias))
    record = RunRecord(args, CLASSES, Normalisation(mean), sample_size=32, sample_duration=16)
    torch.save({"model": net.state_dict(), **record.to_dict()}, path)
    return path


def run_evaluate(args: list[str]) -> dict:
    import evaluate

    evaluate.main(args)
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_writes_exact_metrics_and_reference_format_outputs(data, tmp_path):
    """A model whose every clip gets the same scores, class f first and a last: only the f video (1 clip) is right
    at top-1, and only the two a videos (2 + 1 clips) miss the top 5. Hence video top-1 1/7, top-5 5/7, clip top-1
    1/11, top-5 8/11, and every video's predictions are those scores."""
    bias = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    ckpt = our_checkpoint(tmp_path / "best.pt", fc_bias=bias)
    out = tmp_path / "eval"
    m = run_evaluate(["--data", str(data), "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "4",
                      "--workers", "1"])
    assert (m["video_top1"], m["video_top5"], m["clip_top1"], m["clip_top5"]) == (1 / 7, 5 / 7, 1 / 11, 8 / 11)
    assert m["video_avg"] == pytest.approx(3 / 7, abs=1e-15)
    assert (m["n_videos"], m["n_labelled_videos"], m["n_clips"], m["n_classes"]) == (7, 7, 11, 6)
    assert m["input"] == {"normalisation": {"value_scale": 255.0, "mean": [110.0, 100.0, 90.0], "std": [1.0, 1.0, 1.0]},
                          "sample_size": 32, "sample_duration": 16, "video_height": 360}
    assert m["protocol"] == {"name": "windows", "clips": "all", "crops": 1,
                             "description": "every non-overlapping 16-frame window x 1 centre crop"}

    scores = torch.tensor(bias).softmax(0).tolist()[::-1][:5]  # f, e, d, c, b
    pred = json.loads((out / "predictions.json").read_text())
    assert list(pred["results"]) == [f"val{i:03d}" for i in range(7)]
    for vid, top in pred["results"].items():
        assert [t["label"] for t in top] == ["f", "e", "d", "c", "b"], vid
        assert [t["score"] for t in top] == pytest.approx(scores, abs=1e-7), vid

    with open(out / "per_class.csv") as f:
        rows = [(r["class"], int(r["n"]), float(r["top1"]), float(r["top5"])) for r in csv.DictReader(f)]
    assert rows == [("a", 2, 0.0, 0.0), ("b", 1, 0.0, 1.0), ("c", 1, 0.0, 1.0), ("d", 1, 0.0, 1.0), ("e", 1, 0.0, 1.0),
                    ("f", 1, 1.0, 1.0)]
    assert (out / "confusion.png").stat().st_size > 0
    assert (out / "confusion.csv").read_text() == (  # every video predicted f; true a twice
        "true \\ predicted,a,b,c,d,e,f\n" "a,0,0,0,0,0,2\n" "b,0,0,0,0,0,1\n" "c,0,0,0,0,0,1\n" "d,0,0,0,0,0,1\n"
        "e,0,0,0,0,0,1\n" "f,0,0,0,0,0,1\n")


def test_an_unlabelled_split_has_no_confusion_matrix_and_says_why(tmp_path, capsys):
    """A split without labels (Kinetics' test): predictions and metrics, no blank confusion.png or empty csv."""
    from videos import make_dataset

    data = make_dataset(tmp_path / "data", {"test": [{"frames": 20, "label": -1}, {"frames": 16, "label": -1}]},
                        classes=CLASSES, width=48, height=32)
    out = tmp_path / "eval"
    m = run_evaluate(["--data", str(data), "--split", "test", "--checkpoint", str(our_checkpoint(tmp_path / "c.pt")),
                      "--out", str(out), "--workers", "1"])
    assert (m["n_videos"], m["n_labelled_videos"], m["video_top1"]) == (2, 0, None)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_class.csv", "predictions.json"]
    stdout = capsys.readouterr().out
    assert "no confusion matrix: no video of the test split has a label (label -1)\n" in stdout
    assert "; loader: pyav\n" in stdout  # --backend auto on a CPU (engine.cli.loader_backend)
    assert f"wrote {out}/{{metrics.json, predictions.json, per_class.csv}}\n" in stdout


def test_a_video_listed_twice_is_refused_in_one_line(data, tmp_path):
    """A manifest that lists one video twice (a Kinetics CSV with a duplicated row, prepared before prepare_data.py
    refused them) would count it twice in the accuracy but once in predictions.json: refused, nothing written."""
    import evaluate

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    lines = (copy / "val.csv").read_text().splitlines(keepends=True)
    (copy / "val.csv").write_text("".join(lines + [lines[3]]))
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(copy), "--checkpoint", str(our_checkpoint(tmp_path / "c.pt")), "--out", str(out),
                       "--workers", "1"])
    assert e.value.code == (f"error: {copy}/val.csv: video_id 'val002' is listed 2 times: its video would count more "
                            "than once in the accuracy; HINT: prepare the dataset again with prepare_data.py (it keeps "
                            "one row per video and lists the others in rejected.csv)")
    assert not out.exists()


def test_results_that_cannot_be_written_at_the_end_are_one_line(data, tmp_path, capsys):
    """A write that fails after all the compute (here metrics.json is a folder; a disk that filled up meanwhile
    alike): the summary is still printed, then one line naming the folder and the reason, no traceback."""
    import evaluate

    out = tmp_path / "eval"
    (out / "metrics.json").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(data), "--checkpoint", str(our_checkpoint(tmp_path / "c.pt")), "--out", str(out),
                       "--workers", "1"])
    assert e.value.code == (f"error: cannot write the results to {out} ([Errno 21] Is a directory: "
                            f"'{out / 'metrics.json'}')")
    assert "Top-1" in capsys.readouterr().out


def test_confusion_png_draws_names_a_font_has_and_numbers_those_none_has(tmp_path, monkeypatch):
    """Class names in a script DejaVu Sans lacks are drawn with an installed font that has it (here DejaVu Serif for
    U+02EF, or another installed font that has it); names no installed font can draw become class indices (the names are in confusion.csv), and a title
    the fonts cannot draw is left out: never a glyph drawn as an empty box (matplotlib warns for each)."""
    import warnings

    from engine import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    matrix = np.array([[2, 1], [0, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_confusion(matrix, ["lift\u02ef", "drop"], tmp_path / "c.png", title="r10, data val")
        plots.plot_confusion(matrix, ["跑步", "跳"], tmp_path / "c.png", title="r10, 数据 val")
    named, numbered = figures
    assert [t.get_text() for t in named.axes[0].get_xticklabels()] == ["lift\u02ef", "drop"]
    assert (named.axes[0].get_title(), named.axes[0].get_xlabel()) == ("r10, data val", "predicted class")
    base, fallback = plots.Fonts(["lift\u02ef"]).families  # DejaVu Serif here; whichever installed font has it
    from matplotlib import font_manager

    assert base == "DejaVu Sans" and 0x2EF in plots._charmap(font_manager.findfont(fallback))
    if plots.Fonts(["跑步跳数据"]).missing:  # no CJK font here (with one, the names are drawn and the test is above)
        assert [t.get_text() for t in numbered.axes[0].get_xticklabels()] == ["0", "1"]
        assert numbered.axes[0].get_xlabel() == "predicted class index (names in confusion.csv)"
        assert numbered.axes[0].get_title() == "confusion (row-normalised)"


def feed_evaluate(monkeypatch, batches) -> None:
    """Make evaluate.py's loaders deliver batches(their own batches), a generator function, instead."""
    import evaluate

    build_loader = evaluate.build_loader

    def fed_loader(*a, **kw):
        loader = build_loader(*a, **kw)

        class Fed:
            videos = loader.videos

            def __len__(self):
                return len(loader)

            def __iter__(self):
                return batches(iter(loader))

            def close(self):
                loader.close()

        return Fed()

    monkeypatch.setattr(evaluate, "build_loader", fed_loader)


def test_a_clip_counted_twice_is_an_error(data, tmp_path, monkeypatch):
    """The loader delivers its first batch twice: evaluate.py refuses to report numbers from miscounted videos."""
    import evaluate

    def first_batch_twice(batches):
        first = next(batches)
        yield first
        yield first
        yield from batches

    feed_evaluate(monkeypatch, first_batch_twice)
    out = tmp_path / "eval"
    with pytest.raises(RuntimeError) as e:
        evaluate.main(["--data", str(data), "--checkpoint", str(our_checkpoint(tmp_path / "best.pt")), "--out",
                       str(out), "--batch-size", "2", "--workers", "1"])
    assert str(e.value) == "1 of 7 videos not counted exactly once, e.g. 'val000': 4 clips, expected 2"
    assert not out.exists()


def test_two_processes_count_every_video_once(data, tmp_path):
    """--nproc 2 (gloo) splits the clips between ranks and gives the one-process numbers."""
    ckpt = our_checkpoint(tmp_path / "best.pt")
    common = ["--data", str(data), "--checkpoint", str(ckpt), "--batch-size", "2", "--workers", "1"]
    one = run_evaluate([*common, "--out", str(tmp_path / "one")])
    two = run_evaluate([*common, "--out", str(tmp_path / "two"), "--nproc", "2"])
    assert two["world_size"] == 2 and (two["n_videos"], two["n_clips"]) == (7, 11)
    for key in ("video_top1", "video_top5", "clip_top1", "clip_top5"):
        assert two[key] == pytest.approx(one[key]), key
    p1 = json.loads((tmp_path / "one" / "predictions.json").read_text())["results"]
    p2 = json.loads((tmp_path / "two" / "predictions.json").read_text())["results"]
    for vid in p1:
        assert [t["label"] for t in p1[vid]] == [t["label"] for t in p2[vid]]
        assert [t["score"] for t in p1[vid]] == pytest.approx([t["score"] for t in p2[vid]], abs=1e-5)


def test_reference_checkpoint_with_module_prefix(data, tmp_path):
    """A 3D-ResNets-PyTorch checkpoint ({"state_dict": module.-prefixed, "arch": ...}) evaluates with flags."""
    from model import build_model

    net = build_model("resnet-10", n_classes=len(CLASSES), widen_factor=0.125)
    path = tmp_path / "save_200.pth"
    torch.save({"epoch": 200, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer": {}}, path)
    m = run_evaluate(["--data", str(data), "--checkpoint", str(path), "--out", str(tmp_path / "ref"),
                      "--widen-factor", "0.125", "--sample-size", "32", "--batch-size", "8", "--workers", "1"])
    assert m["model"] == "resnet-10-A" and m["input"]["sample_size"] == 32 and m["n_clips"] == 11


def test_garbage_checkpoint_is_one_line_error(data, tmp_path):
    import evaluate

    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(data), "--checkpoint", str(bad), "--out", str(tmp_path / "x")])
    message = str(e.value.code)
    assert message.startswith("error: ") and str(bad) in message and "\n" not in message


# ---- multi-view testing ---------------------------------------------------------------------------------------

class ViewReader(torch.nn.Module):
    """A model with known outputs: it reads the view from the clip's pixels (tests/videos.py's pattern, 0-255, the
    data's 48x32 frames cropped to 32x32 and not resized): the first frame's index from its blue level, the crop's
    offset from the red level (x0 = 0, 8 or 16 -> crop index 0, 1, 2). Class (frame + crop) % 6 gets logit 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, T, 32, 32) -> (N, 6)
        frame = torch.round((x[:, 2, 0].mean((1, 2)) - 4) / 8).long() % 32
        crop = torch.round((x[:, 0, 0].mean((1, 2)) * 47 / 255 - 15.5) / 8).long()
        return torch.zeros(len(x), len(CLASSES)).scatter_(1, ((frame + crop) % 6)[:, None], 5.0)


def expected_video_probs(views: list[tuple[int, int]]) -> list[float]:
    """The mean over views (start frame, crop index) of ViewReader's softmax."""
    hit, miss = np.exp(5) / (np.exp(5) + 5), 1 / (np.exp(5) + 5)
    probs = np.zeros(len(CLASSES))
    for start, crop in views:
        p = np.full(len(CLASSES), miss)
        p[(start % 32 + crop) % 6] = hit
        probs += p
    return (probs / len(views)).tolist()


@pytest.mark.parametrize("flags,clips,crops", [([], None, 1), (["--views", "3,3"], 3, 3),
                                               (["--clips", "4", "--crops", "3"], 4, 3), (["--clips", "2"], 2, 1)])
def test_views_average_exactly_the_expected_views(data, tmp_path, monkeypatch, flags, clips, crops):
    """Each video's probabilities are the mean over exactly its views: the paper's windows (centre crop, x0 = 8)
    by default, else PySlowFast's K starts k floor((n - 16) / (K - 1)) x C crops at x0 = 0, 8, 16 (C = 1: the
    centre, 8); metrics.json and the summary name the protocol; every video counted K x C times."""
    import evaluate
    from pipeline.sampling import eval_starts

    monkeypatch.setattr(evaluate, "load_model", lambda cfg, names, d: (ViewReader(), evaluate.run_record(cfg, names),
                                                                        "view-reader"))
    ckpt = our_checkpoint(tmp_path / "best.pt", mean=(0.0, 0.0, 0.0))
    out = tmp_path / "eval"
    m = run_evaluate(["--data", str(data), "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "5",
                      "--workers", "1", *flags])
    pred = json.loads((out / "predictions.json").read_text())["results"]
    for v, n in enumerate(FRAMES):
        if clips is None:
            views = [(int(s), 1) for s in eval_starts(n, 16)]
        else:
            d = max(n - 16, 0)
            starts = [k * (d // (clips - 1)) for k in range(clips)] if clips > 1 else [d // 2]
            views = [(s, j if crops > 1 else 1) for s in starts for j in range(crops)]
        want = expected_video_probs(views)
        got = {t["label"]: t["score"] for t in pred[f"val{v:03d}"]}
        assert sorted(got.values(), reverse=True) == pytest.approx(sorted(want, reverse=True)[:5], abs=1e-6)
        for label, score in got.items():
            assert score == pytest.approx(want[CLASSES.index(label)], abs=1e-6), (v, label)
    if clips is None:
        assert m["n_clips"] == 11 and m["protocol"]["name"] == "windows"
    else:
        assert m["n_clips"] == len(FRAMES) * clips * crops
        assert m["protocol"] == {"name": "views", "clips": clips, "crops": crops,
                                 "description": f"{clips} clips x {crops} crops"}


@pytest.mark.parametrize("flags", [[], ["--views", "2,3"]])
def test_unlabelled_split_is_evaluated_in_both_protocols(data, tmp_path, flags):
    """A split without labels (label -1, as Kinetics' test split): every video gets predictions and counts, no
    accuracy is claimed. --views failed here ("label -1") while the default protocol worked."""
    import pandas as pd

    manifest = pd.read_csv(data / "val.csv")
    manifest.assign(label=-1, label_name="", split="test").to_csv(data / "test.csv", index=False)
    out = tmp_path / "eval"
    m = run_evaluate(["--data", str(data), "--checkpoint", str(our_checkpoint(tmp_path / "best.pt")), "--out",
                      str(out), "--split", "test", "--batch-size", "8", "--workers", "1", *flags])
    assert m["n_videos"] == len(FRAMES) and m["n_clips"] == (11 if not flags else len(FRAMES) * 6)
    assert m["video_top1"] is m["clip_top1"] is None and m["n_labelled_videos"] == 0
    assert sorted(json.loads((out / "predictions.json").read_text())["results"]) == sorted(manifest["video_id"])


@pytest.mark.parametrize("flags,message", [
    (["--views", "10"], "argument --views: '10': expected K,C (clips,crops), e.g. 10,3"),
    (["--views", "0,3"], "argument --views: '0,3': K and C must be >= 1"),
    (["--views", "10,2"], "argument --views: '10,2': C must be 1 (centre) or 3 (both ends and the centre)"),
    (["--clips", "10", "--crops", "5"], "--crops 5: must be 1 (centre) or 3 (both ends and the centre)"),
    (["--views", "10,3", "--clips", "10"], "--views K,C and --clips/--crops say the same thing: give one"),
    (["--crops", "3"], "--crops 3 needs --clips K (or use --views K,3)"),
])
def test_views_flags_are_checked(data, tmp_path, capsys, flags, message):
    import evaluate

    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(data), "--checkpoint", str(our_checkpoint(tmp_path / "best.pt")), *flags])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


# ---- 3D-ResNets-PyTorch's later checkpoints: 0-1 pixels, mean and std ------------------------------------------

def test_authors_checkpoint_gives_the_direct_model_call_only_with_its_normalisation(data, tmp_path):
    """A checkpoint in the authors' layout ({"epoch", "arch", "state_dict" with module. prefixes, "optimizer",
    "scheduler"}, type-B shortcuts) evaluated with --norm kinetics-0-1 gives exactly what the model gives on
    clips normalised as their code does (ToTensor: /255, ScaleValue(1), Normalize(mean, std)), computed here
    from raw 0-255 clips; the same numbers on the 0-255 scale as custom flags agree; the 2017 normalisation
    (0-255 minus the ActivityNet mean) gives other outputs."""
    from model import build_model
    from pipeline import build_loader
    from pipeline.normalisation import PRESETS, Normalisation

    torch.manual_seed(3)
    net = build_model("resnet-10", n_classes=len(CLASSES), shortcut="B", widen_factor=0.125).eval()
    path = tmp_path / "r3d10_K_200ep.pth"
    torch.save({"epoch": 200, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "optimizer": {}, "scheduler": {}}, path)

    norm = PRESETS["kinetics-0-1"]
    from engine.cli import loader_backend

    with build_loader(data, split="val", mode="eval", backend=loader_backend("auto", on_gpu=False), batch_size=4,
                      sample_size=32, workers=1, normalisation=Normalisation((0.0, 0.0, 0.0)),
                      progress=False) as loader:  # the backend evaluate.py uses on this CPU
        sums, counts = torch.zeros(len(FRAMES), len(CLASSES), dtype=torch.float64), torch.zeros(len(FRAMES))
        for raw, _, video_idx in loader:  # (N, 3, T, 32, 32) 0-255
            x = (raw.double() / 255 - torch.tensor(norm.mean, dtype=torch.float64).view(1, 3, 1, 1, 1)) / torch.tensor(
                norm.std, dtype=torch.float64).view(1, 3, 1, 1, 1)
            with torch.no_grad():
                sums.index_add_(0, video_idx, net(x.float()).softmax(1).double())
            counts.index_add_(0, video_idx, torch.ones(len(video_idx)))
    want = sums / counts[:, None]  # (V, K)

    common = ["--data", str(data), "--checkpoint", str(path), "--shortcut", "B", "--widen-factor", "0.125",
              "--sample-size", "32", "--batch-size", "4", "--workers", "1"]
    custom_0_255 = ["--value-scale", "255", "--mean-values", *(str(m * 255) for m in norm.mean), "--std-values",
                    *(str(s * 255) for s in norm.std)]
    runs = {"kinetics-0-1": ["--norm", "kinetics-0-1"], "custom": custom_0_255, "activitynet": ["--norm", "activitynet"]}
    errors = {}
    for name, flags in runs.items():
        m = run_evaluate([*common, *flags, "--out", str(tmp_path / name)])
        pred = json.loads((tmp_path / name / "predictions.json").read_text())["results"]
        errors[name] = max(abs(t["score"] - float(want[v, CLASSES.index(t["label"])]))
                           for v in range(len(FRAMES)) for t in pred[f"val{v:03d}"])
        assert m["input"]["normalisation"]["value_scale"] == (1.0 if name == "kinetics-0-1" else 255.0)
    assert errors["kinetics-0-1"] < 1e-5 and errors["custom"] < 1e-5, errors
    assert errors["activitynet"] > 1e-3, errors  # the wrong normalisation: other outputs, no error message


# ---- model flags: describe a foreign checkpoint, agree with ours ---------------------------------------------

def test_model_flags_that_contradict_our_checkpoint_are_an_error(data, tmp_path):
    import evaluate
    from engine.distributed import Dist

    ckpt = our_checkpoint(tmp_path / "best.pt")
    common = ["--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as e:
        evaluate.main([*common, "--arch", "resnet-18", "--workers", "1"])
    message = str(e.value.code)
    assert message.startswith(f"error: {ckpt}: the checkpoint describes itself: resnet-10 --shortcut A ")
    assert message.endswith("; --arch resnet-18 contradicts it: drop --arch") and "\n" not in message
    assert "--widen-factor 0.125 --conv1-t-size 7 --conv1-t-stride 1 --max-pool" in message

    cpu = Dist(0, 1, 0, torch.device("cpu"))
    for flags in (["--conv1-t-size", "3", "--no-max-pool"], ["--widen-factor", "0.25"], ["--n-classes", "4"],
                  ["--conv1-t-stride", "2"], ["--no-max-pool"]):  # the last two: no weight would show them
        with pytest.raises(evaluate.CheckpointError, match="contradict"):
            evaluate.load_model(evaluate.parse_args([*common, *flags]), list(CLASSES), cpu)
    agreeing = ["--arch", "resnet-10", "--shortcut", "A", "--widen-factor", "0.125", "--conv1-t-size", "7",
                "--conv1-t-stride", "1", "--max-pool", "--n-classes", "6"]
    model, record, name = evaluate.load_model(evaluate.parse_args([*common, *agreeing]), list(CLASSES), cpu)
    assert name == "resnet-10-A" and model.conv1.weight.shape[2] == 7 and record.model_args["n_classes"] == 6


def test_our_checkpoint_is_built_from_its_run_record(data, tmp_path):
    """conv1's temporal stride and the max pool own no weights: only the run record can say a model had them, and
    the model evaluated is built with them, without flags."""
    import evaluate
    from engine.distributed import Dist

    ckpt = our_checkpoint(tmp_path / "best.pt", conv1_t_stride=2, no_max_pool=True)
    cfg = evaluate.parse_args(["--data", str(data), "--checkpoint", str(ckpt)])
    model, record, _ = evaluate.load_model(cfg, list(CLASSES), Dist(0, 1, 0, torch.device("cpu")))
    assert model.conv1.stride == (2, 2, 2) and model.no_max_pool and record.sample_size == 32
    with pytest.raises(evaluate.CheckpointError) as e:
        evaluate.run_record(evaluate.parse_args(["--data", str(data), "--checkpoint", str(ckpt), "--max-pool"]),
                            list(CLASSES))
    assert str(e.value).endswith("--conv1-t-stride 2 --no-max-pool; --max-pool contradicts it: drop --max-pool")


def test_foreign_checkpoint_with_conv1_t_size_and_no_max_pool(data, tmp_path):
    """A 3D-ResNets-PyTorch checkpoint trained with --conv1_t_size 3 --no_max_pool: described by the flags, it
    gives exactly the predictions of the same weights in our format (which describes itself); without them, a
    one-line error names the flag."""
    import evaluate
    from pipeline.normalisation import MEANS

    ours = our_checkpoint(tmp_path / "ours.pt", mean=MEANS["activitynet"], conv1_t_size=3, no_max_pool=True)
    foreign = tmp_path / "save_200.pth"
    weights = torch.load(ours, weights_only=True)["model"]
    torch.save({"epoch": 200, "arch": "resnet-10", "state_dict": {f"module.{k}": v for k, v in weights.items()}},
               foreign)
    common = ["--data", str(data), "--batch-size", "8", "--workers", "1", "--sample-size", "32"]
    described = ["--widen-factor", "0.125", "--conv1-t-size", "3", "--no-max-pool"]
    m_ours = run_evaluate([*common, "--checkpoint", str(ours), "--out", str(tmp_path / "ours")])
    m_foreign = run_evaluate([*common, "--checkpoint", str(foreign), "--out", str(tmp_path / "foreign"), *described])
    for key in ("video_top1", "clip_top1", "n_clips"):
        assert m_foreign[key] == m_ours[key], key
    p_ours, p_foreign = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("ours", "foreign"))
    assert p_foreign == p_ours

    with pytest.raises(SystemExit) as e:
        evaluate.main([*common, "--checkpoint", str(foreign), "--out", str(tmp_path / "x"), "--widen-factor", "0.125"])
    message = str(e.value.code)
    assert message.startswith(f"error: {foreign}: its conv1 spans 3 frames, the model's 7; HINT: add --conv1-t-size 3")
    assert "\n" not in message


# ---- every bad argument is a usage error ---------------------------------------------------------------------

BAD_VALUES = {  # flag: values outside its range (evaluate.RANGES)
    "--batch-size": ["0"], "--workers": ["-1"], "--n-classes": ["0"], "--widen-factor": ["0", "nan"],
    "--conv1-t-size": ["0"], "--conv1-t-stride": ["0"], "--sample-duration": ["0"], "--sample-size": ["0"],
    "--gpus": ["0"], "--nproc": ["0"], "--clips": ["0"], "--crops": ["0"], "--value-scale": ["0", "-1"],
    "--mean-values": ["1 inf 1"], "--std-values": ["1 0 1"], "--cardinality": ["0"], "--wide-k": ["0"],
}  # fmt: skip


def test_every_numeric_flag_has_a_range_and_a_bad_value_here():
    import evaluate
    from engine.cli import numeric_flags

    flags = numeric_flags(evaluate.build_parser())
    assert set(flags) == set(evaluate.RANGES)
    assert set(flags.values()) == set(BAD_VALUES)


@pytest.mark.parametrize("flag,value", [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_bad_numeric_flag_is_a_one_line_usage_error(data, tmp_path, capsys, flag, value):
    import evaluate

    ckpt = our_checkpoint(tmp_path / "best.pt")
    with pytest.raises(SystemExit) as e:
        values = [flag, *value.split()] if " " in value else [f"{flag}={value}"]  # R G B: 3 arguments
        evaluate.main(["--data", str(data), "--checkpoint", str(ckpt), *values])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert re.search(rf"error: {flag} \S+: must be (a finite number$|(a finite number )?[><])", line), line
    assert err.splitlines()[-1] == line


# ---- Ctrl-C --------------------------------------------------------------------------------------------------

@pytest.fixture
def sigint_raises():
    """SIGINT as in a terminal's Python (pytest may run with it ignored, as a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_is_one_line_and_status_130(data, tmp_path, monkeypatch, capsys, sigint_raises):
    """A real SIGINT to this process at the second step (the loader sends it): one line, nothing written."""
    import evaluate

    def pressing_ctrl_c_at_step_1(batches):
        for step, batch in enumerate(batches):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    feed_evaluate(monkeypatch, pressing_ctrl_c_at_step_1)
    ckpt = our_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(data), "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "2",
                       "--workers", "1"])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert re.fullmatch(r"interrupted after 1 of 6 steps; nothing was written \(the files come at the end\); "
                        r"run the same command again\n", err), err
    assert not out.exists()
