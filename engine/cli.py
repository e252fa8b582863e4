"""What train.py and evaluate.py share about their command lines: the loader and device flags, the allowed range
of every numeric flag, and error messages that name flags (--skip-bad) where the library they come from names
its keyword arguments."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


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
    """{dest: flag} for every int or float option of parser ("num_threads": "--num-threads")."""
    # argparse has no public list of its actions; _actions is the one every introspecting tool reads
    return {a.dest: a.option_strings[0] for a in parser._actions if a.type in (int, float)}


def check_numeric_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        ranges: dict[str, Range]) -> None:
    """parser.error (exit status 2, one line naming the flag and its range) for the first value out of range.
    Flags left at None (optional, not given) are not checked."""
    flags = numeric_flags(parser)
    assert set(flags) == set(ranges), f"numeric flags without a range: {set(flags) ^ set(ranges)}"
    for dest, flag in flags.items():
        value = getattr(args, dest)
        if value is not None and value not in ranges[dest]:
            finite = "" if math.isfinite(value) else "a finite number "
            parser.error(f"{flag} {_number(value)}: must be {finite}{ranges[dest]}")


# ---- the flags both entry points have ------------------------------------------------------------------------

LOADER_RANGES = {"num_threads": Range(min=0, why="0: decord decodes in the main process; DALI needs >= 1")}
DEVICE_RANGES = {"gpus": Range(min=1), "nproc": Range(min=1)}


def add_loader_flags(group: argparse._ActionsContainer) -> None:
    """--backend, --num-threads, --skip-bad: pipeline.build_loader's backend, num_threads and skip_bad."""
    group.add_argument("--backend", choices=("dali", "decord", "nvdec"), default="dali")
    group.add_argument("--num-threads", "--workers", type=int, default=4, help="DALI threads / decord workers")
    group.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                       help="skip (and count) unreadable videos instead of stopping")


def add_device_flags(group: argparse._ActionsContainer) -> None:
    """--device, --gpus, --nproc, --amp; resolve_device_flags turns them into a device and a precision."""
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    group.add_argument("--gpus", type=int, default=1, help="GPUs on this node, one process each (DDP, NCCL)")
    group.add_argument("--nproc", type=int, default=1, help="CPU processes (DDP over gloo) on a machine without GPU")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (GPU: on)")


def resolve_device_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, bool]:
    """(device "cuda" or "cpu", bf16 autocast) from the flags of add_loader_flags and add_device_flags;
    parser.error (one line with a hint) when they contradict each other or the machine."""
    import torch

    if args.num_threads == 0 and args.backend == "dali":
        parser.error("--num-threads 0: DALI needs >= 1 (0, decoding in the main process, is for --backend decord)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    problem = None
    if device == "cuda" and not torch.cuda.is_available():
        problem = "--device cuda but torch sees no GPU"
    elif device == "cpu" and args.gpus > 1:
        problem = f"--gpus {args.gpus} but no GPU is used; HINT: --nproc {args.gpus} runs CPU processes"
    elif device == "cuda" and args.nproc > 1:
        problem = "--nproc is for CPU processes; HINT: use --gpus N on a GPU machine"
    elif device == "cuda" and args.gpus > torch.cuda.device_count():
        problem = f"--gpus {args.gpus} but only {torch.cuda.device_count()} GPUs are visible"
    if problem:
        parser.error(problem)
    return device, device == "cuda" if args.amp is None else args.amp


def as_flag(name: str, value: object) -> str:
    """A model.build_model keyword argument as the flag that sets it: ("widen_factor", 0.5) -> "--widen-factor
    0.5", ("no_max_pool", False) -> "--max-pool"."""
    if name == "no_max_pool":
        return "--no-max-pool" if value else "--max-pool"
    return f"--{name.replace('_', '-')} {value}"


# The loader's and load_weights' messages end in hints for Python callers; on the command line the same hint
# is a flag. Keyed by the exact phrases of pipeline/loader.py and model/checkpoint.py.
_API_HINTS_AS_FLAGS = {
    "or pass skip_bad=True": "or add --skip-bad",
    "lower batch_size": "lower --batch-size",
    "use backend='decord' or device='gpu'": "use --backend decord, or a GPU",
    " (strict_head=True)": "",
    "Build the model with the checkpoint's arch, shortcut type and widen_factor.":
        "HINT: give --arch, --shortcut and --widen-factor of the checkpoint (and --conv1-t-size, "
        "--conv1-t-stride, --no-max-pool if it was built with them).",
}


def with_flag_hints(message: str) -> str:
    """message with the library's keyword-argument hints replaced by the command-line flags that set them."""
    for api, flag in _API_HINTS_AS_FLAGS.items():
        message = message.replace(api, flag)
    return message
