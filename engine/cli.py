"""What train.py and evaluate.py share about their command lines: the allowed range of every numeric flag, and
error messages that name flags (--skip-bad) where the library they come from names its keyword arguments."""

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
