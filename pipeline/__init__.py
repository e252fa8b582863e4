"""Video clip loading: build_loader, one entry point over the backends in pipeline/backends/.

    from pipeline import build_loader
    with build_loader(data, split="train", mode="train", backend="dali", device="gpu", batch_size=32) as loader:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for clips, labels, video_idx in loader:   # (N, 3, T, S, S) float32, (N,) int64, (N,) int64
                ...

Leaving the `with` block (or loader.close()) frees the loader's threads (DALI, NVDEC, pyav) or decord's worker
processes. What every backend shares (config, batch, manifest and index, the bad-row policy, the epoch plan):
pipeline/base.py; the sampling and augmentation parameters: pipeline/sampling.py (pure numpy).

This module imports nothing at import time: prepare/'s worker processes and pipeline.atomic's users import
submodules of this package and must not pay for pandas (~0.3 CPU-s per process) that only the loader needs. The
names below are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = ["Batch", "DatasetError", "LoaderBase", "LoaderConfig", "build_loader"]
_HOME = {name: "pipeline.base" for name in __all__ if name != "build_loader"} | {
    "DatasetError": "pipeline.manifest"}  # where each lives

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below imports them
    from pipeline.base import Batch, LoaderBase, LoaderConfig
    from pipeline.manifest import DatasetError


def build_loader(data: str | Path, *, split: str, mode: str, **options: Any) -> LoaderBase:
    """Loader over a prepared dataset: iterate for Batch(clips, labels, video_idx); see README "Loading clips".

        with build_loader(data, split="train", mode="train", backend="dali", batch_size=32) as loader:

    options: the other LoaderConfig fields, by name (an unknown name is a TypeError). The backend is the loader
    class of pipeline/backends/<backend>.py. The loader holds threads (DALI, NVDEC, pyav) or worker processes
    (decord): leave the `with` block or call close() to free them.
    """
    from pipeline.base import LoaderConfig

    config = LoaderConfig(data=Path(data), split=split, mode=mode, **options)  # checks the backend's name
    if config.backend == "dali":
        from pipeline.backends.dali import DaliLoader as backend
    elif config.backend == "nvdec":  # NVDEC's hardware decoders (device="gpu")
        from pipeline.backends.nvdec import NvdecLoader as backend
    elif config.backend == "pyav":  # FFmpeg on the CPU, fed the clip's packets only
        from pipeline.backends.pyav import PyAVLoader as backend
    else:  # "decord"; LoaderConfig checked the name against base.BACKENDS
        from pipeline.backends.decord import DecordLoader as backend
    return backend(config)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
