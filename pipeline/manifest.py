"""Reading and checking a prepared dataset's manifests (DST/<split>.csv) and class list (DST/classes.csv).

COLUMNS is the manifest's one definition: prepare_data.py writes it, the loaders read it, tests and benchmarks
build datasets with it. pandas is imported where a manifest is read, not with this module: prepare_data.py's
worker processes import COLUMNS (through prepare.run) and nothing else from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = (
    "video_id", "path", "label", "label_name", "split", "num_frames",
    "fps", "width", "height", "start_frame", "end_frame",
)  # fmt: skip
INT_COLUMNS = ("label", "num_frames", "width", "height", "start_frame", "end_frame")
HINT = "HINT: re-run prepare_data.py SRC --out DST to (re)create it"


class DatasetError(ValueError):
    """A prepared dataset is missing, malformed or has bad rows; the message names the file and the fix."""


def load_classes(data: Path) -> list[str]:
    """Class names from DST/classes.csv (columns index,name; index 0..K-1)."""
    import pandas as pd

    path = Path(data) / "classes.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: class list not found. {HINT}")
    try:
        df = pd.read_csv(path, dtype={"name": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable CSV ({e}). {HINT}") from None
    if list(df.columns[:2]) != ["index", "name"]:
        raise DatasetError(f"{path}: expected columns index,name, got {','.join(map(str, df.columns))}. {HINT}")
    if len(df) == 0:
        raise DatasetError(f"{path}: no classes. {HINT}")
    if not pd.api.types.is_integer_dtype(df["index"]) or list(df["index"]) != list(range(len(df))):
        raise DatasetError(f"{path}: column index must be 0..{len(df) - 1} in order. {HINT}")
    return [str(x) for x in df["name"]]


def load_manifest(data: Path, split: str, num_classes: int, allow_unlabelled: bool = False) -> pd.DataFrame:
    """The rows of DST/<split>.csv, checked, with an absolute `file` column added; index 0..V-1.

    allow_unlabelled: accept label -1 (evaluation of unlabelled test videos); otherwise every label must
    be in [0, num_classes).
    """
    import pandas as pd

    path = Path(data) / f"{split}.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found (split {split!r} has no videos?). {HINT}")
    try:
        df = pd.read_csv(path, dtype={"video_id": str, "path": str, "label_name": str, "split": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable CSV ({e}). {HINT}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {','.join(missing)}; expected {','.join(COLUMNS)}. {HINT}")
    if len(df) == 0:
        raise DatasetError(f"{path}: manifest is empty (header only). {HINT}")
    for c in INT_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[c]):
            raise DatasetError(f"{path}: column {c} must hold integers. {HINT}")
    df = df.loc[:, list(COLUMNS)].reset_index(drop=True)
    low = -1 if allow_unlabelled else 0
    bad = np.flatnonzero((df["label"] < low) | (df["label"] >= num_classes))
    if len(bad):
        r = int(bad[0])
        raise DatasetError(
            f"{path}: {len(bad)} row(s) have a label outside classes.csv (0..{num_classes - 1}), first: row {r + 2} "
            f"(video {df['video_id'][r]!r}, label {df['label'][r]}). {HINT}"
        )
    n = df["end_frame"] - df["start_frame"]
    bad = np.flatnonzero((df["start_frame"] < 0) | (n < 1) | (df["end_frame"] > df["num_frames"])
                         | (df["width"] < 1) | (df["height"] < 1))
    if len(bad):
        r = int(bad[0])
        raise DatasetError(
            f"{path}: {len(bad)} row(s) have an empty or impossible frame range / size, first: row {r + 2} "
            f"(video {df['video_id'][r]!r}: frames [{df['start_frame'][r]}, {df['end_frame'][r]}) of "
            f"{df['num_frames'][r]}, {df['width'][r]}x{df['height'][r]}). {HINT}"
        )
    # Resolve the folder once and join: Path.resolve() per row (an lstat per path component) cost ~40 us a
    # row, 10 s for Kinetics-400's 240k rows (benchmarks/RESULTS.md, "Loader start-up at Kinetics scale").
    root = str(Path(data).resolve())
    df["file"] = [os.path.normpath(os.path.join(root, p)) for p in df["path"].tolist()]
    return df


def split_manifests(data: Path, split: str = "") -> tuple[str, str]:
    """The (training, validation) manifests of train.py --split: "" -> (train, val); K -> (trainK, valK), or
    (trainK, testK) where DST has no valK.csv: UCF101 and HMDB51 have no validation split, and 3D-ResNets-PyTorch
    (ucf101_json.py, hmdb51_json.py) validates on the test list too."""
    if not split:
        return "train", "val"
    return f"train{split}", f"val{split}" if (Path(data) / f"val{split}.csv").is_file() else f"test{split}"


def held_out_manifest(data: Path, split: str) -> str:
    """evaluate.py --split: a manifest name as is (val, test1, ...); a split number K -> testK, or valK where DST has
    no testK.csv (3D-ResNets-PyTorch's frame-folder JSONs call the test list "validation")."""
    if not split.isdigit():
        return split
    return f"test{split}" if (Path(data) / f"test{split}.csv").is_file() else f"val{split}"


def manifest_names(data: Path) -> list[str]:
    """The manifests in DST (<name>.csv but classes.csv and rejected.csv), for messages."""
    return sorted(p.stem for p in Path(data).glob("*.csv") if p.stem not in ("classes", "rejected"))
