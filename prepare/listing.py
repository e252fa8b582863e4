"""What a layout reader (layouts.py, ucf_hmdb.py, frames.py) gives: the source videos of a raw dataset and where
their rows go. A module of its own so that the readers and the dispatch in layouts.py import it, not each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv",
                    ".wmv"}
UNLABELLED = "_unlabelled"  # output folder of videos without a label (label -1, label_name "")


class LayoutError(ValueError):
    """SRC does not look like any supported dataset layout; the message says what was expected."""


@dataclass(frozen=True)
class Segment:
    """An annotated part of an untrimmed video, in seconds."""

    start_s: float
    end_s: float
    label_name: str


@dataclass(frozen=True)
class Source:
    """One source video and where its rows go. segments=None: a trimmed video, one row for the whole file."""

    video_id: str
    path: Path  # a video file, or (frame_rate set) a folder of JPEG frames
    split: str  # its folder under videos/; "" where a video belongs to several splits (see manifests)
    label_name: str  # "" when unknown; for untrimmed videos the output folder's label
    segments: tuple[Segment, ...] | None = None
    # The manifests (<name>.csv) that list it, when not just `split`'s: ucf101 and hmdb51 list one video in
    # several, e.g. ("train1", "test2", "train3"), and it is prepared once.
    manifests: tuple[str, ...] = ()
    frame_rate: float | None = None  # jpg-frames: the rate its frames are encoded at (--fps)
    frame_range: tuple[int, int] | None = None  # jpg-frames: the [start, end) frames its rows cover (0-based)

    @property
    def folder(self) -> str:
        """Output folder name under videos/<split>/ (or videos/ where split is "")."""
        return safe_name(self.label_name) if self.label_name else UNLABELLED

    @property
    def lists(self) -> tuple[str, ...]:
        """The manifests that list it."""
        return self.manifests or (self.split,)


@dataclass
class Listing:
    """What a raw dataset holds. rejected: (source, reason) found while listing (missing files, ...)."""

    layout: str
    sources: list[Source]
    classes: list[str]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # what the layout's reader wants the report to say (JSON values)


def safe_name(name: str) -> str:
    """A name usable as one path component (keeps spaces and unicode; replaces path separators)."""
    name = re.sub(r"[/\\\x00]", "_", name).strip()
    return "_" if name in ("", ".", "..") else name
