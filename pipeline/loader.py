"""The one entry point, build_loader(), and what every backend shares: config, manifest and packet index,
the bad-row policy, epoch plans, lifecycle (close / with)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.manifest import HINT, DatasetError, load_classes, load_manifest
from pipeline.normalisation import MEANS, PRESETS, Normalisation
from pipeline.packets import PacketTable, load_or_build
from pipeline.sampling import MODES, Plan, plan_epoch, train_steps

# Per-channel RGB means on the 0-255 scale: pipeline/normalisation.py's, under their older names (mean=).
KINETICS_MEAN = MEANS["kinetics"]
ACTIVITYNET_MEAN = MEANS["activitynet"]
MAX_BAD_FRACTION = 0.1  # skip_bad=True still fails when more than this share of rows (and > 1 row) is bad
BACKENDS = ("dali", "decord", "nvdec", "pyav")  # build_loader's dispatch


class Batch(NamedTuple):
    clips: Any  # (N, 3, T, S, S) float32 torch.Tensor, on cuda:device_id for device="gpu"
    labels: Any  # (N,) int64 torch.Tensor (-1: unlabelled)
    video_idx: Any  # (N,) int64 torch.Tensor, row index into loader.videos


@dataclass(frozen=True)
class LoaderConfig:
    """What a loader loads and how; checked when made (also by dataclasses.replace). Fields by name only.

    data: prepared dataset folder; split: manifest name (data/<split>.csv); mode: train | val | eval (sampling.py);
    backend: one of BACKENDS; device: "cpu" | "gpu" (where batches are delivered and, for DALI and NVDEC,
    decoded; NVDEC on "cpu" is its CPU twin); batch_size per rank; rank, world_size: DDP sharding; seed: the
    epoch plans' seed; num_threads: DALI, NVDEC or pyav decoder threads (>= 1) or decord DataLoader workers (0 = in
    this process); sample_duration T frames, sample_size S pixels;
    clips, crops: views mode's K clips x C crops per video (sampling.plan_epoch); normalisation: what the
    pixels become (pipeline/normalisation.py; default: minus the Kinetics mean on the 0-255 scale); mean: the
    older spelling, 3 numbers = Normalisation(mean) (replaces normalisation; then stored as None);
    device_id: CUDA device (None: the current one); skip_bad: skip and count bad rows instead of failing (at
    most MAX_BAD_FRACTION); progress: progress bar while indexing videos; prefetch: batches made ahead of the
    consumer (DALI's prefetch_queue_depth; NVDEC's batches in flight; pyav: at most batch_size x prefetch clips in
    flight; decord bounds its own, decord_loader.py).
    DALI only: dali_input "gop" sends the decoder the packets from the keyframe before a clip to its end
    (VP8/VP9; other codecs always get the whole file), "file" the whole file.
    """

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
    clips: int = 1
    crops: int = 1
    normalisation: Normalisation = PRESETS["kinetics"]
    mean: tuple[float, float, float] | None = None
    device_id: int | None = None
    skip_bad: bool = False
    dali_input: str = "gop"
    prefetch: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        if self.mean is not None:
            if self.normalisation != PRESETS["kinetics"]:
                raise ValueError("give normalisation or mean (its older spelling), not both")
            if len(self.mean) != 3:
                raise ValueError(f"mean must have 3 values (RGB, 0-255 scale), got {self.mean}")
            object.__setattr__(self, "normalisation", Normalisation(mean=tuple(self.mean)))
            object.__setattr__(self, "mean", None)
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.dali_input not in ("gop", "file"):
            raise ValueError(f"dali_input must be 'gop' or 'file', got {self.dali_input!r}")
        for name in ("batch_size", "world_size", "sample_duration", "sample_size", "prefetch", "clips", "crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.num_threads < 0 or (self.backend != "decord" and self.num_threads < 1):
            raise ValueError(f"num_threads must be >= 1 (decord: >= 0), got {self.num_threads}")
        if not isinstance(self.normalisation, Normalisation):
            raise ValueError(f"normalisation must be a pipeline.normalisation.Normalisation, got {self.normalisation!r}")


class LoaderBase:
    """Manifest, packet index, bad-row policy, per-epoch plan and length, lifecycle; backend-neutral.

    Attributes: config; videos (DataFrame of the rows in use, index 0..V-1, plus an absolute `file` column);
    packets (PacketTable, row i = videos row i); class_names; skipped (bad rows skipped with skip_bad=True);
    torch_device (where batches are delivered); epoch; plan (this rank's clips of the epoch); num_clips;
    len() = steps per epoch for this rank. Use as `with build_loader(...) as loader:` or call close().

    A backend subclasses this and implements:
      decode_problems(packets) -> (V,) object array of str, why this backend cannot decode each row ("" = it
          can). Called from LoaderBase.__init__, before the rest of the backend's __init__: use self.config
          and self.torch_device only. Rows whose file is missing or broken are answered for already (their answer is ignored).
          The base class applies the policy: fail with the first bad file named, or skip and count them.
          Default: every row is decodable.
      __iter__() -> Iterator[Batch]: the epoch's batches in plan order (self.batch_plans() cuts the plan into
          batches); call self.check_open() first and after each yield (close() may come while the generator
          is suspended: the next step must say "closed", not fail on freed resources or end the epoch early).
          Threads or worker processes may start on first use and be kept between epochs; an iteration
          abandoned mid-epoch must not leak into the next one.
      close(): free them (idempotent; call super().close()). videos, plan and len() stay usable.
    """

    def __init__(self, config: LoaderConfig):
        import torch  # lazy: `import pipeline` stays light for prepare_data's worker processes

        self.config = config
        self.closed = False
        if config.device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("device='gpu' needs CUDA, and torch sees no GPU; use device='cpu'")
            self.torch_device = torch.device(
                "cuda", torch.cuda.current_device() if config.device_id is None else config.device_id
            )  # where batches are delivered; DALI's device_id is its index
        else:
            self.torch_device = torch.device("cpu")
        data = config.data
        if not data.is_dir():
            raise DatasetError(f"{data}: dataset folder not found. {HINT}")
        self.class_names = load_classes(data)
        df = load_manifest(data, config.split, len(self.class_names), allow_unlabelled=config.mode == "eval")
        manifest = data / f"{config.split}.csv"
        # Every backend uses the packet index. DALI needs its packet offsets for the GOP slices. decord seeks by
        # itself, but building the index is also the check that finds missing, truncated and undecodable files
        # before the first step (it demuxes every packet and decodes the first frame), and it gives each row's
        # real frame count, width and height. The cache is memory-mapped, so a decord loader, which never reads
        # the packet arrays, holds only the per-video columns (~50 bytes a video) in its own memory.
        packets, bad_files = load_or_build(
            df["file"].tolist(), data / ".cache" / f"packets-{config.split}.idx", progress=config.progress
        )
        self.videos, self.packets, self.skipped = self._drop_bad_rows(df, packets, bad_files, manifest)
        self.labels = self.videos["label"].to_numpy(np.int64)  # (V,) int64
        self.epoch = 0
        self._plan: Plan | None = None
        if config.mode == "train" and train_steps(len(self.videos), config.world_size, config.batch_size) == 0:
            raise DatasetError(
                f"{manifest}: {len(self.videos)} usable video(s) give no full batch of {config.batch_size} per rank "
                f"with world_size {config.world_size}; lower batch_size or add videos"
            )

    def decode_problems(self, packets: PacketTable) -> np.ndarray:
        """(V,) object array: why this backend cannot decode row i ("" = it can). Backends override it."""
        return np.full(len(packets), "", object)

    def _drop_bad_rows(
        self, df: pd.DataFrame, packets: PacketTable, bad_files: dict[str, str], manifest: Path
    ) -> tuple[pd.DataFrame, PacketTable, int]:
        """The usable rows, their packet table (row i = videos row i) and how many were skipped; bad rows raise
        (the first named) or, with skip_bad, are skipped and counted. packets: one row per df row (empty for
        the files in bad_files). Reasons by precedence: bad file, truncated, the backend's decode_problems."""
        cfg = self.config
        end = df["end_frame"].to_numpy()
        bad_file = df["file"].isin(list(bad_files)).to_numpy()
        truncated = ~bad_file & (packets.count < end)
        problems = self.decode_problems(packets)
        undecodable = ~bad_file & ~truncated & (problems != "")
        ok = ~(bad_file | truncated | undecodable)
        bad = np.flatnonzero(~ok)
        if len(bad):
            i = int(bad[0])
            if bad_file[i]:
                reason = bad_files[df["file"][i]]
            elif truncated[i]:
                reason = f"truncated: {packets.count[i]} frames in the file, the manifest needs {end[i]}"
            else:
                reason = problems[i]
            first = f"{df['file'][i]}: {reason} ({manifest.name} row {i + 2}, video {df['video_id'][i]!r})"
            if not cfg.skip_bad:
                raise DatasetError(f"{first}; {len(bad)} bad row(s) in {manifest}. {HINT} or pass skip_bad=True")
            if len(bad) > max(MAX_BAD_FRACTION * len(df), 1):
                raise DatasetError(f"{len(bad)} of {len(df)} rows of {manifest} are bad (more than "
                                   f"{MAX_BAD_FRACTION:.0%}), first: {first}. {HINT}")
            if cfg.rank == 0:  # every rank skips the same rows: say it once
                print(f"skipping {len(bad)} bad row(s) of {len(df)} in {manifest}; first: {first}")
        keep = np.flatnonzero(ok)
        if not len(keep):
            raise DatasetError(f"{manifest}: no usable rows. {HINT}")
        return df.iloc[keep].reset_index(drop=True), packets.take(keep), len(bad)

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
                (self.videos["end_frame"] - self.videos["start_frame"]).to_numpy(),
                self.packets.width, self.packets.height,  # (V,) the files' own frame sizes
                mode=c.mode, epoch=self.epoch, seed=c.seed, rank=c.rank, world=c.world_size, batch=c.batch_size,
                length=c.sample_duration, start_frames=self.videos["start_frame"].to_numpy(), clips=c.clips,
                crops=c.crops,
            )
        return self._plan

    @property
    def num_clips(self) -> int:
        return len(self.plan)

    def __len__(self) -> int:
        return math.ceil(self.num_clips / self.config.batch_size)

    def batch_plans(self) -> list[Plan]:
        """The epoch's plan cut into batches of batch_size (the last eval/val batch may be smaller)."""
        plan, b = self.plan, self.config.batch_size
        return [plan.take(slice(k, k + b)) for k in range(0, len(plan), b)]

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError("a backend implements __iter__")

    def check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this loader was closed; build a new one with build_loader()")

    def close(self) -> None:
        """Free the backend's threads, processes or pipeline now. Idempotent."""
        self.closed = True

    def __enter__(self) -> LoaderBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def build_loader(data: str | Path, *, split: str, mode: str, **options: Any) -> LoaderBase:
    """Loader over a prepared dataset: iterate for Batch(clips, labels, video_idx); see README "Loading clips".

        with build_loader(data, split="train", mode="train", backend="dali", batch_size=32) as loader:

    options: the other LoaderConfig fields, by name (an unknown name is a TypeError). The loader holds
    threads (DALI, NVDEC) or worker processes (decord): leave the `with` block or call close() to free them.
    """
    config = LoaderConfig(data=Path(data), split=split, mode=mode, **options)
    if config.backend == "dali":
        from pipeline.dali_loader import DaliLoader as backend
    elif config.backend == "nvdec":  # NVDEC decoders; on device="cpu" their CPU twin
        from pipeline.nvdec_loader import NvdecLoader as backend
    elif config.backend == "pyav":  # FFmpeg on the CPU, the clip's packets only (pipeline/pyav_loader.py)
        from pipeline.pyav_loader import PyAVLoader as backend
    else:  # "decord"; LoaderConfig checked the name against BACKENDS
        from pipeline.decord_loader import DecordLoader as backend
    return backend(config)
