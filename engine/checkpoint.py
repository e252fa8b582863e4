"""Atomic checkpoint writing and validated reading.

A checkpoint is TrainingState as a dict of plain types and tensors (loadable with torch.load(weights_only=True)),
so that 3D-ResNets-PyTorch-style tools and model.load_weights read it without this module.
No RNG state: the only randomness after initialisation is the loader's, drawn from (seed, epoch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, load_file  # one error type for every unusable checkpoint

__all__ = ["REQUIRED_KEYS", "CheckpointError", "TrainingState", "check_compatible", "load_training_checkpoint",
           "save_atomic"]  # fmt: skip


@dataclass(frozen=True)
class TrainingState:
    """Everything --resume needs; train.py writes a checkpoint only through this class and reads one only as
    this class, so the keys checked on loading (REQUIRED_KEYS) are exactly the keys it uses."""

    model: dict  # state_dict of the unwrapped, uncompiled model (keys as in 3D-ResNets-PyTorch's resnet.py)
    optimizer: dict
    scheduler: dict
    scaler: Any  # None when unused (bf16 autocast needs no loss scaling)
    epoch: int  # number of finished epochs (metrics.csv numbers epochs from 1); --resume runs epoch + 1 next
    config: dict  # the run's TrainConfig as a dict
    arch: str  # "resnet-18" etc. (as in 3D-ResNets-PyTorch's checkpoints; model.LoadReport.arch reads it)
    model_args: dict  # model.build_model keyword arguments: {"arch", "n_classes", "shortcut", ...}
    class_names: list  # list[str], index = label
    normalisation: dict  # {"mean": [r, g, b] on the 0-255 scale, "sample_size": 112, "sample_duration": 16}
    best_val_acc: float  # -1.0 before the first validation
    lr_reductions: int  # how often the plateau schedule has divided the lr by 10
    history: list  # one dict per finished epoch: the rows of metrics.csv

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: asdict would copy every tensor


REQUIRED_KEYS = tuple(f.name for f in fields(TrainingState))


def save_atomic(state: TrainingState | dict, path: Path) -> None:
    """Write state to path so that a crash at any moment leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state.to_dict() if isinstance(state, TrainingState) else state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX within one file system


def load_training_checkpoint(path: Path) -> TrainingState:
    """A checkpoint written by train.py, with every key that --resume needs present."""
    state = load_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete train.py checkpoint (missing {', '.join(missing)}); "
            "use --pretrained to start a new run from its weights"
        )
    return TrainingState(**{k: state[k] for k in REQUIRED_KEYS})


def check_compatible(path: Path, saved: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Raise a one-line CheckpointError if saved[k] != current[k] for any k in keys."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"{path}: incompatible with this run ({'; '.join(diffs)})")
