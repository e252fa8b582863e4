"""train.py --tensorboard (engine/tensorboard.py), read back with TensorBoard's own EventAccumulator: every epoch's
metrics.csv values at their steps, the loss at every log point, each step once across resumed runs (also after a
run that logged an epoch whose checkpoint never got saved), curves started on --resume, rank 0 alone writing, a
missing package and a failing disk."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_train import STEPS_PER_EPOCH, args, make_colour_dataset, read_metrics

import train
from engine.tensorboard import EPOCH_TAGS, TensorBoardLog

STEP_TAGS = ("step/train_loss", "step/train_acc", "step/lr")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("tb_data"), {"train": 4, "val": 2})


def curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purges applied), every point kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check_epochs_match_metrics_csv(got: dict, rows: list[dict]) -> None:
    for tag in EPOCH_TAGS:
        points = got[f"epoch/{tag}"]
        assert [s for s, _ in points] == [int(r["epoch"]) * STEPS_PER_EPOCH for r in rows], tag
        # TensorBoard stores float32
        assert [v for _, v in points] == [float(np.float32(float(r[tag]))) for r in rows], tag


def test_curves_are_metrics_csv_and_resume_continues_them_without_repeating_a_step(data, tmp_path):
    """Two epochs; --resume to three; then as if that run had logged epoch 3 and died before saving its checkpoint
    (last.pt back at epoch 2) and --resume again. TensorBoard shows each epoch once, with metrics.csv's final
    values, and one loss point per step 0..8, the third epoch's from the last run only."""
    out = tmp_path / "run"
    train.main(args(data, out, "--epochs", "2", "--tensorboard"))
    shutil.copy(out / "checkpoints" / "last.pt", tmp_path / "epoch2.pt")
    train.main(args(data, out, "--epochs", "3", "--resume", "--tensorboard"))
    shutil.copy(tmp_path / "epoch2.pt", out / "checkpoints" / "last.pt")  # epoch 3 logged, its checkpoint lost
    train.main(args(data, out, "--epochs", "3", "--resume", "--tensorboard"))
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 3  # one file per run, nothing rewritten

    rows = read_metrics(out)
    got = curves(out / "tb")
    assert sorted(got) == sorted([f"epoch/{t}" for t in EPOCH_TAGS] + list(STEP_TAGS))
    check_epochs_match_metrics_csv(got, rows)
    for tag in STEP_TAGS:
        assert [s for s, _ in got[tag]] == list(range(3 * STEPS_PER_EPOCH)), tag  # every step once, in order
    # On the CPU every step is a log point: one batch of 4 clips each, so an epoch's mean of them is its train loss
    # and accuracy, and each step carries its epoch's lr.
    for e, r in enumerate(rows):
        span = slice(e * STEPS_PER_EPOCH, (e + 1) * STEPS_PER_EPOCH)
        assert np.mean([v for _, v in got["step/train_loss"][span]]) == pytest.approx(float(r["train_loss"]),
                                                                                        rel=1e-5)
        assert np.mean([v for _, v in got["step/train_acc"][span]]) == pytest.approx(float(r["train_acc"]), abs=1e-6)
        assert [v for _, v in got["step/lr"][span]] == pytest.approx([float(r["lr"])] * STEPS_PER_EPOCH)


def test_curves_switched_on_by_resume_start_with_the_epochs_done(data, tmp_path):
    out = tmp_path / "run"
    train.main(args(data, out, "--epochs", "1"))
    assert not (out / "tb").exists()
    train.main(args(data, out, "--epochs", "2", "--resume", "--tensorboard"))
    got = curves(out / "tb")
    check_epochs_match_metrics_csv(got, read_metrics(out))  # epoch 1 from the checkpoint's history
    assert [s for s, _ in got["step/train_loss"]] == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))


def test_only_rank_0_writes_curves(data, tmp_path):
    out = tmp_path / "run"
    train.main(args(data, out, "--epochs", "1", "--tensorboard", "--nproc", "2"))
    assert len(list((out / "tb").iterdir())) == 1
    got = curves(out / "tb")  # the global batch stays 4 (2 per rank): 3 steps per epoch
    check_epochs_match_metrics_csv(got, read_metrics(out))
    assert [s for s, _ in got["step/train_loss"]] == list(range(STEPS_PER_EPOCH))


def test_a_missing_package_is_a_one_line_usage_error(data, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    with pytest.raises(SystemExit) as e:
        train.parse_args(args(data, tmp_path / "run", "--tensorboard"))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --tensorboard needs the tensorboard package; HINT: pip install tensorboard==2.21.0")


def test_a_full_disk_costs_only_the_curves_with_one_warning(tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    warnings = []
    tb = TensorBoardLog(tmp_path / "tb", 3, [], warn=warnings.append)
    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    tb.log_point(0, 2.0, 1.0, 4.0, 0.1)
    tb.log_point(1, 3.0, 2.0, 8.0, 0.1)  # no second warning
    tb.epoch({"epoch": 1, **{t: 0.5 for t in EPOCH_TAGS}})
    tb.close()
    assert warnings == [f"cannot write the TensorBoard curves to {tmp_path / 'tb'} ([Errno 28] No space left on "
                        "device); the run goes on without them (metrics.csv has the same numbers)"]
