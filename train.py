"""Train a 3D ResNet (Hara, Kataoka, Satoh, ICCV 2017 workshops) on a prepare_data.py output folder, with the
paper's recipe.

  python train.py --data DST --out runs/r34 --arch resnet-34           # one GPU (or the CPU if none)
  python train.py --data DST --out runs/r34 --arch resnet-34 --gpus 4  # 4 GPUs on this node, DDP over NCCL
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      train.py --data DST --out runs/r34 --arch resnet-34              # multi-node: same line on every node
  python train.py --data DST --out runs/tiny --nproc 2                 # 2 CPU processes, DDP over gloo
  python train.py --data DST --out runs/r34 --resume                   # continue from checkpoints/last.pt

Writes RUN_DIR/config.json, RUN_DIR/metrics.csv (one row per epoch), RUN_DIR/curves.png and
RUN_DIR/checkpoints/{last,best}.pt (see engine/checkpoint.py for their contents). The learning rate follows
the paper's plateau rule (engine/schedule.py). --resume refuses settings that would make another run
(DEFINES_THE_RUN); Ctrl-C stops with one line saying how to continue (exit status 130).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed
from engine.checkpoint import (
    PARAMETER_FREE_ARGS,
    CheckpointError,
    RunRecord,
    TrainingState,
    check_compatible,
    load_training_checkpoint,
    save_atomic,
)
from engine.cli import (
    DEVICE_RANGES,
    LOADER_RANGES,
    NORM_RANGES,
    Range,
    add_device_flags,
    add_loader_flags,
    add_normalisation_flags,
    as_flag,
    check_numeric_flags,
    loader_backend,
    resolve_device_flags,
    resolve_normalisation,
)
from engine.distributed import Dist, Interrupted, all_reduce_sum
from engine.plots import plot_curves
from engine.progress import StepBar, make_console
from engine.schedule import PlateauSchedule
from engine.step import forward, memory_format, to_device, train_step
from model import ARCHS, build_model, load_weights, read_checkpoint
from pipeline import DatasetError, LoaderBase, build_loader
from pipeline.atomic import atomic_write
from pipeline.normalisation import PRESETS, Normalisation

METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                   "epoch_seconds", "clips_per_s", "data_wait_share")  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    # model (model.build_model arguments)
    arch: str = "resnet-18"
    shortcut: str = "A"
    widen_factor: float = 1.0
    conv1_t_size: int = 7
    conv1_t_stride: int = 1
    no_max_pool: bool = False
    # input (the loader's sampling; stored with every checkpoint)
    sample_duration: int = 16
    sample_size: int = 112
    normalisation: Normalisation = PRESETS["kinetics"]  # --norm, or --value-scale/--mean-values/--std-values
    backend: str = "auto"  # engine.cli.loader_backend: pyav on the CPU, dali on a GPU
    num_threads: int = 4
    skip_bad: bool = False
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
    amp: bool = False  # bf16 autocast; default on for CUDA
    channels_last: bool = False  # channels_last_3d; default on for CUDA
    compile: bool = False
    log_every: int = 10  # steps between synchronising log points on the GPU (the CPU checks every step)
    inject_nan_step: int = -1  # testing hook: make the loss inf at this global step (0-based); -1 = never

    def world_size(self) -> int:
        return distributed.world_size(self.device, self.gpus, self.nproc)

    def last_checkpoint(self) -> Path:
        """OUT/checkpoints/last.pt: where the run saves after every epoch, and what --resume continues."""
        return Path(self.out) / "checkpoints" / "last.pt"

    def resuming(self) -> bool:
        """--resume with a checkpoint to continue: the weights come from it, not from --pretrained."""
        return self.resume and self.last_checkpoint().exists()


# --resume continues a run as it was defined. These settings define it: changing one would make a different run
# than the checkpoint's, so --resume refuses and lists them. The others only say how it executes or how long it
# goes on, and may change on --resume (config.json and the next checkpoints record the new values): threads,
# backend, processes and devices (the global batch stays), precision, logging, and --epochs / --lr-reductions
# to extend or shorten it.
DEFINES_THE_RUN = ("arch", "shortcut", "widen_factor", "conv1_t_size", "conv1_t_stride", "no_max_pool",
                   "sample_duration", "sample_size", "normalisation", "batch_size", "lr", "momentum",
                   "weight_decay", "lr_patience", "seed", "pretrained", "ft_begin")  # fmt: skip
MAY_CHANGE_ON_RESUME = ("data", "out", "backend", "num_threads", "skip_bad", "epochs", "lr_reductions", "resume",
                        "device", "gpus", "nproc", "amp", "channels_last", "compile", "log_every",
                        "inject_nan_step")  # fmt: skip


def resume_differences(saved_config: dict, cfg: TrainConfig) -> list[str]:
    """'--lr 0.02 (checkpoint: 0.01)', '--no-max-pool (checkpoint: --max-pool)' for each setting in
    DEFINES_THE_RUN that cfg changes. A setting missing from an older checkpoint's config had its default then;
    the normalisation was --mean NAME."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    defaults["normalisation"] = PRESETS.get(saved_config.get("mean", "kinetics"))
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


# Fields that parse_args works out from flags (or that have no default): the parser's own defaults are None,
# "auto" or required.
RESOLVED_IN_PARSE_ARGS = ("data", "out", "normalisation", "device", "amp", "channels_last")
# Every numeric flag's allowed values; parse_args rejects the rest with a one-line usage error.
RANGES = {
    **LOADER_RANGES, **DEVICE_RANGES, **NORM_RANGES,
    **{name: Range(min=1) for name in ("sample_duration", "sample_size", "conv1_t_size", "conv1_t_stride", "epochs",
                                       "batch_size", "log_every")},
    "widen_factor": Range(min=1 / 64, why="conv1 needs one of its 64 channels"),
    "lr": Range(above=0),
    "momentum": Range(min=0, below=1),
    "weight_decay": Range(min=0),
    "lr_patience": Range(min=0),
    "lr_reductions": Range(min=0),
    "seed": Range(min=0, below=2**63, why="DALI's seed is an int64"),
    "inject_nan_step": Range(min=-1),
}


def build_parser() -> argparse.ArgumentParser:
    """The flags; their defaults are TrainConfig's (set once, at the end), but for those parse_args resolves."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="a prepare_data.py output folder (train.csv, val.csv, ...)")
    g.add_argument("--out", required=True, help="run folder for checkpoints, metrics and plots")
    add_loader_flags(g)
    g.add_argument("--sample-duration", type=int, help="frames per clip")
    g.add_argument("--sample-size", type=int, help="clip height and width in pixels")
    add_normalisation_flags(g, "kinetics (minus the Kinetics mean, 0-255 scale)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS)
    g.add_argument("--shortcut", choices=("A", "B"), help="A: zero-padding (the paper's), B: conv")
    g.add_argument("--widen-factor", type=float, help="channel multiplier (small CPU models)")
    g.add_argument("--conv1-t-size", type=int)
    g.add_argument("--conv1-t-stride", type=int)
    g.add_argument("--no-max-pool", action="store_true", help="no max pool after conv1")
    g.add_argument("--max-pool", dest="no_max_pool", action="store_false", help="(the default)")
    g.add_argument("--pretrained", help="initial weights: our checkpoint or a 3D-ResNets-PyTorch one")
    g.add_argument("--ft-begin", help="train from this module on (e.g. layer4 or fc), freeze the ones before")
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
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="(GPU: on)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")
    g.add_argument("--log-every", type=int, help="steps between log points on the GPU")
    g.add_argument("--inject-nan-step", type=int, help=argparse.SUPPRESS)  # testing hook
    p.set_defaults(**{f.name: f.default for f in fields(TrainConfig) if f.name not in RESOLVED_IN_PARSE_ARGS})
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = build_parser()
    a = p.parse_args(argv)
    check_numeric_flags(p, a, RANGES)
    device, amp = resolve_device_flags(p, a)
    skip = ("device", "amp", "channels_last", "norm", "value_scale", "mean_values", "std_values")
    cfg = TrainConfig(**{k: v for k, v in vars(a).items() if k not in skip},
                      normalisation=resolve_normalisation(p, a) or TrainConfig.normalisation, device=device, amp=amp,
                      channels_last=device == "cuda" if a.channels_last is None else a.channels_last)
    world, data = cfg.world_size(), Path(cfg.data)
    checks = [
        (cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size} does not split evenly over {world} processes"),
        ((data / "train.csv").is_file(), f"{data}/train.csv not found; HINT: prepare_data.py SRC --out {data}"),
        ((data / "val.csv").is_file(), f"{data}/val.csv not found: the lr schedule needs a validation split"),
        (cfg.pretrained is None or cfg.resuming() or Path(cfg.pretrained).is_file(),
         f"--pretrained {cfg.pretrained}: no such file"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return cfg


def setup_model(cfg: TrainConfig, n_classes: int, d: Dist) -> tuple[nn.Module, dict, list[nn.Module]]:
    """(raw model on d.device, build_model kwargs, frozen modules). Same seed on every rank: same weights; those
    of --pretrained unless resuming (last.pt's replace them)."""
    model_args = dict(arch=cfg.arch, n_classes=n_classes, shortcut=cfg.shortcut, conv1_t_size=cfg.conv1_t_size,
                      conv1_t_stride=cfg.conv1_t_stride, no_max_pool=cfg.no_max_pool,
                      widen_factor=cfg.widen_factor)
    torch.manual_seed(cfg.seed)
    raw = build_model(**model_args)
    if cfg.pretrained and not cfg.resuming():  # main() checked it first (check_pretrained)
        load_weights(raw, cfg.pretrained, verbose=d.is_main)  # replaces the head when the class count differs
    frozen = []
    if cfg.ft_begin:
        names = [name for name, _ in raw.named_children()]
        if cfg.ft_begin not in names:
            raise SystemExit(f"error: --ft-begin {cfg.ft_begin}: not a module of the model; one of {names}")
        for name, child in raw.named_children():
            if name == cfg.ft_begin:
                break
            child.requires_grad_(False)
            frozen.append(child)
    return raw.to(d.device, memory_format=memory_format(cfg.channels_last)), model_args, frozen


def check_pretrained(cfg: TrainConfig) -> None:
    """CheckpointError when --pretrained is our checkpoint and its run record says that its weights, loaded into
    this run's model, would compute something else (a model argument without parameters differs)."""
    _, meta = read_checkpoint(cfg.pretrained)
    record = RunRecord.from_metadata(meta, cfg.pretrained)
    if record is not None:
        record.check_same_function({k: getattr(cfg, k) for k in PARAMETER_FREE_ARGS}, cfg.pretrained)


class NonFiniteLoss(RuntimeError):
    pass


def train_one_epoch(cfg: TrainConfig, d: Dist, net: nn.Module, frozen: list[nn.Module], loader: LoaderBase,
                    optimizer: torch.optim.Optimizer, epoch: int, step0: int, bar: StepBar | None) -> dict:
    """One pass over the training loader (step0: global index of its first step); the epoch's metrics summed
    over ranks: train_loss, train_acc, epoch_seconds, clips_per_s, data_wait_share."""
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


def resume_from(cfg: TrainConfig) -> TrainingState | None:
    """The checkpoint this run continues (None: a new run). CheckpointError when OUT holds a run and --resume is
    not given, or its checkpoint is unusable or defines another run (DEFINES_THE_RUN)."""
    last_path = cfg.last_checkpoint()
    if not last_path.exists():
        return None
    if not cfg.resume:
        raise CheckpointError(f"{cfg.out} already holds a run; HINT: add --resume to continue it, or choose "
                              "another --out")
    resumed = load_training_checkpoint(last_path)
    if diffs := resume_differences(resumed.config, cfg):
        raise CheckpointError(f"{last_path}: --resume continues the run as it was defined, but "
                              f"{', '.join(diffs)}; HINT: drop these flags to continue it, or start a new run with "
                              "another --out")
    return resumed


def train(cfg: TrainConfig, d: Dist) -> None:
    console = make_console(d.is_main)
    out, last_path = Path(cfg.out), cfg.last_checkpoint()
    ckpt_dir = last_path.parent
    resumed = resume_from(cfg)
    on_gpu = d.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv3d kernels
    distributed.share_cpu_threads(d)
    loader_args = dict(backend=loader_backend(cfg.backend, on_gpu), device="gpu" if on_gpu else "cpu",
                       batch_size=cfg.batch_size // d.world_size, rank=d.rank, world_size=d.world_size,
                       seed=cfg.seed, num_threads=cfg.num_threads, sample_duration=cfg.sample_duration,
                       sample_size=cfg.sample_size, normalisation=cfg.normalisation, skip_bad=cfg.skip_bad,
                       device_id=d.local_rank if on_gpu else None, progress=d.is_main)
    train_loader = build_loader(Path(cfg.data), split="train", mode="train", **loader_args)
    val_loader = build_loader(Path(cfg.data), split="val", mode="val", **loader_args)
    class_names = tuple(train_loader.class_names)

    raw, model_args, frozen = setup_model(cfg, len(class_names), d)
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
    elif cfg.resume:
        console.print(f"[yellow]--resume: no {last_path} yet, starting from scratch")

    config = json.loads(json.dumps(asdict(cfg)))  # plain: the checkpoint's config is config.json's
    net = torch.compile(raw) if cfg.compile else raw  # validation uses net: no DDP collectives there
    train_net = net
    if d.is_distributed:
        train_net = nn.parallel.DistributedDataParallel(net, device_ids=[d.local_rank] if on_gpu else None)

    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    n_params, n_trained = (sum(p.numel() for p in ps) / 1e6 for ps in (raw.parameters(), params))
    console.print(f"config: {json.dumps(config)}")
    console.print(f"{cfg.arch}: {n_params:.2f} M parameters ({n_trained:.2f} M trained), {len(class_names)} "
                  f"classes | {d.world_size} process(es) on {d.device.type}, batch {cfg.batch_size} = "
                  f"{d.world_size} x {cfg.batch_size // d.world_size} | {len(train_loader.videos)} train videos, "
                  f"{len(train_loader)} steps/epoch | {len(val_loader.videos)} val videos | loader "
                  f"{loader_args['backend']} | bf16 {cfg.amp}")

    saved = epoch  # the epoch that last.pt holds (0: none yet)
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
                                          (epoch - 1) * len(train_loader), bar)
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
            if d.is_main:  # scaler: None, bf16 autocast needs no loss scaling
                state = TrainingState(model=raw.state_dict(), optimizer=optimizer.state_dict(), scaler=None,
                                      epoch=epoch, config=config, record=record, history=history)
                save_atomic(state, last_path)
                saved = epoch
                if is_best:
                    save_atomic(state, ckpt_dir / "best.pt")
                write_metrics_csv(history, out / "metrics.csv")
                plot_curves(history, out / "curves.png", title=f"{cfg.arch} on {cfg.data}")
    except BaseException:  # Ctrl-C: KeyboardInterrupt, or what the C call it interrupted raised (torch.save)
        if not distributed.interrupted():
            raise
        raise Interrupted(interrupted_message(cfg, last_path, epoch, saved)) from None
    finally:
        train_loader.close()  # DALI threads / decord worker processes end here, also on errors and Ctrl-C
        val_loader.close()
    why = (f"the val loss saturated at lr {verdict.lr:.3g}, after {verdict.divisions} divisions by 10"
           if verdict.stop else f"--epochs {cfg.epochs}")
    best_acc = max(history, key=selection_key)["val_acc"] if history else float("nan")
    console.print(f"done after {epoch} epochs ({why}); best val clip accuracy {best_acc:.3f}; "
                  f"checkpoints in {ckpt_dir}")


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
    cfg = parse_args(argv)
    try:  # before any process is spawned: a refusal is one line, not one per process (train() loads it again)
        resume_from(cfg)
        if cfg.pretrained and not cfg.resuming():
            check_pretrained(cfg)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    distributed.launch(train, cfg, cfg.world_size(), use_cuda=cfg.device == "cuda",
                       user_errors=(CheckpointError, DatasetError))


if __name__ == "__main__":
    main()
