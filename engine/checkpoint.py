"""Atomic checkpoint writing and validated reading.

A checkpoint is a dict of plain types and tensors (loadable with torch.load(weights_only=True)):
    model          state_dict of the unwrapped, uncompiled model (keys as in 3D-ResNets-PyTorch's resnet.py)
    optimizer, scheduler, scaler (None when unused)
    epoch          number of finished epochs (metrics.csv numbers epochs from 1); --resume runs epoch + 1 next
    config         the run's TrainConfig as a dict
    arch           "resnet-18" etc. (as in 3D-ResNets-PyTorch's checkpoints; model.LoadReport.arch reads it)
    model_args     model.build_model keyword arguments: {"arch", "n_classes", "shortcut", "widen_factor", ...}
    class_names    list[str], index = label
    normalisation  {"mean": [r, g, b] on the 0-255 scale, "sample_size": 112, "sample_duration": 16}
    best_val_acc, lr_reductions, history (one dict per finished epoch: the rows of metrics.csv)
No RNG state: the only randomness after initialisation is the loader's, drawn from (seed, epoch).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.checkpoint import CheckpointError, load_file  # one error type for every unusable checkpoint

__all__ = ["CheckpointError", "check_compatible", "load_training_checkpoint", "save_atomic"]

REQUIRED_KEYS = (
    "model", "optimizer", "scheduler", "epoch", "config", "arch", "model_args", "class_names", "normalisation"
)


def save_atomic(state: dict, path: Path) -> None:
    """Write state to path so that a crash at any moment leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX within one file system


def load_training_checkpoint(path: Path) -> dict:
    """A checkpoint written by train.py, with every key that --resume needs present."""
    state = load_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a train.py checkpoint (missing {', '.join(missing)}); "
            "use --pretrained for other weights"
        )
    return state


def check_compatible(path: Path, saved: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Raise a one-line CheckpointError if saved[k] != current[k] for any k in keys."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"{path}: incompatible with this run ({'; '.join(diffs)})")
