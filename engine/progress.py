"""Console output shared by the entry points: only rank 0 prints, logs stay one line per event."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_console(is_main: bool) -> Console:
    """A console that is silent on ranks other than 0 and does not wrap long lines when writing to a file or pipe
    (rich would wrap at 80 columns there)."""
    width = None if sys.stdout.isatty() else 200
    return Console(quiet=not is_main, soft_wrap=True, width=width)


class StepBar:
    """A progress bar over the steps of one pass, with a free-text `stats` field.

    On a terminal rich redraws it in place. Into a file or pipe rich cannot redraw, so it prints the final bar
    once, and StepBar adds a plain line every `every_s` seconds meanwhile, so long epochs still show progress.
    """

    def __init__(self, console: Console, label: str, total: int, every_s: float = 30.0) -> None:
        self.console, self.label, self.total, self.every_s = console, label, total, every_s
        self.progress = Progress(
            TextColumn(label), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console, disable=console.quiet,
        )
        self.task = self.progress.add_task(label, total=total, stats="")
        self.last_line = time.monotonic()

    def __enter__(self) -> StepBar:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, completed: int, stats: str = "") -> None:
        self.progress.update(self.task, completed=completed, stats=stats)
        now = time.monotonic()
        if not self.console.is_terminal and completed < self.total and now - self.last_line >= self.every_s:
            self.console.print(f"{self.label} {completed}/{self.total} {stats}")
            self.last_line = now
