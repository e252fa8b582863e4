"""Video clip loading: one entry point over the DALI (GPU and CPU), pyav (CPU), decord and NVDEC backends.

    from pipeline import build_loader, KINETICS_MEAN
    with build_loader(data, split="train", mode="train", backend="dali", device="gpu", batch_size=32) as loader:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for clips, labels, video_idx in loader:   # (N, 3, T, S, S) float32, (N,) int64, (N,) int64
                ...

Leaving the `with` block (or loader.close()) frees the loader's threads (DALI, NVDEC) or decord's worker
processes. Sampling and augmentation parameters: pipeline.sampling (pure numpy, shared by every backend).

The names below are imported on first use (PEP 562), not with the package: pipeline.prepare's worker
processes and pipeline.atomic's users import submodules of this package and must not pay for pandas
(~0.3 CPU-s per process) that only the loader needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["ACTIVITYNET_MEAN", "KINETICS_MEAN", "Batch", "DatasetError", "LoaderBase", "LoaderConfig",
           "build_loader"]
_HOME = {name: "pipeline.loader" for name in __all__} | {"DatasetError": "pipeline.manifest"}  # where each lives

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below imports them
    from pipeline.loader import ACTIVITYNET_MEAN, KINETICS_MEAN, Batch, LoaderBase, LoaderConfig, build_loader
    from pipeline.manifest import DatasetError


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
