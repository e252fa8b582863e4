"""train.py --tensorboard: the run's curves in RUN_DIR/tb, for `tensorboard --logdir RUN_DIR/tb`; rank 0 writes them.

The x axis is the global step, counted from 0 as train.py counts it: (epoch - 1) x steps per epoch + step.
  epoch/<column>  every column of metrics.csv but `epoch` (train_loss, train_acc, val_loss, val_acc, lr,
                  epoch_seconds, clips_per_s, data_wait_share), once per epoch, at step epoch x steps per epoch
                  (where the next epoch begins), the values metrics.csv holds
  step/train_loss, step/train_acc, step/lr
                  at each of train.py's log points (every step on the CPU, every --log-every steps on a GPU), at the
                  step index of its last step: the loss and clip accuracy averaged over the clips of all ranks since
                  the previous log point of the epoch

--resume continues the same curves, with no point twice and none from the future. The writer starts its event file
with TensorBoard's purge marker at the step of the last saved epoch's row (torch's SummaryWriter purge_step): every
point that the interrupted run logged from that step on (its unsaved epoch, and that row itself if it was logged) is
hidden, and the resumed run logs the saved epoch's row again from the checkpoint's history (every row, when the run
had no curves before), then goes on. A failure to write (a full disk) costs only the curves: one warning line, and
the run goes on without them (metrics.csv has the same numbers).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

TENSORBOARD_PIN = "tensorboard==2.21.0"  # requirements.txt's
EPOCH_TAGS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "clips_per_s",
              "data_wait_share")  # metrics.csv's columns but the epoch (train.METRICS_COLUMNS)


def missing() -> str | None:
    """Why --tensorboard cannot work here (the package is not installed), or None."""
    if importlib.util.find_spec("tensorboard") is None:
        return f"--tensorboard needs the tensorboard package; HINT: pip install {TENSORBOARD_PIN}"
    return None


class TensorBoardLog:
    """RUN_DIR/tb's writer for one run of train.py (rank 0 only).

    folder: RUN_DIR/tb; steps_per_epoch: len(train loader); history: the rows of the epochs done (the resumed
    checkpoint's, [] for a new run); warn: prints one line (the run's console).
    """

    def __init__(self, folder: Path, steps_per_epoch: int, history: list[dict],
                 warn: Callable[[str], None]) -> None:
        self.folder, self.steps_per_epoch, self.warn = Path(folder), steps_per_epoch, warn
        self._since = (0.0, 0.0, 0.0)  # loss sum, correct clips, clips at the epoch's previous log point
        self.writer = None
        done = int(history[-1]["epoch"]) if history else 0
        had_curves = self.folder.is_dir() and any(self.folder.glob("events.out.tfevents.*"))
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the points at this step and after from the earlier event files
            self.writer = SummaryWriter(str(self.folder), purge_step=done * steps_per_epoch, flush_secs=30)
        except OSError as e:
            self._give_up(e)
        for row in history[-1:] if had_curves else history:
            self.epoch(row)

    def _give_up(self, e: OSError) -> None:
        self.writer = None
        self.warn(f"cannot write the TensorBoard curves to {self.folder} ({e}); the run goes on without them "
                  "(metrics.csv has the same numbers)")

    def log_point(self, step: int, loss_sum: float, correct: float, n: float, lr: float) -> None:
        """A log point of train_one_epoch at global step index `step`: the epoch's running sums over all ranks so
        far (loss x clips, correct clips, clips); logs the means since the previous log point."""
        d_loss, d_correct, d_n = loss_sum - self._since[0], correct - self._since[1], n - self._since[2]
        self._since = (loss_sum, correct, n)
        if self.writer is None or d_n <= 0:
            return
        try:
            self.writer.add_scalar("step/train_loss", d_loss / d_n, step)
            self.writer.add_scalar("step/train_acc", d_correct / d_n, step)
            self.writer.add_scalar("step/lr", lr, step)
        except OSError as e:
            self._give_up(e)

    def epoch(self, row: dict) -> None:
        """An epoch's metrics.csv row, at step epoch x steps per epoch; flushed, so the curves are on disk."""
        self._since = (0.0, 0.0, 0.0)
        if self.writer is None:
            return
        try:
            step = int(row["epoch"]) * self.steps_per_epoch
            for tag in EPOCH_TAGS:
                self.writer.add_scalar(f"epoch/{tag}", float(row[tag]), step)
            self.writer.flush()
        except OSError as e:
            self._give_up(e)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as e:
                self._give_up(e)
            self.writer = None
