"""The one entry point: build_loader() and what both backends share (config, manifest checks, epoch plans)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.manifest import HINT, DatasetError, load_classes, load_manifest
from pipeline.packets import IVF_FOURCC, PacketTable, load_or_build
from pipeline.sampling import MODES, Plan, plan_epoch, train_steps

# Per-channel RGB means on the 0-255 scale (3D-ResNets-PyTorch); subtracted, no division by a std.
KINETICS_MEAN = (110.63666788, 103.16065604, 96.29023126)
ACTIVITYNET_MEAN = (114.7748, 107.7354, 99.4750)
MAX_BAD_FRACTION = 0.1  # skip_bad=True still fails when more than this share of rows (and > 1 row) is bad


class Batch(NamedTuple):
    clips: Any  # (N, 3, T, S, S) float32 torch.Tensor, on cuda:device_id for device="gpu"
    labels: Any  # (N,) int64 torch.Tensor (-1: unlabelled)
    video_idx: Any  # (N,) int64 torch.Tensor, row index into loader.videos


@dataclass(frozen=True)
class LoaderConfig:
    data: Path
    split: str
    mode: str
    backend: str = "dali"
    device: str = "cpu"
    batch_size: int = 8
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    num_threads: int = 2
    sample_duration: int = 16
    sample_size: int = 112
    mean: tuple[float, float, float] = KINETICS_MEAN
    device_id: int | None = None
    skip_bad: bool = False
    dali_input: str = "gop"  # "gop": IVF slice keyframe..clip end (VP8/VP9); "file": the whole file
    prefetch: int = 2  # DALI prefetch_queue_depth
    progress: bool = True  # progress bar while indexing videos

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in ("dali", "decord"):
            raise ValueError(f"backend must be 'dali' or 'decord', got {self.backend!r}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.dali_input not in ("gop", "file"):
            raise ValueError(f"dali_input must be 'gop' or 'file', got {self.dali_input!r}")
        for name in ("batch_size", "world_size", "sample_duration", "sample_size", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.num_threads < 0 or (self.backend == "dali" and self.num_threads < 1):
            raise ValueError(f"num_threads must be >= 1 (decord: >= 0), got {self.num_threads}")
        if len(self.mean) != 3:
            raise ValueError(f"mean must have 3 values (RGB, 0-255 scale), got {self.mean}")


class LoaderBase:
    """Manifest, packet table, per-epoch plan and length; the backends add __iter__.

    Attributes: videos (DataFrame of the rows in use, index 0..V-1, plus an absolute `file` column),
    class_names, num_clips, config; len() = steps per epoch for this rank.
    """

    def __init__(self, config: LoaderConfig):
        import torch  # lazy: `import pipeline` stays light for prepare_data's worker processes

        config.validate()
        self.config = config
        if config.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device='gpu' needs CUDA, and torch sees no GPU; use device='cpu'")
            self._torch_device = torch.device(
                "cuda", torch.cuda.current_device() if config.device_id is None else config.device_id
            )  # where batches are delivered; DALI's device_id is its index
        else:
            self._torch_device = torch.device("cpu")
        data = Path(config.data)
        if not data.is_dir():
            raise DatasetError(f"{data}: dataset folder not found. {HINT}")
        self.class_names = load_classes(data)
        df = load_manifest(data, config.split, len(self.class_names), allow_unlabelled=config.mode == "eval")
        manifest = data / f"{config.split}.csv"
        # Both backends use the packet index. DALI needs its packet offsets for the GOP slices. decord seeks by
        # itself, but building the index is also the check that finds missing, truncated and undecodable files
        # before the first step (it demuxes every packet and decodes the first frame), and it gives each row's
        # real frame count, width and height. The cache is memory-mapped, so a decord loader, which never reads
        # the packet arrays, holds only the per-video columns (~50 bytes a video) in its own memory.
        packets, bad_files = load_or_build(
            df["file"].tolist(), data / ".cache" / f"packets-{config.split}.idx", progress=config.progress
        )
        self.videos, self._packets = self._drop_bad_rows(df, packets, bad_files, manifest)
        self._widths = self._packets.width.astype(np.int64)
        self._heights = self._packets.height.astype(np.int64)
        self._labels = self.videos["label"].to_numpy(np.int64)
        self.epoch = 0
        self._plan: Plan | None = None
        if config.mode == "train" and train_steps(len(self.videos), config.world_size, config.batch_size) == 0:
            raise DatasetError(
                f"{manifest}: {len(self.videos)} usable video(s) give no full batch of {config.batch_size} per rank "
                f"with world_size {config.world_size}; lower batch_size or add videos"
            )

    def _drop_bad_rows(
        self, df: pd.DataFrame, packets: PacketTable, bad_files: dict[str, str], manifest: Path
    ) -> tuple[pd.DataFrame, PacketTable]:
        """Rows whose file is usable, and their packet table (row i = videos row i); the bad ones raise or are
        skipped and counted. packets: one row per df row (empty for the files in bad_files)."""
        cfg = self.config
        end = df["end_frame"].to_numpy()
        bad_file = df["file"].isin(list(bad_files)).to_numpy()
        truncated = ~bad_file & (packets.count < end)
        dali_cpu = cfg.backend == "dali" and cfg.device == "cpu"
        decodable = [i for i, c in enumerate(packets.codecs) if c in ("vp8", "vp9", "mjpeg")]  # by DALI on CPU
        no_codec = ~bad_file & dali_cpu & ~np.isin(packets.codec, decodable)
        ok = ~(bad_file | truncated | no_codec)
        bad = np.flatnonzero(~ok)
        if len(bad):
            i = int(bad[0])
            if bad_file[i]:
                reason = bad_files[df["file"][i]]
            elif truncated[i]:
                reason = f"truncated: {packets.count[i]} frames in the file, the manifest needs {end[i]}"
            else:
                reason = (f"codec {packets.codec_of(i)} cannot be decoded by DALI on CPU (VP8/VP9/MJPEG only); "
                          "use backend='decord' or device='gpu'")
            first = f"{df['file'][i]}: {reason} ({manifest.name} row {i + 2}, video {df['video_id'][i]!r})"
            if not cfg.skip_bad:
                raise DatasetError(f"{first}; {len(bad)} bad row(s) in {manifest}. {HINT} or pass skip_bad=True")
            if len(bad) > max(MAX_BAD_FRACTION * len(df), 1):
                raise DatasetError(f"{len(bad)} of {len(df)} rows of {manifest} are bad (more than "
                                   f"{MAX_BAD_FRACTION:.0%}), first: {first}. {HINT}")
            print(f"skipping {len(bad)} bad row(s) of {len(df)} in {manifest}; first: {first}")
        keep = np.flatnonzero(ok)
        if not len(keep):
            raise DatasetError(f"{manifest}: no usable rows. {HINT}")
        return df.iloc[keep].reset_index(drop=True), packets.take(keep)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: train mode reshuffles and redraws augmentation from (seed, epoch)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._plan = None

    @property
    def plan(self) -> Plan:
        """This rank's clips for the current epoch."""
        if self._plan is None:
            c = self.config
            self._plan = plan_epoch(
                (self.videos["end_frame"] - self.videos["start_frame"]).to_numpy(), self._widths, self._heights,
                c.mode, self.epoch, c.seed, c.rank, c.world_size, c.batch_size, c.sample_duration,
                self.videos["start_frame"].to_numpy(),
            )
        return self._plan

    @property
    def num_clips(self) -> int:
        return len(self.plan)

    def __len__(self) -> int:
        return math.ceil(self.num_clips / self.config.batch_size)

    def _batch_plans(self) -> list[Plan]:
        plan, b = self.plan, self.config.batch_size
        return [plan.take(slice(k, k + b)) for k in range(0, len(plan), b)]

    def uses_ivf(self, row: int) -> bool:
        return self.config.dali_input == "gop" and self._packets.codec_of(row) in IVF_FOURCC


def build_loader(
    data: Path,
    split: str,
    mode: str,
    backend: str = "dali",
    device: str = "cpu",
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_threads: int = 2,
    sample_duration: int = 16,
    sample_size: int = 112,
    mean: tuple[float, float, float] = KINETICS_MEAN,
    device_id: int | None = None,
    skip_bad: bool = False,
    *,
    dali_input: str = "gop",
    prefetch: int = 2,
    progress: bool = True,
) -> LoaderBase:
    """Loader over a prepared dataset: iterate for Batch(clips, labels, video_idx); see CONTRACTS.md.

    Extra keyword-only knobs (benchmarks): dali_input "gop" sends the decoder only the packets from the
    keyframe before a clip to its end (VP8/VP9; other codecs always get the whole file), "file" the whole
    file; prefetch is DALI's prefetch_queue_depth; progress shows the indexing progress bar.
    """
    config = LoaderConfig(
        Path(data), split, mode, backend, device, batch_size, rank, world_size, seed, num_threads,
        sample_duration, sample_size, tuple(float(m) for m in mean), device_id, skip_bad, dali_input,
        prefetch, progress,
    )  # fmt: skip
    config.validate()
    if backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise ImportError(
                "backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120==2.4.0, or use backend='decord'"
            ) from None
        from pipeline.dali_loader import DaliLoader

        return DaliLoader(config)
    from pipeline.decord_loader import DecordLoader, import_decord

    try:
        import_decord()
    except ImportError:
        raise ImportError("backend='decord' needs decord: pip install decord==0.6.0, or use backend='dali'") from None

    return DecordLoader(config)
