"""What train.py, evaluate.py and infer.py share about their command lines: the loader, device, model-description,
clip and normalisation flags, the allowed range of every numeric flag, error messages that name flags
(--skip-bad) where the library they come from names its keyword arguments, the check that --out can be written
(before any work), and the config as printed at start."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.normalisation import Normalisation


@dataclass(frozen=True)
class Range:
    """The values a numeric flag allows: x >= min, x > above, x < below (each when given); never NaN or inf."""

    min: float | None = None
    above: float | None = None
    below: float | None = None
    why: str = ""  # said after the range, e.g. "conv1 needs one of its 64 channels"

    def __contains__(self, x: float) -> bool:
        return (math.isfinite(x) and (self.min is None or x >= self.min)
                and (self.above is None or x > self.above) and (self.below is None or x < self.below))

    def __str__(self) -> str:
        bounds = [f"{op} {_number(v)}" for op, v in ((">=", self.min), (">", self.above), ("<", self.below))
                  if v is not None]
        return " and ".join(bounds) + (f" ({self.why})" if self.why else "")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def numeric_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{dest: flag} for every int or float option of parser ("workers": "--workers")."""
    # argparse has no public list of its actions; _actions is the one every introspecting tool reads
    return {a.dest: a.option_strings[0] for a in parser._actions if a.type in (int, float)}


def check_numeric_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        ranges: dict[str, Range]) -> None:
    """parser.error (exit status 2, one line naming the flag and its range) for the first value out of range
    (of a flag with several values, e.g. --std-values R G B: the first such value). Flags left at None
    (optional, not given) are not checked."""
    flags = numeric_flags(parser)
    assert set(flags) == set(ranges), f"numeric flags without a range: {set(flags) ^ set(ranges)}"
    for dest, flag in flags.items():
        values = getattr(args, dest)
        for value in values if isinstance(values, list | tuple) else [values]:
            if value is not None and value not in ranges[dest]:
                finite = "" if math.isfinite(value) else "a finite number "
                parser.error(f"{flag} {_number(value)}: must be {finite}{ranges[dest]}".rstrip())


# ---- loader and device flags (train.py, evaluate.py; infer.py: the device flags without processes) ------------

@dataclass(frozen=True)
class LoaderFlags:
    """The loader flags of train.py and evaluate.py (add_loader_flags) and their defaults, written here only: their
    configs' fields take LOADER_DEFAULTS' values."""

    backend: str = "auto"  # loader_backend: pyav on the CPU, dali on a GPU
    workers: int = 4
    skip_bad: bool = False


LOADER_DEFAULTS = LoaderFlags()
LOADER_RANGES = {"workers": Range(min=0, why="0: decord decodes in the main process; the other backends need >= 1")}
DEVICE_RANGES = {"gpus": Range(min=1), "nproc": Range(min=1)}


def add_loader_flags(group: argparse._ActionsContainer) -> None:
    """--backend, --workers, --skip-bad: pipeline.build_loader's backend (loader_backend resolves "auto"), workers
    and skip_bad."""
    from pipeline.base import BACKENDS

    group.add_argument("--backend", choices=("auto", *BACKENDS), default=LOADER_DEFAULTS.backend,
                       help="auto: pyav on the CPU, dali on a GPU")
    group.add_argument("--workers", type=int, default=LOADER_DEFAULTS.workers,
                       help="decoding threads (dali, nvdec, pyav), or decord's worker processes (0: in this process)")
    group.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=LOADER_DEFAULTS.skip_bad,
                       help="skip (and count) unreadable videos instead of stopping")


def loader_backend(name: str, on_gpu: bool) -> str:
    """The backend --backend NAME means: "auto" is pyav on the CPU (the fewest CPU-seconds per clip of the CPU
    loaders: benchmarks/RESULTS.md) and dali on a GPU (until the GPU check has measured nvdec end to end)."""
    if name != "auto":
        return name
    return "dali" if on_gpu else "pyav"


def loader_options(cfg: LoaderFlags, d: Any, batch_size: int) -> dict[str, Any]:
    """pipeline.build_loader's keyword arguments for this process (d: engine.distributed.Dist) from a config with
    the loader flags: the backend ("auto" resolved: loader_backend), its share of the global batch_size, its
    shard, its device (a GPU: decode there, deliver to cuda:LOCAL_RANK), a progress bar on rank 0 only."""
    on_gpu = d.device.type == "cuda"
    return dict(backend=loader_backend(cfg.backend, on_gpu), workers=cfg.workers, skip_bad=cfg.skip_bad,
                device="gpu" if on_gpu else "cpu", device_id=d.local_rank if on_gpu else None,
                batch_size=batch_size // d.world_size, rank=d.rank, world_size=d.world_size, progress=d.is_main)


def add_device_flags(group: argparse._ActionsContainer, processes: bool = True) -> None:
    """--device, --gpus, --nproc (with processes; infer.py runs one), --amp; resolve_device_flags turns them into
    a device and a precision."""
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    if processes:
        group.add_argument("--gpus", type=int, default=1, help="GPUs on this node, one process each (DDP, NCCL)")
        group.add_argument("--nproc", type=int, default=1,
                           help="CPU processes (DDP over gloo) on a machine without GPU")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (GPU: on)")


def resolve_device_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, bool]:
    """(device "cuda" or "cpu", bf16 autocast) from the flags of add_loader_flags and add_device_flags;
    parser.error (one line with a hint) when they contradict each other or the machine."""
    import torch

    if getattr(args, "workers", 1) == 0 and getattr(args, "backend", "decord") != "decord":
        parser.error(f"--workers 0: --backend {args.backend} needs >= 1 (0, decoding in the main process, is for "
                     "--backend decord)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpus, nproc = getattr(args, "gpus", 1), getattr(args, "nproc", 1)  # add_device_flags(processes=False): 1
    problem = None
    if device == "cuda" and not torch.cuda.is_available():
        problem = "--device cuda but torch sees no GPU"
    elif device == "cpu" and gpus > 1:
        problem = f"--gpus {gpus} but no GPU is used; HINT: --nproc {gpus} runs CPU processes"
    elif device == "cuda" and nproc > 1:
        problem = "--nproc is for CPU processes; HINT: use --gpus N on a GPU machine"
    elif device == "cuda" and gpus > torch.cuda.device_count():
        problem = f"--gpus {gpus} but only {torch.cuda.device_count()} GPUs are visible"
    elif device == "cpu" and getattr(args, "backend", "") == "nvdec":
        problem = "--backend nvdec decodes on the GPU; on the CPU use --backend pyav, dali or decord"
    if problem:
        parser.error(problem)
    return device, device == "cuda" if args.amp is None else args.amp


# ---- describing a model and its clips (evaluate.py, infer.py; train.py has its own defaults) -----------------

# The model flags, as model.build_model's keyword arguments: they describe a checkpoint without a run record
# (3D-ResNets-PyTorch's); ours describe themselves, and the flags must agree with them.
MODEL_FLAGS = ("arch", "shortcut", "n_classes", "widen_factor", "conv1_t_size", "conv1_t_stride", "no_max_pool",
               "cardinality", "wide_k")
MODEL_RANGES = {
    **{name: Range(min=1) for name in ("n_classes", "conv1_t_size", "conv1_t_stride", "cardinality", "wide_k")},
    "widen_factor": Range(min=1 / 64, why="conv1 needs one of its 64 channels"),
}
NORM_RANGES = {"value_scale": Range(above=0), "mean_values": Range(), "std_values": Range(above=0)}
CLIP_RANGES = {"sample_duration": Range(min=1), "sample_size": Range(min=1), **NORM_RANGES}


@dataclass(frozen=True, kw_only=True)
class CheckpointOverrides:
    """What add_model_flags and add_clip_flags give evaluate.py's and infer.py's configs: None = the checkpoint's
    (ours describe themselves, and these must agree with them), else build_model's and 3D-ResNets-PyTorch's
    defaults."""

    arch: str | None = None
    shortcut: str | None = None
    n_classes: int | None = None
    widen_factor: float | None = None
    conv1_t_size: int | None = None
    conv1_t_stride: int | None = None
    no_max_pool: bool | None = None
    cardinality: int | None = None
    wide_k: int | None = None
    sample_duration: int | None = None
    sample_size: int | None = None
    normalisation: Normalisation | None = None


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--arch, --shortcut, --n-classes, --widen-factor, --conv1-t-size, --conv1-t-stride, --[no-]max-pool,
    --cardinality, --wide-k, all default None (= the checkpoint's, else build_model's defaults), in their own
    group."""
    from model import ARCHS, ARCHS_HELP

    g = parser.add_argument_group("the model, for checkpoints without a run record (3D-ResNets-PyTorch's); ours "
                                  "describe themselves, and these flags must agree with them")
    g.add_argument("--arch", choices=ARCHS, metavar="ARCH", help=f"{ARCHS_HELP}; default: the checkpoint's 'arch' "
                   "entry")
    g.add_argument("--shortcut", choices=("A", "B"),
                   help="default A (3D-ResNets-PyTorch's checkpoints: B, but resnet-18/34-kinetics.pth)")
    g.add_argument("--n-classes", type=int, help="default: the size of the checkpoint's fc layer")
    g.add_argument("--widen-factor", type=float, help="default 1")
    g.add_argument("--conv1-t-size", type=int, help="conv1's temporal kernel size, default 7")
    g.add_argument("--conv1-t-stride", type=int, help="conv1's temporal stride, default 1")
    g.add_argument("--no-max-pool", action="store_true", default=None, help="no max pool after conv1")
    g.add_argument("--max-pool", dest="no_max_pool", action="store_false", default=None, help="(the default)")
    add_family_flags(g)


def add_family_flags(group: argparse._ActionsContainer) -> None:
    """--cardinality (ResNeXt's groups) and --wide-k (Wide ResNet's stage widening): the model flags that only one
    family takes; train.py's model group has them too."""
    group.add_argument("--cardinality", type=int, help="resnext-*: groups of each block's 3x3x3 conv, default 32")
    group.add_argument("--wide-k", type=int,
                       help="wideresnet-*: stage width factor k, default 2 (3D-ResNets-PyTorch's master branch "
                            "widens the stem too: its k is --wide-k 1 --widen-factor k)")


def add_clip_flags(parser: argparse.ArgumentParser) -> None:
    """--sample-duration, --sample-size and the normalisation flags, default None (= the checkpoint's, else
    3D-ResNets-PyTorch's defaults), in a group "clips"."""
    g = parser.add_argument_group("clips (override the checkpoint's)")
    g.add_argument("--sample-duration", type=int, help="default: the checkpoint's, else 16")
    g.add_argument("--sample-size", type=int, help="default: the checkpoint's, else 112")
    add_normalisation_flags(g, "the checkpoint's, else activitynet (3D-ResNets-PyTorch's 2017 default)")


def add_normalisation_flags(group: argparse._ActionsContainer, default: str) -> None:
    """--norm PRESET, or a custom --value-scale X --mean-values R G B [--std-values R G B]; resolve_normalisation
    turns them into a Normalisation. default: what the help says when none is given."""
    from pipeline.normalisation import PRESETS

    group.add_argument("--norm", choices=tuple(PRESETS), default=None,
                       help=f"pixel normalisation preset (pipeline/normalisation.py); default: {default}")
    group.add_argument("--value-scale", type=float, help="custom normalisation: what a 255 pixel is worth (1 or 255)")
    group.add_argument("--mean-values", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="custom normalisation: the mean subtracted, on the value scale")
    group.add_argument("--std-values", type=float, nargs=3, metavar=("R", "G", "B"),
                       help="custom normalisation: the std divided by, on the value scale (default 1 1 1)")


def resolve_normalisation(parser: argparse.ArgumentParser, args: argparse.Namespace):  # -> Normalisation | None
    """The Normalisation the flags of add_normalisation_flags give, None when none was given; parser.error
    (one line) when a preset and custom values are both given, or custom values are incomplete."""
    from pipeline.normalisation import Normalisation

    custom = {k: getattr(args, k) for k in ("value_scale", "mean_values", "std_values")
              if getattr(args, k) is not None}
    if args.norm is not None:
        if custom:
            parser.error(f"--norm {args.norm} and {as_flag(next(iter(custom)), '').strip()}: give a preset or "
                         "custom values, not both")
        return Normalisation.named(args.norm)
    if not custom:
        return None
    if args.value_scale is None or args.mean_values is None:
        parser.error("a custom normalisation needs --value-scale and --mean-values (--std-values defaults to "
                     "1 1 1); HINT: --value-scale 1 --mean-values 0.4345 0.4051 0.3775 --std-values 0.2768 "
                     "0.2713 0.2737 is --norm kinetics-0-1")
    return Normalisation(mean=tuple(args.mean_values), std=tuple(args.std_values or (1.0, 1.0, 1.0)),
                         value_scale=args.value_scale)


def as_flag(name: str, value: object) -> str:
    """A model.build_model keyword argument as the flag that sets it: ("widen_factor", 0.5) -> "--widen-factor
    0.5", ("no_max_pool", False) -> "--max-pool"."""
    if name == "no_max_pool":
        return "--no-max-pool" if value else "--max-pool"
    return f"--{name.replace('_', '-')} {value}"


def model_arg_message(error) -> str:  # error: model.ModelArgError
    """A build_model argument that does not fit the architecture, as its flag: "--cardinality 16: resnet-50 has no
    cardinality to set (only resnext-* do); leave it at 32"."""
    return f"{as_flag(error.name, error.value)}: {error.why}"


# The loader's and load_weights' messages end in hints for Python callers; on the command line the same hint
# is a flag. Keyed by the exact phrases of pipeline/base.py and model/checkpoint.py.
_API_HINTS_AS_FLAGS = {
    "or pass skip_bad=True": "or add --skip-bad",
    "lower batch_size": "lower --batch-size",
    "use backend='decord' or device='gpu'": "use --backend decord, or a GPU",
    " (strict_head=True)": "",
    "Build the model with the checkpoint's arch, shortcut type and widen_factor.":
        "HINT: give --arch, --shortcut and --widen-factor of the checkpoint (and --conv1-t-size, "
        "--conv1-t-stride, --no-max-pool, --cardinality, --wide-k if it was built with them).",
}


def with_flag_hints(message: str) -> str:
    """message with the library's keyword-argument hints replaced by the command-line flags that set them."""
    for api, flag in _API_HINTS_AS_FLAGS.items():
        message = message.replace(api, flag)
    return message


# ---- the output folder, and the config as printed ----------------------------------------------------------------


def unwritable_folder(folder: Path, flag: str = "--out") -> str | None:
    """None when files can be created in folder, else one line saying why (naming flag and folder, with a hint).

    Checked for real before any work: the folder and any missing parents are made, a file is created and removed
    in it, and what the check made is removed again (a run stopped later leaves nothing behind). os.access would
    miss read-only mounts on some file systems and ACLs on others.
    """
    made: list[Path] = []
    try:
        for p in reversed([folder, *folder.parents]):
            if p.exists() and not p.is_dir():
                return f"{flag} {folder}: {p} is a file, not a folder; HINT: choose another {flag}"
            if not p.is_dir():
                p.mkdir()
                made.append(p)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return (f"{flag} {folder}: cannot write there ({e.strerror or e}); HINT: choose a folder you can write to "
                "(it is created when missing)")
    finally:
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:  # something else wrote there meanwhile: leave it
                pass
    return None


# Config fields not printed at start: testing hooks (config.json and checkpoints keep every field).
NOT_SHOWN = ("inject_nan_step",)


def shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """config (a dataclass config as a dict) as printed at start: without testing hooks, and without the process
    count of the device not used (gpus on the CPU, nproc on CUDA)."""
    unused = {"cpu": "gpus", "cuda": "nproc"}.get(config.get("device", ""))
    return {k: v for k, v in config.items() if k not in NOT_SHOWN and k != unused}
