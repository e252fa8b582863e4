"""Train a 3D ResNet (Hara, Kataoka, Satoh, ICCV 2017 workshops) on a prepare_data.py output folder, with the
paper's recipe.

  python train.py --data DST --out runs/r34 --arch resnet-34           # one GPU (or the CPU if none)
  python train.py --data DST --out runs/r34 --arch resnet-34 --gpus 4  # 4 GPUs on this node, DDP over NCCL
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      train.py --data DST --out runs/r34 --arch resnet-34              # multi-node: same line on every node
  python train.py --data DST --out runs/tiny --nproc 2                 # 2 CPU processes, DDP over gloo
  python train.py --data DST --out runs/r34 --resume                   # continue from checkpoints/last.pt
  python train.py --data DST --out runs/ft --split 1 ...               # UCF101/HMDB51 split 1: train1.csv, test1.csv
  python train.py --data DST --out runs/r34 --tensorboard              # + curves in runs/r34/tb (TensorBoard)
  python train.py --data DST --out runs/r34 --gpus 4 --max-restarts 3  # a process dies: all start again from last.pt

Writes RUN_DIR/config.json, RUN_DIR/metrics.csv (one row per epoch), RUN_DIR/curves.png and
RUN_DIR/checkpoints/{last,best}.pt (see engine/checkpoint.py for their contents), and with --tensorboard
RUN_DIR/tb (engine/tensorboard.py: metrics.csv's columns per epoch, the loss per log point). The learning rate follows
the paper's plateau rule (engine/schedule.py). --resume refuses settings that would make another run
(DEFINES_THE_RUN); Ctrl-C stops with one line saying how to continue (exit status 130). RUN_DIR is checked to be
writable before any work; a full disk while saving is one line naming the file and the space it needs, and never
costs a checkpoint (save_best). On several nodes RUN_DIR must be one folder they all share: the ranks compare what
they resume before the first step (start) and stop together when they differ. With --max-restarts, a group that
lost a process starts again and continues from last.pt (engine/distributed.py launches it, train.py resumes).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from torch import nn

from engine import distributed
from engine.checkpoint import (
    MODEL_ARGS,
    CheckpointError,
    RunRecord,
    TrainingState,
    check_compatible,
    file_digest,
    link_atomic,
    load_training_checkpoint,
    save_atomic,
    saved_config,
)
from engine.cli import (
    DEVICE_RANGES,
    LOADER_DEFAULTS,
    LOADER_RANGES,
    NORM_RANGES,
    Range,
    add_device_flags,
    add_family_flags,
    add_loader_flags,
    add_normalisation_flags,
    as_flag,
    check_numeric_flags,
    loader_options,
    model_arg_message,
    resolve_device_flags,
    resolve_normalisation,
    shown_config,
    unwritable_folder,
)
from engine.distributed import Dist, Interrupted, all_reduce_sum
from engine.plots import plot_curves
from engine.progress import StepBar, make_console
from engine.schedule import PlateauSchedule
from engine.step import forward, memory_format, to_device, train_step
from engine.tensorboard import TensorBoardLog
from engine.tensorboard import missing as tensorboard_missing
from model import (
    ARCHS,
    ARCHS_HELP,
    ModelArgError,
    build_model,
    check_clip,
    check_model_args,
    fine_tuning_modules,
    load_weights,
    model_cost,
    read_checkpoint,
)
from pipeline import DatasetError, LoaderBase, build_loader
from pipeline.atomic import NoSpace, atomic_write
from pipeline.manifest import manifest_names, split_manifests
from pipeline.normalisation import PRESETS, Normalisation
from prepare.run import interrupted_preparation

METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                   "epoch_seconds", "clips_per_s", "data_wait_share")  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    split: str = ""  # --split K: train on trainK.csv, validate on valK.csv (testK.csv where there is none)
    # model (model.build_model arguments)
    arch: str = "resnet-18"
    shortcut: str = "A"
    widen_factor: float = 1.0
    conv1_t_size: int = 7
    conv1_t_stride: int = 1
    no_max_pool: bool = False
    cardinality: int = 32  # resnext-* only
    wide_k: int = 2  # wideresnet-* only
    # input (the loader's sampling; stored with every checkpoint)
    sample_duration: int = 16
    sample_size: int = 112
    normalisation: Normalisation = PRESETS["kinetics"]  # --norm, or --value-scale/--mean-values/--std-values
    backend: str = LOADER_DEFAULTS.backend
    workers: int = LOADER_DEFAULTS.workers
    skip_bad: bool = LOADER_DEFAULTS.skip_bad
    # optimisation (the paper's recipe)
    epochs: int = 200
    batch_size: int = 256  # global, split evenly across processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_patience: int = 10
    lr_reductions: int = 3  # divisions by 10 before training stops at the next plateau (PlateauSchedule)
    pretrained: str | None = None
    ft_begin: str | None = None
    # run
    resume: bool = False
    seed: int = 0
    device: str = "cpu"  # resolved: "cuda" or "cpu"
    gpus: int = 1
    nproc: int = 1
    max_restarts: int = 0  # restarts of the whole group when a process dies (launch(): torch's elastic agent)
    amp: bool = False  # bf16 autocast; default on for CUDA
    channels_last: bool = False  # channels_last_3d; default on for CUDA
    compile: bool = False
    log_every: int = 10  # steps between synchronising log points on the GPU (the CPU checks every step)
    tensorboard: bool = False  # also write the curves to OUT/tb (engine/tensorboard.py)
    inject_nan_step: int = -1  # testing hook: make the loss inf at this global step (0-based); -1 = never

    def world_size(self) -> int:
        return distributed.world_size(self.device, self.gpus, self.nproc)

    def last_checkpoint(self) -> Path:
        """OUT/checkpoints/last.pt: where the run saves after every epoch, and what --resume continues."""
        return Path(self.out) / "checkpoints" / "last.pt"


# --resume continues a run as it was defined. These settings define it: changing one would make a different run
# than the checkpoint's, so --resume refuses and lists them. The others only say how it executes or how long it
# goes on, and may change on --resume (config.json and the next checkpoints record the new values): threads,
# backend, processes and devices (the global batch stays), precision, logging, and --epochs / --lr-reductions
# to extend or shorten it.
DEFINES_THE_RUN = ("split", "arch", "shortcut", "widen_factor", "conv1_t_size", "conv1_t_stride", "no_max_pool",
                   "cardinality", "wide_k", "sample_duration", "sample_size", "normalisation", "batch_size", "lr",
                   "momentum", "weight_decay", "lr_patience", "seed", "pretrained", "ft_begin")  # fmt: skip
MAY_CHANGE_ON_RESUME = ("data", "out", "backend", "workers", "skip_bad", "epochs", "lr_reductions", "resume",
                        "device", "gpus", "nproc", "max_restarts", "amp", "channels_last", "compile", "log_every",
                        "tensorboard", "inject_nan_step")  # fmt: skip


def resume_differences(saved_config: dict, cfg: TrainConfig) -> list[str]:
    """'--lr 0.02 (checkpoint: 0.01)', '--no-max-pool (checkpoint: --max-pool)' for each setting in
    DEFINES_THE_RUN that cfg changes. A setting missing from an older checkpoint's config had its default then."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    diffs = []
    for name in DEFINES_THE_RUN:
        was, now = saved_config.get(name, defaults[name]), getattr(cfg, name)
        was = Normalisation.from_dict(was) if isinstance(was, dict) else was  # the normalisation, as stored
        if was != now:
            flag_now, flag_was = _as_flag(name, now), _as_flag(name, was)
            diffs.append(f"{flag_now} (checkpoint: {flag_was.removeprefix(flag_now.split()[0] + ' ')})")
    return diffs


def _as_flag(name: str, value: object) -> str:
    """The flag that sets a TrainConfig value: cli.as_flag's, with the normalisation's description and 'none'."""
    if isinstance(value, Normalisation):
        return f"--norm {value.describe()}"
    return as_flag(name, "none" if value is None else value)


# What the checkpoint the weights come from says, for the flags not given: the model (build_model's arguments but the
# class count, which follows the data) and its input normalisation. The weights come from --resume's last.pt (its
# config) or else --pretrained when it is one of ours (its run record); a 3D-ResNets-PyTorch checkpoint says
# nothing, and the flags (or their defaults) describe it. A model flag that contradicts our checkpoint is refused.
ARCH_ARGS = tuple(k for k in MODEL_ARGS if k != "n_classes")
FROM_THE_WEIGHTS = (*ARCH_ARGS, "normalisation")
# Fields that parse_args works out from flags (or that have no default): the parser's own defaults are None,
# "auto" or required.
RESOLVED_IN_PARSE_ARGS = ("data", "out", "device", "amp", "channels_last", *FROM_THE_WEIGHTS)
# Every numeric flag's allowed values; parse_args rejects the rest with a one-line usage error.
RANGES = {
    **LOADER_RANGES, **DEVICE_RANGES, **NORM_RANGES,
    **{name: Range(min=1) for name in ("sample_duration", "sample_size", "conv1_t_size", "conv1_t_stride", "epochs",
                                       "batch_size", "log_every", "cardinality", "wide_k")},
    "widen_factor": Range(min=1 / 64, why="conv1 needs one of its 64 channels"),
    "lr": Range(above=0),
    "momentum": Range(min=0, below=1),
    "weight_decay": Range(min=0),
    "lr_patience": Range(min=0),
    "lr_reductions": Range(min=0),
    "max_restarts": Range(min=0),
    "seed": Range(min=0, below=2**63, why="DALI's seed is an int64"),
    "inject_nan_step": Range(min=-1),
}


def build_parser() -> argparse.ArgumentParser:
    """The flags; their defaults are TrainConfig's (set once, at the end), but for those parse_args resolves."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="a prepare_data.py output folder (train.csv, val.csv, ...)")
    g.add_argument("--out", required=True, help="run folder for checkpoints, metrics and plots")
    g.add_argument("--split", help="split number K of a dataset with several (UCF101, HMDB51): train on "
                   "trainK.csv, validate on valK.csv, or testK.csv where there is none (these datasets have no "
                   "validation split)")
    add_loader_flags(g)
    g.add_argument("--sample-duration", type=int, help="frames per clip")
    g.add_argument("--sample-size", type=int, help="clip height and width in pixels")
    add_normalisation_flags(g, "kinetics (minus the Kinetics mean, 0-255 scale)")
    g = p.add_argument_group("model (default: what our --pretrained checkpoint, or the run --resume continues, "
                             "says; else resnet-18, A, 1, 7, 1, max pool)")
    g.add_argument("--arch", choices=ARCHS, metavar="ARCH", help=ARCHS_HELP)
    g.add_argument("--shortcut", choices=("A", "B"), help="A: zero-padding (the paper's), B: conv")
    g.add_argument("--widen-factor", type=float, help="channel multiplier (small CPU models)")
    g.add_argument("--conv1-t-size", type=int)
    g.add_argument("--conv1-t-stride", type=int)
    g.add_argument("--no-max-pool", action="store_true", default=None, help="no max pool after conv1")
    g.add_argument("--max-pool", dest="no_max_pool", action="store_false", default=None, help="(the default)")
    add_family_flags(g)
    g.add_argument("--pretrained", help="initial weights: our checkpoint (its model and normalisation come with it) "
                                        "or a 3D-ResNets-PyTorch one (describe it with the flags above)")
    g.add_argument("--ft-begin", help="train from this module on (e.g. layer4 or fc), freeze the pretrained ones "
                                      "before it (needs --pretrained)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch, split evenly across processes")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--lr-patience", type=int,
                   help="lr /= 10 after more epochs than this without a new best val loss")
    g.add_argument("--lr-reductions", type=int,
                   help="divide the lr by 10 this many times, then stop when the val loss saturates again")
    g = p.add_argument_group("run")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction,
                   help="continue from OUT/checkpoints/last.pt (epoch, weights, optimiser, lr schedule)")
    g.add_argument("--seed", type=int)
    add_device_flags(g)
    g.add_argument("--max-restarts", type=int,
                   help="when a process dies, start the whole group again (up to this many times); it continues "
                        "from OUT/checkpoints/last.pt (default 0; under torchrun: torchrun's --max-restarts)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="(GPU: on)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    g.add_argument("--log-every", type=int, help="steps between log points on the GPU")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction,
                   help="also write the curves to OUT/tb for TensorBoard (rank 0; --resume continues them)")
    g.add_argument("--inject-nan-step", type=int, help=argparse.SUPPRESS)  # testing hook
    p.set_defaults(**{f.name: f.default for f in fields(TrainConfig) if f.name not in RESOLVED_IN_PARSE_ARGS})
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The config; a usage error (exit status 2) for a bad flag, CheckpointError (one line) for an unusable
    --pretrained or model flags that contradict it."""
    p = build_parser()
    a = p.parse_args(argv)
    check_numeric_flags(p, a, RANGES)
    device, amp = resolve_device_flags(p, a)
    if a.tensorboard and (problem := tensorboard_missing()):
        p.error(problem)
    if a.max_restarts and distributed.launched_by_torchrun():
        p.error(f"--max-restarts {a.max_restarts}: under torchrun, torchrun restarts the processes; HINT: give "
                "torchrun --max-restarts instead, and train.py --resume so that a restarted group continues the run")
    if a.ft_begin and not a.pretrained:
        p.error(f"--ft-begin {a.ft_begin} without --pretrained would freeze randomly initialised layers; HINT: add "
                "--pretrained CHECKPOINT, or drop --ft-begin to train every layer")
    last = Path(a.out) / "checkpoints" / "last.pt"
    resuming = a.resume and last.exists()
    if a.pretrained is not None and not resuming and not Path(a.pretrained).is_file():
        p.error(f"--pretrained {a.pretrained}: no such file")
    given = {k: getattr(a, k) for k in ARCH_ARGS if getattr(a, k) is not None}
    given_norm = resolve_normalisation(p, a)
    if given_norm is not None:
        given["normalisation"] = given_norm
    described = described_by_the_weights(last if resuming else None, None if resuming else a.pretrained, given)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    skip = ("device", "amp", "channels_last", "norm", "value_scale", "mean_values", "std_values", *FROM_THE_WEIGHTS)
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k not in skip},
                      **{k: given.get(k, described.get(k, defaults[k])) for k in FROM_THE_WEIGHTS},
                      device=device, amp=amp,
                      channels_last=device == "cuda" if a.channels_last is None else a.channels_last)
    world, data = cfg.world_size(), Path(cfg.data)
    train_split, val_split = split_manifests(data, cfg.split)
    names = manifest_names(data)
    hint = f"manifests there: {', '.join(names)}" if names else f"HINT: prepare_data.py SRC --out {data}"
    if not cfg.split and any(n.removeprefix("train").isdigit() for n in names):
        hint += "; HINT: --split K trains on trainK.csv"
    checks = [
        (not cfg.split or cfg.split.isdigit(), f"--split {cfg.split}: expected a split number, e.g. 1"),
        (cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size} does not split evenly over {world} processes"),
        ((data / f"{train_split}.csv").is_file(), f"{data}/{train_split}.csv not found; {hint}"),
        ((data / f"{val_split}.csv").is_file(), f"{data}/{val_split}.csv not found: the lr schedule needs a "
                                                 f"validation split; {hint}"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        check_model_args(**model_kwargs(cfg, n_classes=1))
    except ModelArgError as e:
        p.error(model_arg_message(e))
    return cfg


def described_by_the_weights(last: Path | None, pretrained: str | None, given: dict) -> dict:
    """FROM_THE_WEIGHTS values that the checkpoint the weights come from gives: last (the run --resume continues:
    its config; unreadable: {}, resume_from says why) or else pretrained (ours: its run record; a 3D-ResNets-PyTorch
    one: {}). CheckpointError when pretrained is unreadable, or when a model flag given contradicts its record
    (resume_from compares the resumed run's settings itself)."""
    if last is not None:
        try:
            config = saved_config(last)
        except CheckpointError:
            return {}
        out = {k: config[k] for k in ARCH_ARGS if k in config}
        if isinstance(config.get("normalisation"), dict):
            out["normalisation"] = Normalisation.from_dict(config["normalisation"])
        return out
    if pretrained is None:
        return {}
    _, meta = read_checkpoint(pretrained)
    record = RunRecord.from_metadata(meta, pretrained)
    if record is None:
        return {}
    record.refuse_contradicting({k: v for k, v in given.items() if k in ARCH_ARGS}, pretrained)
    return {**{k: record.model_args[k] for k in ARCH_ARGS}, "normalisation": record.normalisation}


def model_kwargs(cfg: TrainConfig, n_classes: int) -> dict:
    """model.build_model's keyword arguments for this run."""
    return {k: getattr(cfg, k) for k in MODEL_ARGS if k != "n_classes"} | {"n_classes": n_classes}


def setup_model(cfg: TrainConfig, n_classes: int, d: Dist,
                resuming: bool = False) -> tuple[nn.Module, dict, list[nn.Module]]:
    """(raw model on d.device, build_model kwargs, frozen modules). Same seed on every rank: same weights; those
    of --pretrained unless resuming (last.pt's replace them)."""
    args = model_kwargs(cfg, n_classes)
    torch.manual_seed(cfg.seed)
    raw = build_model(**args)
    if cfg.pretrained and not resuming:  # parse_args took the model from its run record (ours)
        load_weights(raw, cfg.pretrained, verbose=d.is_main)  # replaces the head when the class count differs
    frozen = []
    if cfg.ft_begin:
        modules = fine_tuning_modules(raw)  # in forward order; DenseNet's are inside `features`
        names = [name for name, _ in modules]
        if cfg.ft_begin not in names:
            raise SystemExit(f"error: --ft-begin {cfg.ft_begin}: not a module of the model; one of {names}")
        for name, child in modules:
            if name == cfg.ft_begin:
                break
            child.requires_grad_(False)
            frozen.append(child)
    return raw.to(d.device, memory_format=memory_format(cfg.channels_last)), args, frozen


class NonFiniteLoss(RuntimeError):
    pass


def train_one_epoch(cfg: TrainConfig, d: Dist, net: nn.Module, frozen: list[nn.Module], loader: LoaderBase,
                    optimizer: torch.optim.Optimizer, epoch: int, step0: int, bar: StepBar | None,
                    tb: TensorBoardLog | None = None) -> dict:
    """One pass over the training loader (step0: global index of its first step); the epoch's metrics summed
    over ranks: train_loss, train_acc, epoch_seconds, clips_per_s, data_wait_share. tb: gets each log point."""
    net.train()
    for m in frozen:
        m.eval()  # frozen layers keep their BatchNorm statistics too
    sums = torch.zeros(2, dtype=torch.float64, device=d.device)  # sum of loss x N, correct clips (this rank)
    n_clips = 0  # this rank's clips, counted on the host: no per-step host-to-device copy
    check_every = 1 if d.device.type == "cpu" else cfg.log_every  # CPU: syncing is free, check every step
    wait, t0, n_steps = 0.0, time.perf_counter(), len(loader)
    batches = iter(loader)
    for step in range(n_steps):
        t = time.perf_counter()
        clips, labels, _ = next(batches)  # (N, 3, T, S, S) float32, (N,) int64
        wait += time.perf_counter() - t
        clips, labels = to_device(clips, labels, d.device, cfg.channels_last)
        loss, logits = train_step(net, optimizer, clips, labels, cfg.amp,
                                  inject_nan=step0 + step == cfg.inject_nan_step)
        sums += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
        n_clips += len(labels)
        if (step + 1) % check_every == 0 or step + 1 == n_steps:  # the last step always checks
            # CPU-GPU sync: log point. A non-finite step leaves the running sum non-finite, so nothing slips by.
            loss_sum, correct, n = all_reduce_sum(torch.cat([sums, sums.new_tensor([n_clips])])).tolist()
            if not math.isfinite(loss_sum):
                raise NonFiniteLoss(f"loss became {loss_sum} in epoch {epoch} by step {step + 1}")
            if bar is not None:
                elapsed, lr = time.perf_counter() - t0, optimizer.param_groups[0]["lr"]
                bar.update(step + 1, f"loss {loss_sum / n:.4f}  acc {correct / n:.3f}  lr {lr:.3g}  "
                                     f"{n / elapsed:.1f} clips/s  data wait {wait / elapsed:.0%}")
            if tb is not None:
                tb.log_point(step0 + step, loss_sum, correct, n, optimizer.param_groups[0]["lr"])
    seconds = time.perf_counter() - t0
    loss_sum, correct, n, wait_sum = all_reduce_sum(torch.cat([sums, sums.new_tensor([n_clips, wait])])).tolist()
    return dict(train_loss=loss_sum / n, train_acc=correct / n, epoch_seconds=seconds,
                clips_per_s=n / seconds, data_wait_share=wait_sum / d.world_size / seconds)


@torch.no_grad()
def validate(cfg: TrainConfig, d: Dist, net: nn.Module, loader: LoaderBase, epoch: int) -> dict:
    """Loss and clip accuracy of one centre clip per validation video, over all ranks."""
    net.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=d.device)  # sum of losses, correct clips (this rank)
    n_clips = 0
    for clips, labels, _ in loader:
        clips, labels = to_device(clips, labels, d.device, cfg.channels_last)
        logits = forward(net, clips, cfg.amp)  # (N, K)
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                             (logits.argmax(1) == labels).sum().double()])
        n_clips += len(labels)
    loss_sum, correct, n = all_reduce_sum(torch.cat([sums, sums.new_tensor([n_clips])])).tolist()  # sync
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"validation loss became {loss_sum} in epoch {epoch}")
    return dict(val_loss=loss_sum / n, val_acc=correct / n)


def write_metrics_csv(history: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())


def resume_from(cfg: TrainConfig, restarted: bool = False) -> TrainingState | None:
    """The checkpoint this run continues (None: a new run). CheckpointError when OUT holds a run and --resume is
    not given, or its checkpoint is unusable or defines another run (DEFINES_THE_RUN). restarted: the group was
    restarted within its launch (Dist.restart), whose launcher checked OUT before the first start: the run there is
    this launch's own (or the one its --resume continues), and it goes on without --resume."""
    last_path = cfg.last_checkpoint()
    if not last_path.exists():
        return None
    if not (cfg.resume or restarted):
        raise CheckpointError(f"{cfg.out} already holds a run; HINT: add --resume to continue it, or choose "
                              "another --out")
    resumed = load_training_checkpoint(last_path)
    if diffs := resume_differences(resumed.config, cfg):
        raise CheckpointError(f"{last_path}: --resume continues the run as it was defined, but "
                              f"{', '.join(diffs)}; HINT: drop these flags to continue it, or start a new run with "
                              "another --out")
    return resumed


def out_problem(cfg: TrainConfig) -> str | None:
    """Why rank 0 could not write the run folder (checked before any work), or None."""
    return unwritable_folder(Path(cfg.out)) or unwritable_folder(cfg.last_checkpoint().parent)


def start(cfg: TrainConfig, d: Dist) -> TrainingState | None:
    """What this run continues (resume_from; None: a new run), the same on every rank, before any work.

    Each rank reads its own --out: on several nodes each may see another folder. The ranks compare what they found
    (a collective): one that cannot use its checkpoint, or cannot write the run folder (rank 0), stops them all
    with its line; ranks that would resume different epochs or different checkpoints (SHA-256 of last.pt) stop
    them all with a line that says which rank found what (resume_disagreement). A group that --max-restarts started
    again (d.restart > 0) continues last.pt as if --resume were given: the one its launch wrote (or continued).
    """
    problem, resumed = out_problem(cfg) if d.is_main else None, None
    if problem is None:
        try:
            resumed = resume_from(cfg, restarted=d.restart > 0)
        except CheckpointError as e:
            problem = str(e)
    found = {"host": socket.gethostname(), "path": str(cfg.last_checkpoint()),
             "epoch": None if resumed is None else resumed.epoch,
             "digest": file_digest(cfg.last_checkpoint()) if resumed is not None and d.is_distributed else None}
    reports = distributed.all_gather_objects((problem, found))
    states = [f for _, f in reports]
    several_hosts = len({f["host"] for f in states}) > 1
    for rank, (problem, found) in enumerate(reports):
        if problem is not None:
            raise CheckpointError(f"rank {rank} on {found['host']}: {problem}" if several_hosts else problem)
    if why := resume_disagreement(states):
        raise CheckpointError(why)
    return resumed


def resume_disagreement(states: list[dict]) -> str | None:
    """One line saying which ranks would continue which checkpoint, when they would not all continue the same (None
    when they would). states: per rank, {"host", "path" (its last.pt), "epoch" (None: nothing to resume),
    "digest"}."""
    groups: dict[tuple, list[int]] = {}
    for rank, s in enumerate(states):
        groups.setdefault((s["epoch"], s["digest"]), []).append(rank)
    if len(groups) == 1:
        return None
    parts = []
    for (epoch, digest), ranks in groups.items():
        hosts = ", ".join(dict.fromkeys(states[r]["host"] for r in ranks))
        paths = " and ".join(dict.fromkeys(states[r]["path"] for r in ranks))
        one = len(ranks) == 1
        who = f"rank{'' if one else 's'} {_rank_ranges(ranks)} on {hosts}"
        if epoch is None:
            parts.append(f"{who} {'starts' if one else 'start'} a new run (no {paths})")
        else:
            parts.append(f"{who} {'resumes' if one else 'resume'} {paths} (epoch {epoch}, sha256 {digest[:12]})")
    return (f"the processes would not continue the same run: {'; '.join(parts)}. HINT: on several nodes --out must "
            "be one folder that every node shares (a network file system), so that all resume the same checkpoint")


def _rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (ranks sorted)."""
    spans: list[list[int]] = []
    for r in ranks:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def train(cfg: TrainConfig, d: Dist) -> None:
    console = make_console(d.is_main)
    out, last_path = Path(cfg.out), cfg.last_checkpoint()
    ckpt_dir = last_path.parent
    resumed = start(cfg, d)
    if warning := interrupted_preparation(Path(cfg.data)):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    on_gpu = d.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv3d kernels
    distributed.share_cpu_threads(d)
    loader_args = dict(loader_options(cfg, d, cfg.batch_size), seed=cfg.seed, sample_duration=cfg.sample_duration,
                       sample_size=cfg.sample_size, normalisation=cfg.normalisation)
    train_split, val_split = split_manifests(Path(cfg.data), cfg.split)
    if cfg.split:
        console.print(f"split {cfg.split}: training on {train_split}.csv, validating on {val_split}.csv")
    train_loader = build_loader(Path(cfg.data), split=train_split, mode="train", **loader_args)
    val_loader = build_loader(Path(cfg.data), split=val_split, mode="val", **loader_args)
    class_names = tuple(train_loader.class_names)

    raw, model_args, frozen = setup_model(cfg, len(class_names), d, resuming=resumed is not None)
    record = RunRecord(model_args=model_args, class_names=class_names, normalisation=cfg.normalisation,
                       sample_size=cfg.sample_size, sample_duration=cfg.sample_duration,
                       video_height=int(train_loader.videos["height"].mode().iloc[0]))  # for infer.py
    params = [p for p in raw.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, dampening=0.0,
                                weight_decay=cfg.weight_decay)  # dampening 0: the reference's 0.9 is a bug
    schedule = PlateauSchedule(cfg.lr, cfg.lr_patience, cfg.lr_reductions)
    epoch, history = 0, []
    if resumed is not None:
        check_compatible(last_path, resumed.record, record)
        try:
            raw.load_state_dict(resumed.model)
            optimizer.load_state_dict(resumed.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{last_path}: does not fit this run ({str(e).splitlines()[0][:200]})") from None
        epoch, history = resumed.epoch, resumed.history
        console.print(f"resumed from {last_path}: {epoch} epochs done")
    elif d.restart:
        console.print("[yellow]restarted before the first checkpoint: starting from scratch")
    elif cfg.resume:
        console.print(f"[yellow]--resume: no {last_path} yet, starting from scratch")

    config = json.loads(json.dumps(asdict(cfg)))  # plain: the checkpoint's config is config.json's
    net = torch.compile(raw) if cfg.compile else raw  # validation uses net: no DDP collectives there
    train_net = net
    if d.is_distributed:
        train_net = nn.parallel.DistributedDataParallel(net, device_ids=[d.local_rank] if on_gpu else None)

    def write_config() -> None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")

    stop_together(write_on_rank_0(d, write_config, cfg, epoch))
    n_trained = sum(p.numel() for p in params) / 1e6
    cost = model_cost(cfg.sample_duration, cfg.sample_size, **model_args)  # on the meta device: no compute
    console.print(f"config: {json.dumps(shown_config(config))}", highlight=False)
    clip = f"{cfg.sample_duration}x{cfg.sample_size}x{cfg.sample_size}"
    console.print(f"{cfg.arch}: {cost.parameters / 1e6:.2f} M parameters ({n_trained:.2f} M trained), "
                  f"{cost.macs / 1e9:.2f} G multiply-adds per {clip} clip (forward), {len(class_names)} classes | "
                  f"{d.world_size} process(es) on {d.device.type}, batch {cfg.batch_size} = {d.world_size} x "
                  f"{cfg.batch_size // d.world_size} | {len(train_loader.videos)} train videos, "
                  f"{len(train_loader)} steps/epoch | {len(val_loader.videos)} val videos | loader "
                  f"{loader_args['backend']} | bf16 {cfg.amp}")

    saved = epoch  # the epoch that last.pt holds (0: none yet)
    tb = None
    if cfg.tensorboard and d.is_main:
        tb = TensorBoardLog(out / "tb", len(train_loader), history,
                            warn=lambda line: console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False))
        console.print(f"tensorboard: {out / 'tb'} (tensorboard --logdir {out / 'tb'})", highlight=False)
    try:
        while True:
            verdict = schedule.after([row["val_loss"] for row in history])  # the lr rule reads the val losses
            if verdict.stop or epoch >= cfg.epochs:
                break
            lr = verdict.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch += 1
            train_loader.set_epoch(epoch)
            with StepBar(console, f"epoch {epoch}/{cfg.epochs}", len(train_loader)) as bar:
                try:
                    row = train_one_epoch(cfg, d, train_net, frozen, train_loader, optimizer, epoch,
                                          (epoch - 1) * len(train_loader), bar, tb)
                    distributed.broadcast_buffers(raw)  # all ranks validate (and rank 0 saves) rank 0's BN stats
                    row.update(validate(cfg, d, net, val_loader, epoch), epoch=epoch, lr=lr)
                except NonFiniteLoss as e:
                    good = last_path if last_path.exists() else "none (first epoch)"
                    raise SystemExit(f"error: {e} (lr {lr:.3g}); training stopped. The last good checkpoint is "
                                     f"{good}; HINT: lower --lr") from None
            history.append(row)
            is_best = max(history, key=selection_key) is row  # max() keeps the first of equal keys
            console.print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                          f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
                          f"{' (best)' if is_best else ''} | "
                          f"lr {lr:.3g} | {row['epoch_seconds']:.1f} s, {row['clips_per_s']:.1f} clips/s, "
                          f"data wait {row['data_wait_share']:.0%}")

            state = TrainingState(model=raw.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch, config=config,
                                  record=record, history=history)
            problem = write_on_rank_0(d, partial(save_atomic, state, last_path), cfg, saved)
            saved = epoch if problem is None else saved  # at once: a Ctrl-C from here on says last.pt has it
            stop_together(problem)
            stop_together(write_on_rank_0(d, partial(save_records, cfg, state, is_best, console), cfg, saved))
            if tb is not None:
                tb.epoch(row)
    except BaseException:  # Ctrl-C: KeyboardInterrupt, or what the C call it interrupted raised (torch.save)
        if not distributed.interrupted():
            raise
        raise Interrupted(interrupted_message(cfg, last_path, epoch, saved)) from None
    finally:
        train_loader.close()  # DALI threads / decord worker processes end here, also on errors and Ctrl-C
        val_loader.close()
        if tb is not None:
            tb.close()
    why = (f"the val loss saturated at lr {verdict.lr:.3g}, after {verdict.divisions} divisions by 10"
           if verdict.stop else f"--epochs {cfg.epochs}")
    best_acc = max(history, key=selection_key)["val_acc"] if history else float("nan")
    console.print(f"done after {epoch} epochs ({why}); best val clip accuracy {best_acc:.3f}; "
                  f"checkpoints in {ckpt_dir}")


def write_on_rank_0(d: Dist, write: Callable[[], None], cfg: TrainConfig, saved: int) -> str | None:
    """Run write() on rank 0 only; None, or when it fails (a full disk, a folder made read-only meanwhile) the
    one line to stop with (stop_together). saved: the epoch that last.pt holds (0: none)."""
    if not d.is_main:
        return None
    try:
        write()
    except OSError as e:  # NoSpace: the file, the space it needs and the space free
        what = str(e) if isinstance(e, NoSpace) else f"cannot write the run folder ({e})"
        fix = "free space there" if isinstance(e, NoSpace) else "make it writable"
        if not saved:
            return f"{what}; no checkpoint was saved yet; HINT: {fix}, then run the same command again"
        again = "the same command" if cfg.resume else "the same command plus --resume"
        return f"{what}; {cfg.last_checkpoint()} holds epoch {saved}; HINT: {fix}, then continue with {again}"
    return None


def stop_together(problem: str | None) -> None:
    """Every rank stops at once (SystemExit, one line) when any rank has a problem, rank 0's failed write above all:
    the others learn it in a collective here, instead of waiting for rank 0 in the next epoch's."""
    if (problem := distributed.first_problem(problem)) is not None:
        raise SystemExit(f"error: {problem}")


def save_records(cfg: TrainConfig, state: TrainingState, is_best: bool, console: Console) -> None:
    """After last.pt: best.pt when this epoch is the best, metrics.csv and curves.png."""
    if is_best:
        save_best(state, cfg.last_checkpoint(), cfg.last_checkpoint().parent / "best.pt", console)
    out = Path(cfg.out)
    write_metrics_csv(state.history, out / "metrics.csv")
    plot_curves(state.history, out / "curves.png", title=f"{cfg.arch}, {len(state.record.class_names)} classes",
                best_epoch=max(state.history, key=selection_key)["epoch"])


def save_best(state: TrainingState, last_path: Path, best_path: Path, console: Console) -> None:
    """Write best.pt, a copy of last.pt (just saved: the same state). Where the disk has no room for the copy,
    best.pt becomes a hard link to last.pt (no space needed; the next last.pt is a new file, so the two part
    again), said in one line: the best epoch is never lost, and the previous best.pt is replaced only whole."""
    try:
        save_atomic(state, best_path)
    except NoSpace as e:
        link_atomic(last_path, best_path)
        console.print(f"[yellow]warning:[/] {escape(str(e))}: {escape(str(best_path))} is a hard link to "
                      f"{escape(str(last_path))} (epoch {state.epoch}) instead of a copy", highlight=False)


def selection_key(row: dict) -> tuple[float, float]:
    """What best.pt maximises: the validation clip accuracy, and among equal accuracies the lower validation loss.

    A small validation split ties often (72 videos in the demo: 1.4% per video), and the first epoch to reach an
    accuracy is often a lucky spike at a high lr: measured in the demo, best.pt from such a spike (epoch 36, lr
    0.01, val loss 0.12) scored video top-1 0.917 where the later epochs with the same accuracy and half the loss
    (lr 0.001) held the converged model.
    """
    return float(row["val_acc"]), -float(row["val_loss"])


def interrupted_message(cfg: TrainConfig, last_path: Path, epoch: int, saved: int) -> str:
    """The one line printed on Ctrl-C: where the run stands and how to continue it."""
    where = f"in epoch {epoch}" if epoch > saved else f"after epoch {epoch}"
    if saved == 0:
        return f"interrupted {where}, before the first checkpoint; run the same command again to start over"
    again = "the same command" if cfg.resume else "the same command plus --resume"
    return f"interrupted {where}; the last checkpoint is {last_path} (epoch {saved}); continue with {again}"


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_args(argv)
        # Here too, before the launcher starts any process: a refusal is one line, not one per process, and a group
        # restarted by --max-restarts may take the run in OUT as its own (resume_from's restarted). Not under
        # torchrun, where every process runs main(): there start() decides, all ranks together (one leaving alone
        # would leave the others waiting for it).
        if not distributed.launched_by_torchrun():
            if problem := out_problem(cfg):
                raise SystemExit(f"error: {problem}")
            resume_from(cfg)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    try:  # clips the model cannot take (DenseNet's transitions need 15 frames): one line now, not a traceback later
        check_clip(cfg.sample_duration, cfg.sample_size, **model_kwargs(cfg, n_classes=1))
    except ValueError as e:
        raise SystemExit(f"error: {e} (--sample-duration, --sample-size)") from None
    distributed.launch(train, cfg, cfg.world_size(), use_cuda=cfg.device == "cuda",
                       user_errors=(CheckpointError, DatasetError), max_restarts=cfg.max_restarts)


if __name__ == "__main__":
    main()
