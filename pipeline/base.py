"""What every loader backend shares: the config (LoaderConfig), the batch (Batch) and the base class (LoaderBase:
manifest and packet index, the bad-row policy, the epoch plan, lifecycle). pipeline.build_loader picks the backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.index.build import load_or_build
from pipeline.index.table import PacketTable
from pipeline.manifest import HINT, DatasetError, load_classes, load_manifest
from pipeline.normalisation import PRESETS, Normalisation
from pipeline.sampling import MODES, VIEW_CROPS, Plan, plan_epoch, train_steps

MAX_BAD_FRACTION = 0.1  # skip_bad=True still fails when more than this share of rows (and > 1 row) is bad
BACKENDS = ("dali", "decord", "nvdec", "pyav")  # build_loader's dispatch: pipeline/backends/<name>.py


# A backend's check of the rows it cannot decode: (config, packets) -> (V,) object array of str, why row i cannot be
# decoded ("" = it can). Pure: it reads its arguments only. Rows whose file is missing or broken are answered for
# already (their answer is ignored).
Problems = Callable[["LoaderConfig", PacketTable], np.ndarray]


def first_problems(packets: PacketTable, checks: list[tuple[np.ndarray, Callable[[int], str]]]) -> np.ndarray:
    """A Problems answer from checks in order of precedence, each ((V,) bool failing rows, row -> why, with the
    fix): row i gets the answer of the first check it fails, "" when none. Rows without packets (bad files,
    answered for already) get "". Each message is made only for the rows that show it."""
    out = np.full(len(packets), "", object)
    todo = packets.count > 0
    for failing, message in checks:
        for r in np.flatnonzero(todo & failing).tolist():
            out[r] = message(r)
        todo &= ~failing
    return out


class Batch(NamedTuple):
    clips: Any  # (N, 3, T, S, S) float32 torch.Tensor, on cuda:device_id for device="gpu"
    labels: Any  # (N,) int64 torch.Tensor (-1: unlabelled)
    video_idx: Any  # (N,) int64 torch.Tensor, row index into loader.videos


@dataclass(frozen=True)
class LoaderConfig:
    """What a loader loads and how; checked when made (also by dataclasses.replace). Fields by name only.

    data: prepared dataset folder; split: manifest name (data/<split>.csv); mode: train | val | eval | views
    (sampling.py; eval and views accept unlabelled rows, label -1);
    backend: one of BACKENDS; device: "cpu" | "gpu" (where batches are delivered and, for DALI and NVDEC,
    decoded; NVDEC decodes on "gpu" only); batch_size per rank; rank, world_size: DDP sharding; seed: the epoch
    plans' seed; workers: decoding threads (DALI, NVDEC, pyav: >= 1), or decord's worker processes (0: decord
    decodes in this process); sample_duration T frames, sample_size S pixels;
    clips, crops: views mode's K clips x C crops per video, C = 1 or 3 (sampling.view_starts, view_boxes:
    PySlowFast's test views); normalisation: what the
    pixels become (pipeline/normalisation.py; default: minus the Kinetics mean on the 0-255 scale);
    device_id: CUDA device (None: the current one); skip_bad: skip and count bad rows instead of failing (at
    most MAX_BAD_FRACTION); progress: progress bar while indexing videos; prefetch: batches made ahead of the
    consumer (DALI's prefetch_queue_depth; NVDEC's batches in flight; pyav: at most batch_size x prefetch clips
    in flight; decord bounds its own: backends/decord.py).
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
    workers: int = 2
    sample_duration: int = 16
    sample_size: int = 112
    clips: int = 1
    crops: int = 1
    normalisation: Normalisation = PRESETS["kinetics"]
    device_id: int | None = None
    skip_bad: bool = False
    dali_input: str = "gop"
    prefetch: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
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
        if self.crops not in VIEW_CROPS:
            raise ValueError(f"crops must be one of {VIEW_CROPS} (views mode: PySlowFast's uniform_crop, one centre "
                             f"crop or both ends and the centre), got {self.crops}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.workers < 0 or (self.backend != "decord" and self.workers < 1):
            raise ValueError(f"workers must be >= 1 (decord: >= 0), got {self.workers}")
        if not isinstance(self.normalisation, Normalisation):
            raise ValueError(f"normalisation must be a pipeline.normalisation.Normalisation, got {self.normalisation!r}")


class LoaderBase:
    """Manifest, packet index, bad-row policy, per-epoch plan and length, lifecycle; backend-neutral.

    Attributes: config; videos (DataFrame of the rows in use, index 0..V-1, plus an absolute `file` column);
    packets (PacketTable, row i = videos row i); class_names; skipped (bad rows skipped with skip_bad=True);
    torch_device (where batches are delivered); epoch; plan (this rank's clips of the epoch); num_clips;
    len() = steps per epoch for this rank. Use as `with build_loader(...) as loader:` or call close().

    A backend subclasses this, passes its module's `problems` (Problems) to __init__, and implements:
      __iter__() -> Iterator[Batch]: the epoch's batches in plan order (self.batch_plans() cuts the plan into
          batches); call self.check_open() first and after each yield (close() may come while the generator
          is suspended: the next step must say "closed", not fail on freed resources or end the epoch early).
          Threads or worker processes may start on first use and be kept between epochs; an iteration
          abandoned mid-epoch must not leak into the next one.
      close(): free them (idempotent; call super().close()). videos, plan and len() stay usable.
    The base class applies the bad-row policy to what `problems` says: fail with the first bad file named, or
    skip and count them (skip_bad).
    """

    def __init__(self, config: LoaderConfig, problems: Problems | None = None):
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
        # Evaluation modes accept unlabelled rows (label -1, e.g. Kinetics' test split): they score no accuracy but
        # still get predictions. train and val need a label for the loss.
        df = load_manifest(data, config.split, len(self.class_names), allow_unlabelled=config.mode in ("eval", "views"))
        manifest = data / f"{config.split}.csv"
        # Every backend uses the packet index. DALI needs its packet offsets for the GOP slices. decord seeks by
        # itself, but building the index is also the check that finds missing, truncated and undecodable files
        # before the first step (it demuxes every packet and decodes the first frame), and it gives each row's
        # real frame count, width and height. The cache is memory-mapped, so a decord loader, which never reads
        # the packet arrays, holds only the per-video columns (~60 bytes a video) in its own memory.
        packets, bad_files = load_or_build(
            df["file"].tolist(), data / ".cache" / f"packets-{config.split}.idx", progress=config.progress
        )
        undecodable = problems(config, packets) if problems is not None else np.full(len(packets), "", object)
        self.videos, self.packets, self.skipped = self._drop_bad_rows(df, packets, bad_files, undecodable, manifest)
        self.labels = self.videos["label"].to_numpy(np.int64)  # (V,) int64
        self.epoch = 0
        self._plan: Plan | None = None
        self._only: np.ndarray | None = None  # only_videos
        if config.mode == "train" and train_steps(len(self.videos), config.world_size, config.batch_size) == 0:
            raise DatasetError(
                f"{manifest}: {len(self.videos)} usable video(s) give no full batch of {config.batch_size} per rank "
                f"with world_size {config.world_size}; lower batch_size or add videos"
            )

    def _drop_bad_rows(
        self, df: pd.DataFrame, packets: PacketTable, bad_files: dict[str, str], problems: np.ndarray,
        manifest: Path,
    ) -> tuple[pd.DataFrame, PacketTable, int]:
        """The usable rows, their packet table (row i = videos row i) and how many were skipped; bad rows raise
        (the first named) or, with skip_bad, are skipped and counted. packets: one row per df row (empty for
        the files in bad_files); problems: (V,) the backend's answers. Reasons by precedence: bad file,
        truncated, the backend's problems."""
        cfg = self.config
        end = df["end_frame"].to_numpy()
        bad_file = df["file"].isin(list(bad_files)).to_numpy()
        truncated = ~bad_file & (packets.shown < end)  # shown frames: a hidden frame's packet is no frame
        undecodable = ~bad_file & ~truncated & (problems != "")
        ok = ~(bad_file | truncated | undecodable)
        bad = np.flatnonzero(~ok)
        if len(bad):
            i = int(bad[0])
            if bad_file[i]:
                reason = bad_files[df["file"][i]]
            elif truncated[i]:
                reason = f"truncated: {packets.shown[i]} frames in the file, the manifest needs {end[i]}"
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

    def only_videos(self, rows: np.ndarray) -> None:
        """Eval mode: from now on this rank loads every window of the videos `rows` (indices into self.videos),
        whole and in manifest order, instead of its share of all windows (rank, world_size); [] loads nothing.
        For evaluate.py --features, where each video is written by the one rank that computes all of it."""
        if self.config.mode != "eval":
            raise ValueError(f"only_videos is for eval mode, not {self.config.mode!r}")
        self._only = np.unique(np.asarray(rows, np.int64))
        self._plan = None

    @property
    def plan(self) -> Plan:
        """This rank's clips for the current epoch (made once per epoch: make_plan)."""
        if self._plan is None:
            self._plan = self.make_plan(self.epoch)
        return self._plan

    def make_plan(self, epoch: int) -> Plan:
        """This rank's clips for `epoch` (only those of only_videos' videos once it is called), made anew
        (sampling.plan_epoch); `plan` caches the current epoch's."""
        c = self.config
        rank, world = (0, 1) if self._only is not None else (c.rank, c.world_size)
        plan = plan_epoch(
            (self.videos["end_frame"] - self.videos["start_frame"]).to_numpy(),
            self.packets.width, self.packets.height,  # (V,) the files' own frame sizes
            mode=c.mode, epoch=epoch, seed=c.seed, rank=rank, world=world, batch=c.batch_size,
            length=c.sample_duration, start_frames=self.videos["start_frame"].to_numpy(), clips=c.clips,
            crops=c.crops,
        )
        return plan if self._only is None else plan.take(np.isin(plan.rows, self._only))

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
