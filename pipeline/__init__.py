"""Video clip loading: one entry point over the DALI (GPU and CPU) and decord backends.

    from pipeline import build_loader, KINETICS_MEAN
    with build_loader(data, split="train", mode="train", backend="dali", device="gpu", batch_size=32) as loader:
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for clips, labels, video_idx in loader:   # (N, 3, T, S, S) float32, (N,) int64, (N,) int64
                ...

Leaving the `with` block (or loader.close()) frees the loader's DALI threads or decord worker processes.
Sampling and augmentation parameters: pipeline.sampling (pure numpy, shared by both backends).
"""

from pipeline.loader import ACTIVITYNET_MEAN, KINETICS_MEAN, Batch, LoaderBase, LoaderConfig, build_loader
from pipeline.manifest import DatasetError

__all__ = ["ACTIVITYNET_MEAN", "KINETICS_MEAN", "Batch", "DatasetError", "LoaderBase", "LoaderConfig",
           "build_loader"]
