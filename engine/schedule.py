"""The learning-rate rule of the paper, as one small object that train.py asks once per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class LrStep(NamedTuple):
    lr: float  # the learning rate of the next epoch (when stop: of the last one)
    divisions: int  # how often the rate has been divided by 10
    stop: bool  # the validation loss saturated at the last rate: training is over


@dataclass(frozen=True)
class PlateauSchedule:
    """The paper's learning-rate rule: "divide it by 10 for three times after the validation loss saturates".

    Read as: train at lr until the validation loss saturates, divide the rate by 10, and so on, `reductions` times
    (0.1, 0.01, 0.001, 0.0001); then train at the last rate until the loss saturates once more, and stop. Stopping
    at the third division instead would never train the rate it sets, and the authors' code (ReduceLROnPlateau
    over a fixed number of epochs) trains every rate it reaches. "Saturates" is ReduceLROnPlateau's test, so the
    rates match the authors' code epoch by epoch: more than `patience` epochs in a row in which the loss does
    not go below best * (1 - threshold). Like nanoGPT's get_lr, the rate is a function of what came before (here
    the validation losses), so --resume needs no scheduler state, only the checkpoint's history.
    """

    lr: float
    patience: int
    reductions: int
    threshold: float = 1e-4  # relative improvement that counts (ReduceLROnPlateau's default)

    def after(self, val_losses: Sequence[float]) -> LrStep:
        """The rule's verdict after epochs with these validation losses, the first epoch's first."""
        best, bad, divisions = math.inf, 0, 0
        for loss in val_losses:
            if loss < best * (1 - self.threshold):
                best, bad = loss, 0
            else:
                bad += 1
            if bad > self.patience:  # saturated
                if divisions == self.reductions:
                    return LrStep(self.lr / 10**divisions, divisions, stop=True)
                divisions, bad = divisions + 1, 0
        return LrStep(self.lr / 10**divisions, divisions, stop=False)
