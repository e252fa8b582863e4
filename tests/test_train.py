"""train.py on a tiny generated dataset (CPU): the loss goes down, checkpoint contents (the run record), the
learning-rate rule (engine/schedule.py) and where it stops, NaN handling, exact resume after a crash, DDP over
gloo (disjoint data, identical weights, validation counting every video once, the rendezvous port), the launcher
(torch's elastic agent: --max-restarts after kill -9 of a process, kill -9 of the launcher, SIGTERM), fine-tuning
(and --pretrained refusing a model that would compute something else), --compile, the benchmark timing the
trainer's step, one-line errors (every numeric flag, resume with other settings, incomplete checkpoints, bad
videos) and Ctrl-C (one line, status 130).

A tiny model (ResNet-10 at widen 0.125, 32x32 clips) on 12 training videos keeps each run to seconds.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from pipeline.manifest import COLUMNS
from prepare.sample import write_video

CLASSES = ("blue", "green", "red")
TINY = ["--arch", "resnet-10", "--widen-factor", "0.125", "--sample-size", "32", "--batch-size", "4",
        "--lr", "0.01", "--workers", "1"]  # fmt: skip
STEPS_PER_EPOCH = 3  # 12 training videos / batch 4


def make_colour_dataset(root: Path, per_class: dict[str, int], width: int = 48, height: int = 32) -> Path:
    """A prepared-layout dataset whose class is the dominant colour of noisy frames (learnable in a few steps);
    12 to 39 frames per video, so some are shorter than a clip and loop. VP9 at crf 20 in prepare_data.py's
    structure (a keyframe every 16 frames)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text("index,name\n" + "".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    for split, per in per_class.items():
        rows = []
        for label, name in enumerate(CLASSES):
            for j in range(per):
                n = int(rng.integers(12, 40))
                frames = rng.integers(0, 90, (n, height, width, 3), dtype=np.uint8)
                frames[..., 2 - label] += 140  # blue, green, red
                rel = f"videos/{split}/{name}/{split}_{name}_{j}.webm"
                write_video(root / rel, frames, 25, "libvpx-vp9", gop=16, crf=20)
                rows.append([f"{split}_{name}_{j}", rel, label, name, split, n, 25.0, width, height, 0, n])
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([COLUMNS, *rows])
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("train_data"), {"train": 4, "val": 2})


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), *TINY, *extra]


def usage_error(capsys, fn, argv: list[str]) -> str:
    """fn(argv) (train.main or train.parse_args) exits with argparse's usage status 2: the last line on stderr."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def same_learning(row_a: dict, row_b: dict) -> bool:
    """Rows agree on everything but timing."""
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return all(row_a[k] == row_b[k] for k in keys)


# Deadlines for a train.py subprocess, only to fail rather than hang: generous, since a loaded 2-core CI machine
# can take minutes to import torch and DALI in several processes and run an epoch. Nothing waits them out.
FIRST_CHECKPOINT_S = 600
EXIT_S = 300


def wait_for_first_checkpoint(proc: subprocess.Popen, last: Path) -> None:
    """Return as soon as last (checkpoints/last.pt) exists, the run still going; fail if it ends first."""
    deadline = time.monotonic() + FIRST_CHECKPOINT_S
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"the run ended (status {proc.returncode}) before its first checkpoint: {err}")
    assert last.exists(), f"no checkpoint after {FIRST_CHECKPOINT_S} s"


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:
    """Three uninterrupted epochs."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    train.main(args(data, out, "--epochs", "3"))
    return out


def test_training_lowers_the_loss_and_writes_its_files(reference_run):
    rows = read_metrics(reference_run)
    assert list(rows[0]) == list(train.METRICS_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0 <= float(r["data_wait_share"]) <= 1 and float(r["clips_per_s"]) > 0
    config = json.loads((reference_run / "config.json").read_text())
    assert (config["arch"], config["batch_size"], config["device"], config["amp"]) == ("resnet-10", 4, "cpu", False)
    assert (reference_run / "curves.png").stat().st_size > 0


def test_checkpoint_contents_load_into_a_fresh_model(reference_run):
    from engine.checkpoint import REQUIRED_KEYS, RunRecord
    from model import build_model, load_weights
    from pipeline.normalisation import MEANS, Normalisation

    path = reference_run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    assert set(REQUIRED_KEYS) == {"model", "optimizer", "epoch", "config", "history", "arch", "model_args",
                                  "class_names", "input"}
    assert set(state) == set(REQUIRED_KEYS)
    model_args = dict(arch="resnet-10", n_classes=3, shortcut="A", conv1_t_size=7, conv1_t_stride=1,
                      no_max_pool=False, widen_factor=0.125, cardinality=32, wide_k=2)  # every build_model argument
    assert (state["epoch"], state["arch"], state["model_args"]) == (3, "resnet-10", model_args)
    assert state["class_names"] == list(CLASSES)
    assert state["input"] == {"normalisation": {"value_scale": 255.0, "mean": list(MEANS["kinetics"]),
                                                "std": [1.0, 1.0, 1.0]},
                              "sample_size": 32, "sample_duration": 16, "video_height": 32}
    assert RunRecord.from_metadata(state, path) == RunRecord(model_args, CLASSES, Normalisation(MEANS["kinetics"]),
                                                             sample_size=32, sample_duration=16, video_height=32)
    assert state["config"]["lr"] == 0.01 and [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert state["optimizer"]["param_groups"][0]["dampening"] == 0.0
    net = build_model(**state["model_args"])
    load_weights(net, path, strict_head=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in net.state_dict().items())
    best = torch.load(reference_run / "checkpoints" / "best.pt", weights_only=True)
    rows = [(float(r["val_acc"]), -float(r["val_loss"])) for r in read_metrics(reference_run)]
    assert best["epoch"] == 1 + rows.index(max(rows))  # the best accuracy; among equal ones the lowest loss


def test_best_checkpoint_breaks_accuracy_ties_by_the_lower_validation_loss():
    history = [{"val_acc": 0.5, "val_loss": 1.0}, {"val_acc": 0.9, "val_loss": 0.4},  # epoch 2: a lucky spike
               {"val_acc": 0.8, "val_loss": 0.3}, {"val_acc": 0.9, "val_loss": 0.2},  # epoch 4: same acc, lower loss
               {"val_acc": 0.9, "val_loss": 0.25}]
    keys = [train.selection_key(row) for row in history]
    assert keys.index(max(keys)) == 3
    assert train.selection_key({"val_acc": 0.91, "val_loss": 9.0}) > max(keys)  # accuracy first


def test_older_checkpoints_are_read_for_their_model_and_clips(reference_run, tmp_path):
    """Checkpoints from before the `input` entry (one flat `normalisation` entry, a `scaler`; the oldest without
    value_scale, std and video height, with the scheduler, best_val_acc and lr_reductions entries of then) give
    the run record they were trained with (evaluate.py, infer.py, --pretrained); --resume refuses them in one line
    naming the missing entry; a broken record is a one-line error."""
    from engine.checkpoint import CheckpointError, RunRecord, load_training_checkpoint
    from pipeline.normalisation import MEANS, Normalisation

    state = torch.load(reference_run / "checkpoints" / "last.pt", weights_only=True)
    new = RunRecord.from_metadata(state, "last.pt")
    before_input = {k: v for k, v in state.items() if k != "input"} | {"scaler": None, "normalisation": {
        **state["input"]["normalisation"], **{k: v for k, v in state["input"].items() if k != "normalisation"}}}
    assert RunRecord.from_metadata(before_input, "old.pt") == new
    oldest = {k: v for k, v in before_input.items() if k != "scaler"} | {
        "normalisation": {"mean": list(MEANS["kinetics"]), "sample_size": 32, "sample_duration": 16},
        "scheduler": {"best": 1.0, "num_bad_epochs": 0}, "best_val_acc": 0.5, "lr_reductions": 0}
    record = RunRecord.from_metadata(oldest, "oldest.pt")
    assert record.normalisation == Normalisation(MEANS["kinetics"], std=(1.0, 1.0, 1.0), value_scale=255.0)
    assert (record.sample_size, record.sample_duration, record.class_names) == (32, 16, CLASSES)
    assert record.video_height == 360  # not recorded then: prepare_data.py's default
    torch.save(before_input, tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as e:
        load_training_checkpoint(tmp_path / "old.pt")
    assert str(e.value) == (f"{tmp_path / 'old.pt'}: not a complete train.py checkpoint (missing input); use "
                            "--pretrained to start a new run from its weights")
    oldest["model_args"]["depth"] = 10
    with pytest.raises(CheckpointError, match=r"broken\.pt: its run record is broken \(ValueError: model_args"):
        RunRecord.from_metadata(oldest, "broken.pt")


def test_normalisation_record():
    from pipeline.normalisation import MEANS, PRESETS, Normalisation

    kinetics = Normalisation.named("kinetics")
    assert kinetics.on_pixels() == (MEANS["kinetics"], (1.0, 1.0, 1.0))  # exactly: the mean, and no division
    assert MEANS["kinetics"] == (110.63666788, 103.16065604, 96.29023126)
    assert Normalisation.from_dict(kinetics.to_dict()) == kinetics
    later = Normalisation(mean=(0.4345, 0.4051, 0.3775), std=(0.2768, 0.2713, 0.2737), value_scale=1.0)
    assert later == PRESETS["kinetics-0-1"] and later.name() == "kinetics-0-1"
    assert Normalisation.from_dict(later.to_dict()) == later
    mean, std = later.on_pixels()  # the 0-255-scale numbers DALI's crop_mirror_normalize is given
    assert mean == pytest.approx((0.4345 * 255, 0.4051 * 255, 0.3775 * 255), rel=1e-12)
    assert std == pytest.approx((0.2768 * 255, 0.2713 * 255, 0.2737 * 255), rel=1e-12)
    assert Normalisation(mean=(1.0, 2.0, 3.0)).name() == "custom"
    for bad in (dict(mean=(1.0, 2.0)), dict(mean=(1.0, 2.0, 3.0), std=(1.0, 0.0, 1.0)),
                dict(mean=(1.0, 2.0, float("nan")))):
        with pytest.raises(ValueError):
            Normalisation(**bad)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data, reference_run, tmp_path):
    """--inject-nan-step (a hidden testing flag) makes the loss inf at one global step, here epoch 2's second."""
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        train.main(args(data, out, "--epochs", "3", "--inject-nan-step", str(STEPS_PER_EPOCH + 1)))
    message = str(e.value.code)
    assert message.startswith("error: loss became inf in epoch 2") and "\n" not in message
    assert str(out / "checkpoints" / "last.pt") in message and "HINT" in message
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    rows = read_metrics(out)
    assert len(rows) == 1 and same_learning(rows[0], read_metrics(reference_run)[0])


# ---- the learning-rate rule (engine/schedule.py) --------------------------------------------------------------

def lr_per_epoch(rule, val_losses: list[float]) -> tuple[list[float], int | None]:
    """(the lr of each epoch with a loss here that the rule lets run, the number of epochs after which it stops;
    None: not within these). Epoch k + 1 runs at the lr that the first k validation losses give."""
    lrs = []
    for k in range(len(val_losses)):
        lr, _, stop = rule.after(val_losses[:k])
        if stop:
            return lrs, k
        lrs.append(lr)
    return lrs, len(val_losses) if rule.after(val_losses).stop else None


def test_lr_rule_divides_three_times_then_trains_the_last_rate_until_the_loss_saturates():
    """Patience 2: a third epoch in a row without a new best (by more than 1e-4 relative) saturates the loss."""
    from engine.schedule import PlateauSchedule

    losses = [2.0, 1.5, 1.6, 1.5, 1.5,  # best 1.5 in epoch 2; epochs 3, 4, 5 not better: saturated -> 0.01
              1.2, 1.3, 1.1, 1.1, 1.1, 1.1,  # the new best in epoch 8 restarts the count; 9, 10, 11 -> 0.001
              1.0999, 1.0, 1.0, 1.0, 1.0,  # 1.0999 is not 1e-4 below 1.1; best 1.0 in 13; 14, 15, 16 -> 0.0001
              0.9, 0.95, 0.95, 0.95,  # the last rate trains until the loss saturates again: stop after epoch 20
              0.5]  # never run
    lrs, stop = lr_per_epoch(PlateauSchedule(lr=0.1, patience=2, reductions=3), losses)
    assert lrs == [0.1] * 5 + [0.01] * 6 + [0.001] * 5 + [0.0001] * 4 and stop == 20
    assert lr_per_epoch(PlateauSchedule(lr=0.1, patience=2, reductions=1), losses) == ([0.1] * 5 + [0.01] * 6, 11)
    assert lr_per_epoch(PlateauSchedule(lr=0.1, patience=2, reductions=0), losses) == ([0.1] * 5, 5)
    assert lr_per_epoch(PlateauSchedule(lr=0.1, patience=10, reductions=3), losses) == ([0.1] * 21, None)


@pytest.mark.parametrize("patience", [0, 1, 3, 10])
def test_lr_rule_matches_reduce_lr_on_plateau_epoch_by_epoch(patience):
    """The authors' code steps torch's ReduceLROnPlateau (factor 0.1) once per epoch on the validation loss: up to
    where the rule stops, it gives the same rate every epoch, on losses that fall by a lot, by too little
    (1e-6 < 1e-4 relative), not at all, or rise."""
    from engine.schedule import PlateauSchedule

    rng = np.random.default_rng(patience)
    falls = rng.choice([0.0, 1e-6, 1e-3, 0.05], p=[0.6, 0.3, 0.05, 0.05], size=400)
    losses = [float(x) for x in 10.0 - np.cumsum(falls) + rng.choice([0.0, 0.01], p=[0.75, 0.25], size=400)]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", factor=0.1, patience=patience)
    expected = []  # the lr of each epoch
    for loss in losses:
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(loss)
    lrs, stop = lr_per_epoch(PlateauSchedule(lr=0.1, patience=patience, reductions=3), losses)
    assert stop is not None and len(set(lrs)) == 4  # it went through all four rates
    assert lrs == pytest.approx(expected[:stop], rel=1e-12, abs=0)  # torch multiplies by 0.1: 0.010000000000000002


def test_training_stops_when_the_loss_saturates_at_the_last_rate(data, tmp_path, monkeypatch, capsys):
    """Scripted validation losses and --lr-patience 0, so that every epoch without a new best saturates: epochs 1
    and 2 at --lr 0.01, the flat losses of epochs 2, 3 and 4 divide it three times, epoch 5 trains the last rate
    and its flat loss ends the run, before --epochs 20. The run stops after epoch 3 and is resumed in between:
    the rule reads the losses in the checkpoint's history."""
    validate = train.validate

    def scripted(cfg, d, net, loader, epoch):
        return validate(cfg, d, net, loader, epoch) | {"val_loss": 1.0}

    monkeypatch.setattr(train, "validate", scripted)
    out = tmp_path / "run"
    train.main(args(data, out, "--lr-patience", "0", "--epochs", "3"))
    train.main(args(data, out, "--lr-patience", "0", "--epochs", "20", "--resume"))
    assert [float(r["lr"]) for r in read_metrics(out)] == [0.01, 0.01, 0.001, 0.0001, 1e-05]
    printed = capsys.readouterr().out
    assert "done after 5 epochs (the val loss saturated at lr 1e-05, after 3 divisions by 10)" in printed
    assert "| loader pyav |" in printed  # --backend auto on a CPU (engine.cli.loader_backend)
    train.main(args(data, out, "--lr-patience", "0", "--epochs", "20", "--resume", "--lr-reductions", "4"))
    assert [float(r["lr"]) for r in read_metrics(out)][5:] == [1e-06]  # a fourth division extends the run


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(data, reference_run, tmp_path):
    """SIGKILL right after the first checkpoint appears (mid-bookkeeping or early in epoch 2), then --resume:
    every epoch's metrics equal the uninterrupted run's."""
    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.pt"
    root = Path(train.__file__).resolve().parent
    proc = subprocess.Popen([sys.executable, str(root / "train.py"), *args(data, out, "--epochs", "3")], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_first_checkpoint(proc, last)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = torch.load(last, weights_only=True)["epoch"]  # atomic writes: always a complete file
    assert done in (1, 2)
    train.main(args(data, out, "--epochs", "3", "--resume"))
    resumed, reference = read_metrics(out), read_metrics(reference_run)
    assert len(resumed) == 3
    for a, b in zip(resumed, reference, strict=True):
        assert same_learning(a, b), (a, b)


def test_existing_run_corrupt_and_incompatible_checkpoints_are_one_line_errors(data, reference_run, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(args(data, reference_run, "--epochs", "4"))  # no --resume: never overwrite a run
    assert "already holds a run" in str(e.value.code) and "--resume" in str(e.value.code)

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    with pytest.raises(SystemExit) as e:
        train.main(args(data, run, "--epochs", "4", "--resume", "--arch", "resnet-18"))
    message = str(e.value.code)
    assert message.startswith("error: ") and "--arch resnet-18 (checkpoint: resnet-10)" in message
    assert "\n" not in message

    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(SystemExit) as e:
        train.main(args(data, run, "--epochs", "4", "--resume"))
    message = str(e.value.code)
    assert message.startswith("error: ") and str(last) in message and "\n" not in message


def test_pretrained_with_ft_begin_trains_only_the_last_modules(data, reference_run, tmp_path):
    pretrained = reference_run / "checkpoints" / "last.pt"
    out = tmp_path / "finetune"
    train.main(args(data, out, "--epochs", "1", "--pretrained", str(pretrained), "--ft-begin", "layer4"))
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "layer3.0.conv2.weight"):
        assert torch.equal(before[key], after[key]), key  # frozen, BatchNorm statistics included
    for key in ("layer4.0.conv1.weight", "fc.weight"):
        assert not torch.equal(before[key], after[key]), key
    with pytest.raises(SystemExit, match="not a module of the model"):
        train.main(args(data, tmp_path / "bad", "--epochs", "1", "--pretrained", str(pretrained), "--ft-begin", "layer9"))


def test_resume_needs_no_pretrained_file(data, reference_run, tmp_path):
    """A fine-tuned run continues after its --pretrained file is gone: --resume takes the weights from last.pt."""
    pretrained = tmp_path / "downloaded.pt"
    shutil.copy(reference_run / "checkpoints" / "last.pt", pretrained)
    out = tmp_path / "finetune"
    train.main(args(data, out, "--epochs", "1", "--pretrained", str(pretrained)))
    pretrained.unlink()
    train.main(args(data, out, "--epochs", "2", "--pretrained", str(pretrained), "--resume"))
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2]


def test_pretrained_refuses_a_model_that_would_compute_something_else(data, reference_run, tmp_path):
    """Our checkpoint describes its model (its run record): train.py --pretrained builds that model, and a model flag
    that contradicts it is refused in one line, those without weights too (conv1's temporal stride, the max pool:
    the weights would load into the other model and compute something else)."""
    pretrained = reference_run / "checkpoints" / "last.pt"
    itself = ("resnet-10 --shortcut A --n-classes 3 --widen-factor 0.125 --conv1-t-size 7 --conv1-t-stride 1 "
              "--max-pool")
    for flag in ("--conv1-t-stride 2", "--no-max-pool", "--arch resnet-18"):
        with pytest.raises(SystemExit) as e:
            train.main(args(data, tmp_path / "ft", "--pretrained", str(pretrained), *flag.split()))
        assert str(e.value.code) == (f"error: {pretrained}: the checkpoint describes itself: {itself}; {flag} "
                                     f"contradicts it: drop {flag.split()[0]}")
    assert not (tmp_path / "ft").exists()


def test_pretrained_of_ours_gives_the_model_and_its_normalisation(data, reference_run, tmp_path):
    """Without model flags, --pretrained with one of our checkpoints builds the model its run record describes
    (resnet-10 at widen 0.125 here, not the defaults resnet-18 at 1) with its normalisation; a flag that agrees is
    accepted; --norm chooses another normalisation. A 3D-ResNets-PyTorch checkpoint says nothing: the defaults."""
    from pipeline.normalisation import PRESETS, Normalisation

    pretrained = str(reference_run / "checkpoints" / "last.pt")
    plain = ["--data", str(data), "--out", str(tmp_path / "ft"), "--pretrained", pretrained]
    cfg = train.parse_args(plain)
    assert (cfg.arch, cfg.widen_factor, cfg.shortcut, cfg.conv1_t_size, cfg.conv1_t_stride, cfg.no_max_pool) == \
        ("resnet-10", 0.125, "A", 7, 1, False)
    assert cfg.normalisation == Normalisation.from_dict(torch.load(pretrained, weights_only=True)["input"]["normalisation"])
    assert train.parse_args([*plain, "--arch", "resnet-10", "--max-pool"]).arch == "resnet-10"
    assert train.parse_args([*plain, "--norm", "kinetics-0-1"]).normalisation == PRESETS["kinetics-0-1"]
    foreign = tmp_path / "r18.pth"
    torch.save({"state_dict": torch.load(pretrained, weights_only=True)["model"]}, foreign)
    cfg = train.parse_args([*plain[:-1], str(foreign)])
    assert (cfg.arch, cfg.widen_factor, cfg.normalisation) == ("resnet-18", 1.0, PRESETS["kinetics"])


def test_resume_takes_the_model_from_the_run_it_continues(data, reference_run, tmp_path):
    """--resume without model flags continues the run's model (last.pt's config), whatever the defaults; one that
    contradicts it is refused as before (test_resume_refuses_other_settings_that_define_the_run)."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    cfg = train.parse_args(["--data", str(data), "--out", str(run), "--resume", "--sample-size", "32",
                            "--batch-size", "4", "--lr", "0.01"])
    assert (cfg.arch, cfg.widen_factor) == ("resnet-10", 0.125)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert train.resume_differences(saved, cfg) == []


def test_ft_begin_without_pretrained_is_refused(data, tmp_path, capsys):
    """Freezing the layers before --ft-begin makes sense only for pretrained weights: random ones stay random."""
    assert usage_error(capsys, train.main, args(data, tmp_path / "run", "--ft-begin", "layer4")).endswith(
        "error: --ft-begin layer4 without --pretrained would freeze randomly initialised layers; HINT: add "
        "--pretrained CHECKPOINT, or drop --ft-begin to train every layer")
    assert not (tmp_path / "run").exists()


def test_pretrained_reference_checkpoint_with_another_class_count(data, tmp_path):
    """3D-ResNets-PyTorch layout ({"state_dict": module.-prefixed, "arch"}) with 400 classes: every weight but the
    classifier loads, the new 3-class fc is trained; --ft-begin fc freezes the rest."""
    from engine.distributed import Dist
    from model import build_model

    torch.manual_seed(1)
    kinetics = build_model("resnet-10", n_classes=400, widen_factor=0.125)
    path = tmp_path / "resnet-10-kinetics.pth"
    torch.save({"arch": "resnet-10", "epoch": 200,
                "state_dict": {f"module.{k}": v for k, v in kinetics.state_dict().items()}}, path)
    cfg = train.parse_args(args(data, tmp_path / "ft", "--pretrained", str(path), "--ft-begin", "fc"))
    raw, model_args, frozen = train.setup_model(cfg, len(CLASSES), Dist(0, 1, 0, torch.device("cpu")))
    assert model_args["n_classes"] == 3 and raw.fc.weight.shape == (3, 64)
    assert torch.equal(raw.layer4[0].conv2.weight, kinetics.layer4[0].conv2.weight)
    assert [n for n, p in raw.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert len(frozen) == len(list(raw.children())) - 1


def _ddp_job(paths: tuple[str, str], d) -> None:
    """One rank of test_ddp_*: a training epoch over a recording loader, then save what it saw and its weights."""
    from engine import distributed
    from pipeline import build_loader

    data, out = paths
    cfg = train.parse_args(args(Path(data), Path(out), "--nproc", "2"))  # batch 4 = 2 ranks x 2
    loader = build_loader(Path(data), split="train", mode="train", batch_size=2, rank=d.rank, world_size=2,
                          workers=1, sample_size=32, progress=False)
    loader.set_epoch(1)
    seen: list[int] = []

    class Recording:
        def __len__(self):
            return len(loader)

        def __iter__(self):
            for batch in loader:
                seen.extend(batch.video_idx.tolist())
                yield batch

    raw, _, frozen = train.setup_model(cfg, len(CLASSES), d)
    init = {k: v.clone() for k, v in raw.state_dict().items()}
    optimizer = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=0.9)
    net = torch.nn.parallel.DistributedDataParallel(raw)
    train.train_one_epoch(cfg, d, net, frozen, Recording(), optimizer, 1, 0, None)
    distributed.broadcast_buffers(raw)
    torch.save({"seen": seen, "init": init, "state": raw.state_dict()}, Path(out) / f"rank{d.rank}.pt")
    loader.close()


def test_ddp_ranks_see_disjoint_data_and_keep_identical_weights(data, tmp_path):
    from engine.distributed import launch

    launch(_ddp_job, (str(data), str(tmp_path)), world_size=2, use_cuda=False)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["seen"]) == len(r1["seen"]) == 6  # 12 videos: 3 steps of 2 per rank
    assert not set(r0["seen"]) & set(r1["seen"])
    assert all(torch.equal(r0["init"][k], r1["init"][k]) for k in r0["init"])
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"]), "ranks diverged"
    assert not torch.equal(r0["state"]["conv1.weight"], r0["init"]["conv1.weight"])


def test_nproc_2_end_to_end(data, tmp_path):
    """train.py --nproc 2 spawns two gloo processes; rank 0 alone writes the run folder. Their validation counts
    every video once: its numbers are those of one process validating the saved model."""
    from engine.cli import loader_backend
    from engine.distributed import Dist
    from model import build_model
    from pipeline import build_loader

    out = tmp_path / "ddp"
    train.main(args(data, out, "--epochs", "1", "--nproc", "2"))
    (row,) = read_metrics(out)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["nproc"] == 2 and state["epoch"] == 1
    net = build_model(**state["model_args"])
    net.load_state_dict(state["model"])
    with build_loader(data, split="val", mode="val", batch_size=2, workers=1, sample_size=32, progress=False,
                      backend=loader_backend("auto", on_gpu=False)) as loader:  # the backend train.py used
        one = train.validate(train.parse_args(args(data, out)), Dist(0, 1, 0, torch.device("cpu")), net, loader, 1)
    assert float(row["val_acc"]) == one["val_acc"] and float(row["val_acc"]) * 6 % 1 == 0  # of 6 val videos
    assert float(row["val_loss"]) == pytest.approx(one["val_loss"], rel=1e-5)


def listening_sockets(pid: int) -> set[int]:
    """The TCP ports process pid listens on (from /proc: its socket inodes, and the kernel's table of sockets)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _port_job(out: str, d) -> None:
    """One rank of the test below: a sum over the group, and who listens on the port it was given."""
    from engine import distributed

    total = distributed.all_reduce_sum(torch.tensor([d.rank + 1.0]))
    port = int(os.environ["MASTER_PORT"])
    holders = [who for who, pid in (("launcher", os.getppid()), ("this rank", os.getpid()))
               if port in listening_sockets(pid)]
    (Path(out) / f"rank{d.rank}").write_text(f"sum {total.item()}, held by {holders}")


def test_the_launcher_holds_the_rendezvous_port_and_the_ranks_join_through_it(tmp_path):
    """launch() hosts the rendezvous store in the launcher (torch's elastic agent binds it before any process
    starts) on the port it gives the ranks, and keeps it until the launch ends: no other program can take the port
    between its choice and the group's start (a free port found, closed and bound later by rank 0 could be), no
    rank hosts it (a rank that dies cannot take the store with it), and both ranks join one group through it."""
    from engine.distributed import launch

    launch(_port_job, str(tmp_path), world_size=2, use_cuda=False)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["sum 3.0, held by ['launcher']"] * 2


def _killed_by_a_signal(cfg: object, d) -> None:
    """A job whose rank 1 dies as by the kernel's out-of-memory killer, with no chance to say why."""
    if d.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_by_a_signal_is_one_line(capsys):
    from engine.distributed import launch

    with pytest.raises(SystemExit) as e:
        launch(_killed_by_a_signal, None, world_size=2, use_cuda=False)
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: process 1 was killed by signal SIGKILL\n"


def test_max_restarts_under_torchrun_is_torchruns(data, tmp_path, monkeypatch, capsys):
    """Under torchrun, torchrun starts (and restarts) the processes: train.py --max-restarts is refused in one line
    that names torchrun's flag and --resume (a group torchrun restarts continues the run only with it)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert usage_error(capsys, train.parse_args, args(data, tmp_path / "run", "--max-restarts", "2")).endswith(
        ": error: --max-restarts 2: under torchrun, torchrun restarts the processes; HINT: give torchrun "
        "--max-restarts instead, and train.py --resume so that a restarted group continues the run")


@pytest.mark.parametrize("agent_store,warned", [("True", True), ("False", False)])
def test_torchrun_restarts_that_could_not_join_are_warned_about(monkeypatch, capsys, agent_store, warned):
    """torchrun --max-restarts with its shared rendezvous store (its static rendezvous, or c10d by default): rank 0
    warns at start that a restarted group would not come together, and says how to run torchrun instead."""
    from engine import distributed

    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_MAX_RESTARTS": "2",
                        "TORCHELASTIC_USE_AGENT_STORE": agent_store}.items():
        monkeypatch.setenv(name, value)
    distributed.setup(use_cuda=False)
    assert capsys.readouterr().err == (
        "warning: torchrun --max-restarts: a restarted group would look for the processes that died in torchrun's "
        "rendezvous store (torch 2.13, pytorch issue 135712); HINT: run torchrun with --rdzv-backend c10d and the "
        "environment variable TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1\n" if warned else "")


def test_a_restarted_group_continues_the_run_without_resume(data, reference_run, tmp_path):
    """A group that launch() restarted (Dist.restart > 0) continues last.pt without --resume: its launcher checked
    --out before the first start. Outside such a restart, a run in --out still needs --resume."""
    cfg = train.parse_args(args(data, reference_run, "--epochs", "3"))
    with pytest.raises(train.CheckpointError, match="already holds a run; HINT: add --resume"):
        train.resume_from(cfg)
    assert train.resume_from(cfg, restarted=True).epoch == 3


def test_batch_size_must_split_evenly(data, tmp_path):
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(data), "--out", str(tmp_path), "--batch-size", "5", "--nproc", "2"])


def test_train_speed_end_to_end_mode_times_the_trainers_step(data, tmp_path, monkeypatch):
    """benchmarks/train_speed.py --data: real-loader steps vs synthetic steps on the same model, through train.py's
    own step. On a fake clock on which every real batch takes 3 s to arrive and every step 1 s to run, the rates,
    their ratio and the data-wait share are exact: 4 clips in 4 s vs in 1 s."""
    monkeypatch.syspath_prepend(str(Path(train.__file__).resolve().parent / "benchmarks"))
    import train_speed as bench

    assert bench.train_step is train.train_step and bench.to_device is train.to_device
    clock = SimpleNamespace(now=0.0)
    loader_batches, train_step = bench.loader_batches, bench.train_step

    def slow_loader(loader):
        for batch in loader_batches(loader):
            clock.now += 3.0
            yield batch

    def one_second_step(*a, **kw):
        clock.now += 1.0
        return train_step(*a, **kw)

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(bench, "loader_batches", slow_loader)
    monkeypatch.setattr(bench, "train_step", one_second_step)
    out = tmp_path / "e2e.json"
    assert bench.main(["--data", str(data), "--arch", "resnet-10", "--widen-factor", "0.125", "--size", "64",
                       "--batch-size", "4", "--warmup", "1", "--iters", "2", "--repeats", "2", "--device", "cpu",
                       "--loader-threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["mode"], row["backend"], row["arch"], row["batch_size"]) == ("end-to-end", "dali", "resnet-10", 4)
    assert (row["real_runs"], row["synthetic_runs"]) == ([1.0, 1.0], [4.0, 4.0])
    assert (row["real_clips_per_s"], row["synthetic_clips_per_s"], row["ratio"], row["data_wait_share"]) == \
        (1.0, 4.0, 0.25, 0.75)


@pytest.mark.slow
def test_compile_trains_like_eager_and_saves_the_plain_module(data, reference_run, tmp_path):
    """--compile: one epoch through torch.compile's graphs (train step, then validation) learns what the reference
    run's eager first epoch learned, up to float rounding, and the checkpoint holds the uncompiled module's keys.
    Rounding differs between the graphs (~1e-3 of each weight after 3 steps: train-mode BatchNorm over 4 clips of
    1x1x1 features amplifies it), and the validation loss of 6 videos moves ~2% with it.
    Slow: compiling forward, backward and the validation graph takes 1-3 minutes on 2 cores."""
    out = tmp_path / "compiled"
    train.main(args(data, out, "--epochs", "1", "--compile"))
    (row,) = read_metrics(out)
    eager = read_metrics(reference_run)[0]
    assert (row["train_acc"], row["val_acc"], row["lr"]) == (eager["train_acc"], eager["val_acc"], eager["lr"])
    assert float(row["train_loss"]) == pytest.approx(float(eager["train_loss"]), rel=1e-3)
    assert float(row["val_loss"]) == pytest.approx(float(eager["val_loss"]), rel=0.05)
    compiled = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert list(compiled) == list(torch.load(reference_run / "checkpoints" / "best.pt", weights_only=True)["model"])


# ---- every bad argument is a usage error ---------------------------------------------------------------------

BAD_VALUES = {  # flag: values outside its range (train.RANGES)
    "--workers": ["-1"], "--sample-duration": ["0"], "--sample-size": ["0"], "--widen-factor": ["0", "0.01"],
    "--conv1-t-size": ["0"], "--conv1-t-stride": ["0"], "--epochs": ["0"], "--batch-size": ["0"],
    "--lr": ["0", "nan", "inf"], "--momentum": ["-0.1", "1"], "--weight-decay": ["-1e-3"], "--lr-patience": ["-1"],
    "--lr-reductions": ["-1"], "--seed": ["-1", str(2**63)], "--gpus": ["0"], "--nproc": ["0"], "--log-every": ["0"],
    "--max-restarts": ["-1"], "--inject-nan-step": ["-2"], "--value-scale": ["0"], "--mean-values": ["0 nan 0"], "--std-values": ["1 0 1"],
    "--cardinality": ["0"], "--wide-k": ["0"],
}  # fmt: skip


def test_every_numeric_flag_has_a_range_and_a_bad_value_here():
    from engine.cli import numeric_flags

    flags = numeric_flags(train.build_parser())
    assert set(flags) == set(train.RANGES)
    assert set(flags.values()) == set(BAD_VALUES)


@pytest.mark.parametrize("flag,value", [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_bad_numeric_flag_is_a_one_line_usage_error(data, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        values = value.split() if " " in value else [f"{flag}={value}"]  # --mean-values R G B: 3 arguments
        train.main(["--data", str(data), "--out", str(tmp_path / "run"), *([flag] if " " in value else []), *values])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert re.search(rf"error: {flag} \S+: must be (a finite number$|(a finite number )?[><])", line), line
    assert err.splitlines()[-1] == line  # argparse's usage, then this one line


def test_workers_0_is_for_decord_only(data, tmp_path, capsys):
    cfg = train.parse_args(args(data, tmp_path, "--workers", "0", "--backend", "decord"))
    assert cfg.workers == 0
    for backend in ("auto", "pyav", "dali"):
        line = usage_error(capsys, train.parse_args, args(data, tmp_path, "--workers", "0", "--backend", backend))
        assert line.endswith(
            f" error: --workers 0: --backend {backend} needs >= 1 (0, decoding in the main process, is for "
            "--backend decord)")


def test_backend_nvdec_on_the_cpu_is_a_usage_error(data, tmp_path, capsys):
    """"nvdec" means NVDEC's hardware decoders: on the CPU one line says which backends decode there."""
    line = usage_error(capsys, train.parse_args, args(data, tmp_path, "--backend", "nvdec", "--device", "cpu"))
    assert line.endswith(
        " error: --backend nvdec decodes on the GPU; on the CPU use --backend pyav, dali or decord")


def with_a_truncated_video(data: Path, dst: Path) -> Path:
    """A copy of data whose train.csv says its first video has more frames than its file."""
    shutil.copytree(data, dst)
    with open(dst / "train.csv") as f:
        rows = list(csv.DictReader(f))
    rows[0].update(num_frames="500", end_frame="500")  # more frames than its file has
    with open(dst / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_bad_video_error_names_the_flag_not_the_keyword_argument(data, tmp_path):
    """pipeline/base.py's hint says skip_bad=True (for Python callers); train.py's error says --skip-bad."""
    bad = with_a_truncated_video(data, tmp_path / "data")
    with pytest.raises(SystemExit) as e:
        train.main(args(bad, tmp_path / "run", "--epochs", "1"))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "--skip-bad" in message and "skip_bad" not in message


@pytest.mark.parametrize("restarts", [[], ["--max-restarts", "1"]], ids=["no-restarts", "max-restarts-1"])
def test_an_error_every_process_finds_is_printed_once(data, tmp_path, capfd, restarts):
    """--nproc 2: both ranks find the bad video; the launcher prints their (same) line once, and nothing else. With
    --max-restarts the group is not started again: an error a process reports would only come back."""
    bad = with_a_truncated_video(data, tmp_path / "data")
    with pytest.raises(SystemExit) as e:
        train.main(args(bad, tmp_path / "run", "--epochs", "1", "--nproc", "2", *restarts))
    assert e.value.code == 1
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(f"error: {bad}") and "--skip-bad" in line


def test_every_translated_hint_is_still_in_the_library():
    """engine.cli rewrites exact phrases of the loader's and load_weights' messages: they must still exist."""
    from engine import cli

    root = Path(train.__file__).resolve().parent
    sources = "".join((root / f).read_text() for f in ("pipeline/base.py", "pipeline/backends/dali.py",
                                                       "model/checkpoint.py"))
    for phrase in cli._API_HINTS_AS_FLAGS:
        assert phrase in sources, phrase


# ---- --resume: what may change and what may not (train.DEFINES_THE_RUN) -------------------------------------

def test_every_setting_either_defines_the_run_or_may_change_on_resume():
    from dataclasses import fields

    names = [f.name for f in fields(train.TrainConfig)]
    assert sorted(train.DEFINES_THE_RUN + train.MAY_CHANGE_ON_RESUME) == sorted(names)


def test_resume_refuses_other_settings_that_define_the_run(data, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = (run / "config.json").read_text()
    with pytest.raises(SystemExit) as e:
        train.main(args(data, run, "--resume", "--lr", "0.02", "--batch-size", "6", "--seed", "1"))
    message = str(e.value.code)
    assert message.startswith(f"error: {run / 'checkpoints' / 'last.pt'}: ") and "\n" not in message
    for diff in ("--lr 0.02 (checkpoint: 0.01)", "--batch-size 6 (checkpoint: 4)", "--seed 1 (checkpoint: 0)"):
        assert diff in message, message
    assert "--workers" not in message and "--epochs" not in message
    assert (run / "config.json").read_text() == before  # nothing recorded


def test_resume_compares_the_normalisation(data, tmp_path):
    """The normalisation defines the run: another one is refused, named by its flag; a preset and the same custom
    values are the same normalisation."""
    from dataclasses import asdict

    from pipeline.normalisation import PRESETS

    cfg = train.parse_args(args(data, tmp_path / "run", "--norm", "kinetics-0-1"))
    saved = json.loads(json.dumps(asdict(cfg)))  # as train.py stores it
    assert train.resume_differences(saved, cfg) == []
    other = json.loads(json.dumps(asdict(train.parse_args(args(data, tmp_path / "run", "--norm", "activitynet")))))
    assert train.resume_differences(other, cfg) == [
        f"--norm {PRESETS['kinetics-0-1'].describe()} (checkpoint: {PRESETS['activitynet'].describe()})"]
    custom = train.parse_args(args(data, tmp_path / "run", "--value-scale", "1", "--mean-values", "0.4345", "0.4051",
                                   "0.3775", "--std-values", "0.2768", "0.2713", "0.2737"))
    assert custom.normalisation == PRESETS["kinetics-0-1"] and train.resume_differences(saved, custom) == []


def test_resume_names_each_setting_by_its_flag(data, tmp_path):
    """--[no-]max-pool is a flag without a value; --pretrained's absence is 'none'."""
    from dataclasses import asdict

    saved = json.loads(json.dumps(asdict(train.parse_args(args(data, tmp_path / "run")))))
    foreign = tmp_path / "r3d.pth"  # parse_args reads --pretrained (ours describe their model): a readable one
    torch.save({"state_dict": {}}, foreign)
    other = train.parse_args(args(data, tmp_path / "run", "--no-max-pool", "--pretrained", str(foreign)))
    assert train.resume_differences(saved, other) == ["--no-max-pool (checkpoint: --max-pool)",
                                                      f"--pretrained {foreign} (checkpoint: none)"]


def test_resume_applies_and_records_execution_settings(data, reference_run, tmp_path):
    """One more epoch (--epochs 4), with other threads and log interval: run, recorded in config.json and in the
    checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    train.main(args(data, run, "--resume", "--epochs", "4", "--workers", "2", "--log-every", "5"))
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2, 3, 4]
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["workers"], config["log_every"], config["resume"]) == (4, 2, 5, True)
    assert config["lr"] == 0.01 and config["batch_size"] == 4
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["config"] == config


# ---- --resume on an incomplete checkpoint --------------------------------------------------------------------

def _without(src: Path, dst: Path, key: str) -> Path:
    state = torch.load(src, weights_only=True)
    del state[key]
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


@pytest.mark.parametrize("key", ["model", "optimizer", "epoch", "config", "history", "arch", "model_args",
                                 "class_names", "input"])
def test_checkpoint_missing_a_key_is_a_one_line_error(reference_run, tmp_path, key):
    from engine.checkpoint import CheckpointError, load_training_checkpoint

    path = _without(reference_run / "checkpoints" / "last.pt", tmp_path / "last.pt", key)
    with pytest.raises(CheckpointError) as e:
        load_training_checkpoint(path)
    assert f"missing {key}" in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_resume_on_a_checkpoint_without_history_is_a_one_line_error(data, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    _without(reference_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt", "history")
    with pytest.raises(SystemExit) as e:
        train.main(args(data, run, "--resume", "--epochs", "4"))
    message = str(e.value.code)
    assert message.startswith("error: ") and "missing history" in message and "\n" not in message


# ---- Ctrl-C --------------------------------------------------------------------------------------------------

INTERRUPTED = re.compile(r"interrupted (in|after) epoch (\d+); the last checkpoint is (\S+) \(epoch (\d+)\); "
                         r"continue with the same command plus --resume")


def ctrl_c(argv: list[str], ready: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """Run train.py argv in its own process group, and once ready(proc) returns send SIGINT to the group, as a
    terminal's Ctrl-C does: (exit status, stderr). The group is killed if it outlives the test."""
    root = Path(train.__file__).resolve().parent

    def as_from_a_terminal():  # pytest may run with SIGINT ignored (a background job), which children inherit
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, str(root / "train.py"), *argv],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_from_a_terminal)
    try:
        ready(proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


def ctrl_c_after_first_checkpoint(data: Path, out: Path, *extra: str) -> tuple[int, str, int]:
    """ctrl_c once checkpoints/last.pt exists: (exit status, stderr, epoch in last.pt)."""
    last = out / "checkpoints" / "last.pt"

    def ready(proc):
        wait_for_first_checkpoint(proc, last)
        time.sleep(0.5)  # into the bookkeeping or epoch 2

    code, err = ctrl_c(args(data, out, "--epochs", "50", *extra), ready)
    return code, err, torch.load(last, weights_only=True)["epoch"]


def test_ctrl_c_prints_one_line_pointing_at_resume_and_exits_130(data, tmp_path):
    out = tmp_path / "run"
    status, err, saved = ctrl_c_after_first_checkpoint(data, out)
    assert status == 130, err
    m = INTERRUPTED.fullmatch(err.strip())
    assert m, err
    assert m[3] == str(out / "checkpoints" / "last.pt") and int(m[4]) == saved
    assert int(m[2]) == saved + (m[1] == "in")
    train.main(args(data, out, "--resume", "--epochs", str(saved + 1)))  # what the line says, one more epoch
    assert [int(r["epoch"]) for r in read_metrics(out)] == list(range(1, saved + 2))


def test_ctrl_c_with_two_processes_prints_one_line(data, tmp_path):
    """--nproc 2: the terminal signals the launcher and both ranks; rank 0 alone reports."""
    status, err, saved = ctrl_c_after_first_checkpoint(data, tmp_path / "ddp", "--nproc", "2")
    assert status == 130, err
    assert INTERRUPTED.fullmatch(err.strip()), err


def test_ctrl_c_while_the_processes_start_is_one_line(data, tmp_path):
    """--nproc 2: Ctrl-C as soon as the two processes exist, while they import torch and DALI: still one line and
    status 130 (they start with SIGINT blocked and take it once their handler is in place; a KeyboardInterrupt in
    the middle of an import would print a traceback from each)."""
    def ready(proc):
        deadline = time.monotonic() + FIRST_CHECKPOINT_S
        while len(ranks_of(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ranks_of(proc.pid)) == 2, "the processes did not start"

    code, err = ctrl_c(args(data, tmp_path / "run", "--epochs", "50", "--nproc", "2"), ready)
    assert code == 130, err
    # "interrupted" when the processes were still starting (the usual case), rank 0's line when it had begun
    assert re.fullmatch(r"interrupted(| in epoch 1, before the first checkpoint; run the same command again to start "
                        r"over)\n", err), err


# ---- the launcher: restarts, and what it leaves behind -----------------------------------------------------------

def _dies_once(out: str, d) -> None:
    """Rank 1 of the group's first start dies as by the kernel's out-of-memory killer, between two collectives; the
    second start sums over both ranks and says which start it is."""
    from engine import distributed

    distributed.all_reduce_sum(torch.tensor([1.0]))
    if d.restart == 0 and d.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    total = distributed.all_reduce_sum(torch.tensor([d.rank + 1.0]))  # rank 0 of the first start fails here
    (Path(out) / f"rank{d.rank}").write_text(f"start {d.restart}, sum {total.item()}")


def test_a_group_that_lost_a_process_starts_again_and_joins_anew(tmp_path, capfd):
    """max_restarts 1: the group starts again in one piece (both ranks, Dist.restart 1) and its ranks find each other
    (the launcher's store keeps the first start's keys, which name a process that is gone: each start has its own).
    The launcher says why in one line: the process that died, not the "Connection closed by peer" of the one whose
    collective failed because of it."""
    from engine.distributed import launch

    launch(_dies_once, str(tmp_path), world_size=2, use_cuda=False, max_restarts=1)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["start 1, sum 3.0"] * 2
    assert capfd.readouterr().err == ("warning: process 1 was killed by signal SIGKILL; restarting the group "
                                      "(restart 1 of 1)\n")


def _dies_at_the_first_start(out: str, d) -> None:
    if d.restart == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    (Path(out) / "said").write_text(f"start {d.restart}")


def test_one_process_with_max_restarts_runs_under_the_agent_and_restarts(tmp_path, capfd):
    from engine.distributed import launch

    launch(_dies_at_the_first_start, str(tmp_path), world_size=1, use_cuda=False, max_restarts=2)
    assert (tmp_path / "said").read_text() == "start 1"
    assert capfd.readouterr().err == ("warning: process 0 was killed by signal SIGKILL; restarting the group "
                                      "(restart 1 of 2)\n")


def _raises_on_rank_1(out: str, d) -> None:
    """A job with a bug on rank 1, at every start. Rank 0 waits to be stopped: a rank 0 that returned at once would
    close its end of the group while rank 1 may still be joining it (under load, rank 1's join then fails with
    "Connection closed by peer" before it reaches the bug)."""
    if d.rank == 1:
        raise RuntimeError("boom")
    time.sleep(60)


def test_an_exception_is_reported_with_its_traceback_once_per_start(capfd):
    """An unexpected exception (a bug, not a one-line error) is printed with its traceback, by the launcher, for the
    process that raised it; with --max-restarts the group starts again (it may have been a passing failure), saying
    why, and the last start's failure is the launcher's exit status."""
    from engine.distributed import launch

    with pytest.raises(SystemExit) as e:
        launch(_raises_on_rank_1, "", world_size=2, use_cuda=False, max_restarts=1)
    assert e.value.code == 1
    err = capfd.readouterr().err
    first, warning, second = re.split(r"^(warning: .*\n)", err, flags=re.MULTILINE)
    assert warning == "warning: process 1 exited with status 1; restarting the group (restart 1 of 1)\n"
    for report in (first, second):
        assert report.startswith("process 1: Traceback (most recent call last):\n"), err
        assert report.endswith('    raise RuntimeError("boom")\nRuntimeError: boom\n'), err


def _stops_the_launcher(out: str, d) -> None:
    """Rank 0 sends SIGTERM to the launcher (as a job scheduler would), then both wait to be stopped."""
    if d.rank == 0:
        os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(60)


def test_sigterm_to_the_launcher_stops_the_group_in_one_line(capfd):
    """SIGTERM to the launcher alone: it stops the processes (they get SIGTERM too) and exits with status 143 and
    one line; the signal handlers of the program that called launch() are its own again after."""
    from engine.distributed import launch

    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        launch(_stops_the_launcher, "", world_size=2, use_cuda=False)
    assert e.value.code == 143 and time.monotonic() - t0 < 50
    assert capfd.readouterr().err == "stopped by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is before


def _pids(parent: int) -> list[int]:
    """The child processes of parent, in the order they started (pids grow; from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:  # the field after the name: ppid
                pids.append(int(stat.parent.name))
    return sorted(pids)


def ranks_of(launcher: int) -> list[int]:
    """The pids of the processes train.py's launcher started, in rank order (it starts rank 0 first): its children
    that run multiprocessing's spawn_main (the other is multiprocessing's resource tracker)."""
    ranks = []
    for pid in _pids(launcher):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
    return ranks


def running(pid: int) -> bool:
    """pid is a process that runs (not gone, not a zombie waiting for a parent to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kill_9_of_one_process_restarts_the_group_which_finishes_like_an_uninterrupted_run(data, tmp_path):
    """--nproc 2 --max-restarts 1: SIGKILL to rank 1 once the first checkpoint exists (in epoch 2, or in epoch 1's
    bookkeeping). The launcher says so in one line and starts both processes again; they continue from last.pt
    without --resume (the run in --out is this launch's own), and every epoch's metrics equal those of an
    uninterrupted --nproc 2 run with the same seed."""
    reference, out = tmp_path / "reference", tmp_path / "restarted"
    train.main(args(data, reference, "--epochs", "3", "--nproc", "2"))
    root, last = Path(train.__file__).resolve().parent, out / "checkpoints" / "last.pt"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout, "w") as o, open(stderr, "w") as e:
        proc = subprocess.Popen([sys.executable, str(root / "train.py"),
                                 *args(data, out, "--epochs", "3", "--nproc", "2", "--max-restarts", "1")],
                                cwd=root, stdout=o, stderr=e)
    try:
        wait_for_first_checkpoint(proc, last)
        os.kill(ranks_of(proc.pid)[1], signal.SIGKILL)
        proc.wait(timeout=FIRST_CHECKPOINT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.read_text()
    assert stderr.read_text() == ("warning: process 1 was killed by signal SIGKILL; restarting the group (restart 1 "
                                  "of 1)\n")
    resumed = re.findall(rf"resumed from {re.escape(str(last))}: (\d) epochs done", stdout.read_text())
    assert resumed in (["1"], ["2"]), stdout.read_text()
    restarted, uninterrupted = read_metrics(out), read_metrics(reference)
    assert len(restarted) == 3
    for a, b in zip(restarted, uninterrupted, strict=True):
        assert same_learning(a, b), (a, b)


def test_kill_9_of_the_launcher_leaves_no_process_behind(data, tmp_path):
    """The processes --nproc 2 started (and multiprocessing's resource tracker) end by themselves when their
    launcher is killed with SIGKILL, which it cannot handle: each gets a Ctrl-C when its parent dies
    (PR_SET_PDEATHSIG) and rank 0 says where the run stands."""
    root, out = Path(train.__file__).resolve().parent, tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(root / "train.py"), *args(data, out, "--epochs", "50", "--nproc", "2")],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    family: list[int] = []
    try:
        wait_for_first_checkpoint(proc, out / "checkpoints" / "last.pt")
        family = _pids(proc.pid)
        assert len(ranks_of(proc.pid)) == 2 and len(family) == 3, family
        proc.kill()
        _, err = proc.communicate(timeout=EXIT_S)  # stderr ends when the last process that holds it ends
        deadline = time.monotonic() + EXIT_S
        while any(running(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in family if running(pid)]
        assert INTERRUPTED.fullmatch(err.strip()), err
    finally:
        for pid in [proc.pid, *family]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


# ---- several nodes: every rank resumes the same checkpoint, or none starts -----------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_node_resume_without_a_shared_out_stops_every_node_at_once(data, reference_run, tmp_path):
    """Two torchrun nodes on this machine, each with its own --out (not one shared folder): node 0's holds a run
    after epoch 3, node 1's nothing. Before, rank 0 resumed at epoch 4 and rank 1 started at epoch 1, trained
    together, then rank 1 crashed once rank 0 was done, and node 0 waited 300 s in torchrun's exit barrier. Now the
    ranks compare what they resume before the first step: both nodes stop at once, each with the same one line
    naming both checkpoints, and nothing is trained or written."""
    root = Path(train.__file__).resolve().parent
    outs = [tmp_path / "node0", tmp_path / "node1"]
    shutil.copytree(reference_run, outs[0])
    last0 = outs[0] / "checkpoints" / "last.pt"
    before = last0.read_bytes()
    port, procs, errs, ended = free_port(), [], [], {}
    for node, out in enumerate(outs):
        errs.append(tmp_path / f"node{node}.err")
        with open(errs[-1], "w") as err:  # a file, not a pipe: torchrun's own report must never block it
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                 "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                 str(root / "train.py"), *args(data, out, "--resume", "--epochs", "4")],
                cwd=root, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
    try:
        deadline = time.monotonic() + FIRST_CHECKPOINT_S
        while len(ended) < 2 and time.monotonic() < deadline:
            for node, proc in enumerate(procs):
                if node not in ended and proc.poll() is not None:
                    ended[node] = time.monotonic()
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert len(ended) == 2, "a node did not end"
    assert abs(ended[0] - ended[1]) < 60, f"the nodes ended {abs(ended[0] - ended[1]):.0f} s apart"
    assert [proc.returncode for proc in procs] == [1, 1]
    host, digest = socket.gethostname(), hashlib.sha256(before).hexdigest()
    expected = (f"error: the processes would not continue the same run: rank 0 on {host} resumes {last0} (epoch 3, "
                f"sha256 {digest[:12]}); rank 1 on {host} starts a new run (no {outs[1] / 'checkpoints' / 'last.pt'})"
                ". HINT: on several nodes --out must be one folder that every node shares (a network file system), so "
                "that all resume the same checkpoint")
    for err in errs:
        ours = [line for line in err.read_text().splitlines() if line.startswith("error: ")]
        assert ours == [expected], err.read_text()[-3000:]
    assert last0.read_bytes() == before and not (outs[1] / "checkpoints").exists()
    assert [int(r["epoch"]) for r in read_metrics(outs[0])] == [1, 2, 3]


def test_resume_disagreement_says_which_ranks_resume_what():
    """Ranks that agree say nothing; otherwise one line groups the ranks by what they would continue: the same
    epoch from different checkpoints is a disagreement too (a copy of last.pt that fell behind)."""
    def state(host, path, epoch, digest):
        return {"host": host, "path": path, "epoch": epoch, "digest": digest}

    same = [state("a", "/o/last.pt", 3, "ab" * 32)] * 2 + [state("b", "/o/last.pt", 3, "ab" * 32)] * 2
    assert train.resume_disagreement(same) is None
    assert train.resume_disagreement([state("a", "/o/last.pt", None, None)] * 3) is None
    split = [state("a", "/o/last.pt", 3, "ab" * 32)] * 3 + [state("b", "/o/last.pt", 3, "cd" * 32)] * 2 + \
        [state("c", "/p/last.pt", None, None)]
    assert train.resume_disagreement(split) == (
        "the processes would not continue the same run: ranks 0-2 on a resume /o/last.pt (epoch 3, sha256 "
        "abababababab); ranks 3-4 on b resume /o/last.pt (epoch 3, sha256 cdcdcdcdcdcd); rank 5 on c starts a new "
        "run (no /p/last.pt). HINT: on several nodes --out must be one folder that every node shares (a network "
        "file system), so that all resume the same checkpoint")
    assert train._rank_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


# ---- a full disk, an unwritable --out ----------------------------------------------------------------------

def test_a_full_disk_never_loses_a_checkpoint_and_resume_goes_on(data, reference_run, tmp_path):
    """checkpoints/ on a real tmpfs with room for one and a half checkpoints: epoch 1's last.pt fits and best.pt,
    for which no second copy fits, becomes a hard link to it (said in one line); epoch 2's last.pt does not fit:
    the run stops with one line naming the file, the exact space it needs and the space free, and both
    checkpoints of epoch 1 are intact. After more space (here: another disk), --resume finishes the run as if
    nothing had happened."""
    from namespaces import in_namespace, namespaces_work

    if not namespaces_work():
        pytest.skip("needs user namespaces (unshare -Urm) for a real full disk")
    root = Path(train.__file__).resolve().parent
    run, kept = tmp_path / "run", tmp_path / "kept"
    (run / "checkpoints").mkdir(parents=True)
    size = (reference_run / "checkpoints" / "last.pt").stat().st_size
    tmpfs = 4096 * ((size * 3 // 2) // 4096)  # whole pages: room for one checkpoint, not two
    assert size < tmpfs < 2 * size
    cmd = in_namespace([sys.executable, str(root / "train.py"), *args(data, run, "--epochs", "2")],
                       tmpfs={run / "checkpoints": tmpfs}, after=f"cp -a {run / 'checkpoints'} {kept}")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=FIRST_CHECKPOINT_S)
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, no traceback
    m = re.fullmatch(rf"error: {re.escape(str(last))}: No space left on device \(it needs (\d+\.\d [KM]iB), "
                     rf"(\d+\.\d [KM]iB) free on its disk\); {re.escape(str(last))} holds epoch 1; HINT: free space "
                     r"there, then continue with the same command plus --resume\n", proc.stderr)
    assert m, proc.stderr
    link = f"warning: {best}: No space left on device (it needs "
    assert link in proc.stdout and f"): {best} is a hard link to {last} (epoch 1) instead of a copy" in proc.stdout
    kept_last, kept_best = kept / "last.pt", kept / "best.pt"
    assert sorted(p.name for p in kept.iterdir()) == ["best.pt", "last.pt"]  # no partial file left
    assert kept_last.read_bytes() == kept_best.read_bytes()
    assert torch.load(kept_last, weights_only=True)["epoch"] == 1
    for p in (kept_last, kept_best):
        shutil.copy(p, run / "checkpoints" / p.name)
    train.main(args(data, run, "--epochs", "2", "--resume"))
    from pipeline.atomic import human_bytes

    assert m[1] == human_bytes(last.stat().st_size)  # the size it needed: epoch 2's checkpoint's
    reference = read_metrics(reference_run)
    assert all(same_learning(a, b) for a, b in zip(read_metrics(run), reference[:2], strict=True))


def test_a_file_size_limit_is_a_one_line_error_naming_the_checkpoint(reference_run, tmp_path):
    """The same where no namespace is allowed: a file size limit (RLIMIT_FSIZE, EFBIG) in a child process. The
    previous file stays, and the message gives the exact size torch.save needs."""
    state = torch.load(reference_run / "checkpoints" / "last.pt", weights_only=True)
    torch.save(state, tmp_path / "state.pt")
    code = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(Path(train.__file__).resolve().parent)!r})
from pathlib import Path
from engine.checkpoint import save_atomic
from pipeline.atomic import NoSpace
state = torch.load({str(tmp_path / "state.pt")!r}, weights_only=True)
path = Path({str(tmp_path / "last.pt")!r})
path.write_bytes(b"the previous checkpoint")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))
try:
    save_atomic(state, path)
except NoSpace as e:
    print(e)
print(path.read_bytes() == b"the previous checkpoint", sorted(p.name for p in path.parent.iterdir()))
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again: the size it needed is the size it takes
save_atomic(state, path)
print(path.stat().st_size)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    message, kept, size = out.stdout.splitlines()
    from pipeline.atomic import human_bytes

    assert message.startswith(f"{tmp_path / 'last.pt'}: File too large (it needs {human_bytes(int(size))}, ")
    assert kept == "True ['last.pt', 'state.pt']"  # the previous file, and no partial one


@pytest.mark.parametrize("tool", ["train", "evaluate", "infer"])
def test_an_unwritable_out_is_one_line_before_any_work(data, reference_run, tmp_path, tool):
    """--out on a read-only file system (a real one: a read-only bind mount): one line naming it, before any work
    (nothing else is printed: no config, no loader, no model), instead of an OSError traceback at the end."""
    from namespaces import in_namespace, namespaces_work

    if not namespaces_work():
        pytest.skip("needs user namespaces (unshare -Urm): mode bits do not stop root")
    root = Path(train.__file__).resolve().parent
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "out"
    ckpt = str(reference_run / "checkpoints" / "best.pt")
    argv = {"train": args(data, out, "--epochs", "1"),
            "evaluate": ["--data", str(data), "--checkpoint", ckpt, "--out", str(out), "--workers", "1"],
            "infer": [str(data / "videos"), "--checkpoint", ckpt, "--out", str(out)]}[tool]
    proc = subprocess.run(in_namespace([sys.executable, str(root / f"{tool}.py"), *argv], read_only=[locked]),
                          cwd=root, capture_output=True, text=True, timeout=EXIT_S)
    assert (proc.returncode, proc.stdout) == ((2 if tool == "infer" else 1), "")
    assert proc.stderr == (f"error: --out {out}: cannot write there (Read-only file system); HINT: choose a folder "
                           "you can write to (it is created when missing)\n")


# ---- what a run says at its start, and its curves ---------------------------------------------------------------

def test_a_run_on_an_interrupted_preparation_says_so_and_the_config_shows_no_hooks(data, tmp_path, capsys):
    """prepare_report.json of a stopped prepare_data.py run: one warning line with the command that finishes it.
    The printed config leaves out the testing hook and, on the CPU, --gpus (config.json keeps every field)."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    config = {"src": "/raw/kinetics", "out": str(copy), "layout": "kinetics", "codec": "vp9", "height": 360,
              "gop": 16, "crf": 32, "workers": 2, "threads": 1, "cores": 2, "timeout_s": 1800, "verify": False}
    report = {"config": config, "videos": {"listed": 40, "prepared": 9, "reused": 3, "rejected": 0},
              "interrupted": True}
    (copy / "prepare_report.json").write_text(json.dumps(report))
    train.main(args(copy, tmp_path / "run", "--epochs", "1"))
    out = capsys.readouterr().out.splitlines()
    assert (f"warning: {copy} comes from a prepare_data.py run that was interrupted: its manifests list the 12 "
            f"videos prepared by then, of 40 listed; HINT: finish it with `python prepare_data.py /raw/kinetics --out "
            f"{copy} --format kinetics --codec vp9 --height 360 --gop 16 --crf 32` (it reuses the videos done)") in out
    (line,) = [line for line in out if line.startswith("config: ")]
    shown = json.loads(line.removeprefix("config: "))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(saved) - set(shown) == {"inject_nan_step", "gpus"}
    assert all(shown[k] == saved[k] for k in shown)
    report["interrupted"] = False
    (copy / "prepare_report.json").write_text(json.dumps(report))
    from prepare.run import interrupted_preparation

    assert interrupted_preparation(copy) is None and interrupted_preparation(tmp_path) is None


def test_curves_mark_the_lr_divisions_and_the_best_epoch(tmp_path, monkeypatch):
    """A dotted line before each epoch that ran at a lower lr, labelled with that lr, and a star on both validation
    curves at best.pt's epoch; a title no installed font can draw is left out, never drawn as boxes."""
    import warnings

    from engine import plots

    history = [{"epoch": e, "train_loss": 2 / e, "val_loss": 2.5 / e, "train_acc": e / 10, "val_acc": e / 12,
                "lr": lr} for e, lr in enumerate([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], start=1)]
    assert plots.curve_markers(history) == [(3, 0.01), (5, 0.001)]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns for every glyph it draws as a box
        plots.plot_curves(history, tmp_path / "curves.png", title="resnet-10, 3 classes", best_epoch=4)
        plots.plot_curves(history, tmp_path / "curves.png", title="resnet-10 on 跑步", best_epoch=4)
    (fig, no_title) = figures
    assert (fig.get_suptitle(), no_title.get_suptitle()) == ("resnet-10, 3 classes", "")
    for ax, key in zip(fig.axes, ("val_acc", "val_loss"), strict=True):
        vlines = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert vlines == [2.5, 4.5]
        assert [t.get_text() for t in ax.texts] == ["lr 0.01", "lr 0.001"]
        (star,) = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert (list(star.get_xdata()), list(star.get_ydata())) == ([4], [history[3][key]])
