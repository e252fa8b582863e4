"""train.py --split K and evaluate.py --split K on a dataset with numbered splits (prepare_data.py's ucf101, hmdb51
and several-JSON jpg-frames outputs): which manifests they read, and one-line errors naming the manifests there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_evaluate
from test_train import CLASSES, TINY, make_colour_dataset, read_metrics

import evaluate
import train
from pipeline.manifest import held_out_manifest, split_manifests


@pytest.fixture(scope="module")
def ucf_like(tmp_path_factory) -> Path:
    """train1/test1 and train2/test2 (UCF101 and HMDB51: no validation split); test1 and test2 sized differently."""
    return make_colour_dataset(tmp_path_factory.mktemp("splits"), {"train1": 1, "test1": 1, "train2": 2, "test2": 2})


def test_split_manifests_prefer_val_then_test(tmp_path):
    assert split_manifests(tmp_path, "") == ("train", "val")
    assert split_manifests(tmp_path, "1") == ("train1", "test1")  # no val1.csv
    (tmp_path / "val1.csv").write_text("")
    assert split_manifests(tmp_path, "1") == ("train1", "val1")
    assert held_out_manifest(tmp_path, "1") == "val1"  # no test1.csv: the frame-folder JSON's "validation" list
    (tmp_path / "test1.csv").write_text("")
    assert held_out_manifest(tmp_path, "1") == "test1"
    assert held_out_manifest(tmp_path, "val") == "val"  # a manifest name stays as it is


def test_train_split_k_trains_on_train_k_and_validates_on_test_k(ucf_like, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(["--data", str(ucf_like), "--out", str(out), *TINY, "--split", "2", "--epochs", "1"])
    assert "split 2: training on train2.csv, validating on test2.csv" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["split"] == "2"
    assert len(read_metrics(out)) == 1
    # --resume with another split would be another run: refused
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(ucf_like), "--out", str(out), *TINY, "--split", "1", "--epochs", "2", "--resume"])
    assert "--split 1 (checkpoint: 2)" in str(e.value)


def test_train_without_split_on_numbered_splits_says_which_flag(ucf_like, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--data", str(ucf_like), "--out", str(tmp_path / "r"), *TINY])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"{ucf_like}/train.csv not found; manifests there: test1, test2, train1, train2; HINT: --split K trains "
            "on trainK.csv") in err
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(ucf_like), "--out", str(tmp_path / "r"), *TINY, "--split", "3"])
    assert f"{ucf_like}/train3.csv not found; manifests there: test1, test2, train1, train2" in " ".join(
        capsys.readouterr().err.split())
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(ucf_like), "--out", str(tmp_path / "r"), *TINY, "--split", "one"])
    assert "--split one: expected a split number, e.g. 1" in capsys.readouterr().err


def test_evaluate_split_k_evaluates_test_k(ucf_like, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(test_evaluate, "CLASSES", CLASSES)  # a checkpoint of the colour dataset's classes
    ckpt = test_evaluate.our_checkpoint(tmp_path / "c.pt")
    evaluate.main(["--data", str(ucf_like), "--checkpoint", str(ckpt), "--split", "2", "--batch-size", "4",
                   "--workers", "1"])
    out = tmp_path / "eval-c-test2"  # the default output folder names the manifest
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["split"], metrics["n_videos"]) == ("test2", 6)  # test2: 2 videos x 3 classes
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--data", str(ucf_like), "--checkpoint", str(ckpt)])  # the default, val: there is none
    assert e.value.code == 2
    assert (f"{ucf_like}/val.csv not found; manifests there: test1, test2, train1, train2; HINT: --split K "
            "evaluates testK.csv") in " ".join(capsys.readouterr().err.split())
