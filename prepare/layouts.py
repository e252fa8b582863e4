"""Find the videos of a raw dataset: detect its layout and list (video, split, label, segments).

Layouts (detect_layout picks the first that matches; prepare_data.py --format forces one):
    activitynet  SRC/*.json with a "database" key (ActivityNet v1.3: subset, duration, annotations[{segment,
                 label}]), videos anywhere under SRC named <id>.* or v_<id>.*. One manifest row per annotated
                 segment; video_id <id>_<k> (k: the segment's position in the JSON list), or <id> for a video
                 without annotations (label -1).
    kinetics     SRC/annotations/*.csv with a youtube_id column (label,youtube_id,time_start,time_end,split),
                 videos anywhere under SRC named <youtube_id>_<start:06d>_<end:06d>.*; video_id is that name.
                 A CSV without labels (the test split) gives label -1. A row whose video_id an earlier row (in
                 the CSVs' sorted order) already listed is rejected as a duplicate: the first is kept.
    folders      SRC/<split>/<class>/<video> (UCF101/HMDB51 style, Kinetics downloaded per class);
                 video_id is the file name without extension (made unique within a split with _2, _3, ...).
    ucf101, hmdb51  the datasets as distributed, with their official split files (ucf_hmdb.py); tried first.
    jpg-frames   3D-ResNets-PyTorch's JPEG frame folders and annotation JSON (frames.py); tried after them.
Splits: train/training, val/valid/validation/validate, test/testing. Classes: sorted names, index = position
(ucf101: classInd.txt's order; jpg-frames: the JSON's "labels" order).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prepare import frames, ucf_hmdb
from prepare.listing import VIDEO_EXTENSIONS, LayoutError, Listing, Segment, Source

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "validate": "val", "test": "test", "testing": "test"}
LAYOUTS = ("kinetics", "folders", "activitynet", "ucf101", "hmdb51", "jpg-frames")
MULTIPLE = "_multiple"  # output folder of untrimmed videos whose segments carry different labels


def detect_layout(src: Path) -> str:
    """The layout of src (see the module docstring); raise LayoutError with a hint when none matches."""
    if not src.is_dir():
        raise LayoutError(f"{src}: not a directory. HINT: pass the dataset's root folder")
    if ucf_hmdb.ucf101_lists(src) is not None:
        return "ucf101"
    if ucf_hmdb.hmdb51_lists(src) is not None:
        return "hmdb51"
    if frames.looks_like_frames(src):  # before activitynet: its annotation JSON has a "database" key too
        return "jpg-frames"
    if _activitynet_json(src) is not None:
        return "activitynet"
    if _kinetics_csvs(src):
        return "kinetics"
    if any(d.is_dir() and d.name.lower() in SPLIT_NAMES for d in src.iterdir()):
        return "folders"
    raise LayoutError(
        f"{src}: no known layout. Expected one of: SRC/annotations/<split>.csv with a youtube_id column "
        "(Kinetics); SRC/<split>/<class>/<video> with split in train/val/test (class folders); SRC/*.json "
        "with a 'database' key (ActivityNet); SRC/ucfTrainTestlist/classInd.txt (UCF101); "
        "SRC/testTrainMulti_7030_splits/ (HMDB51); SRC/<label>/<video>/image_00001.jpg (3D-ResNets-PyTorch's "
        "frames). HINT: pass --format to force one")


def list_sources(src: Path, layout: str, splits: tuple[int, ...] = (1, 2, 3), annotations: tuple[Path, ...] = (),
                 fps: float = 30.0) -> Listing:
    """All source videos of src in the given layout, sorted by (split, video_id).

    splits: the official splits to list (ucf101, hmdb51); annotations: the JSON files (jpg-frames; none: found
    next to src); fps: the frame rate of frame folders (jpg-frames). Other layouts ignore them.
    """
    listers = {"kinetics": _list_kinetics, "folders": _list_folders, "activitynet": _list_activitynet,
               "ucf101": lambda s: ucf_hmdb.list_ucf101(s, splits), "hmdb51": lambda s: ucf_hmdb.list_hmdb51(s, splits),
               "jpg-frames": lambda s: frames.list_frames(s, annotations, fps)}
    listing = listers[layout](src)
    listing.sources.sort(key=lambda s: (s.split, s.video_id))
    listing.rejected.sort()
    return listing


def _video_files(root: Path, skip: Path | None = None) -> dict[str, list[Path]]:
    """stem -> video files under root (recursive, sorted), skipping the folder `skip`."""
    index: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir() and (skip is None or skip not in p.parents):
            index.setdefault(p.stem, []).append(p)
    return index


def _pick(paths: list[Path], split_dirs: set[str]) -> Path:
    """Of several files with the same name, prefer one inside a folder named like its split."""
    return next((p for p in paths if p.parent.name.lower() in split_dirs), paths[0])


def _kinetics_csvs(src: Path) -> list[Path]:
    ann = src / "annotations"
    if not ann.is_dir():
        return []
    return [p for p in sorted(ann.glob("*.csv")) if "youtube_id" in _first_line(p)]


def _first_line(path: Path) -> str:
    """For sniffing a header: a file in another encoding is simply not one of ours, not an error."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline()


def _split_of(name: str) -> str | None:
    words = re.split(r"[^a-z]+", name.lower())
    return next((SPLIT_NAMES[w] for w in reversed(words) if w in SPLIT_NAMES), None)


def _list_kinetics(src: Path) -> Listing:
    csvs = _kinetics_csvs(src)
    if not csvs:
        raise LayoutError(f"{src}/annotations: no CSV with a youtube_id column. HINT: check --format")
    files = _video_files(src, skip=src / "annotations")
    import pandas as pd  # here, not at the top: prepare_data.py's worker processes import this module

    sources, rejected, listed = [], [], set()
    first: dict[str, tuple[str, int, str, str]] = {}  # video_id -> (CSV name, line, split, label) of its first row
    for csv in csvs:
        df = pd.read_csv(csv, dtype={"youtube_id": str, "label": str}, keep_default_na=False)
        for line, row in enumerate(df.itertuples(index=False), start=2):  # line 1: the header
            split = SPLIT_NAMES.get(str(getattr(row, "split", "")).lower()) or _split_of(csv.stem)
            if split is None:
                raise LayoutError(f"{csv}: no split column and no split in the file name. HINT: name it "
                                  "train.csv, val.csv or test.csv")
            video_id = f"{row.youtube_id}_{int(row.time_start):06d}_{int(row.time_end):06d}"
            label = str(getattr(row, "label", "")).strip()
            if video_id in first:  # one video twice would be prepared once but listed, trained on, scored twice
                rejected.append((f"{csv.relative_to(src)}:{line}:{video_id}",
                                 _duplicate_reason(first[video_id], (csv.name, line, split, label))))
                continue
            first[video_id] = (csv.name, line, split, label)
            if video_id not in files:
                rejected.append((f"{csv.relative_to(src)}:{video_id}", f"missing: listed in {csv.name} but no "
                                 f"file {video_id}.* under {src}"))
                continue
            listed.add(video_id)
            path = _pick(files[video_id], {k for k, v in SPLIT_NAMES.items() if v == split})
            sources.append(Source(video_id, path, split, label))
    rejected += [(str(p), "not listed in any annotations CSV") for stem, ps in files.items() if stem not in listed
                 for p in ps]
    classes = sorted(({s.label_name for s in sources} | _labels_in(csvs)) - {""})
    return Listing("kinetics", sources, classes, rejected)


def _duplicate_reason(kept: tuple[str, int, str, str], dup: tuple[str, int, str, str]) -> str:
    """'duplicate: ...' for rejected.csv: where the kept row is, and what differs from it (split, label)."""
    (csv0, line0, split0, label0), (_, _, split, label) = kept, dup
    differs = [f"{what} {new!r} (kept: {old!r})" for what, new, old in
               (("split", split, split0), ("label", label, label0)) if new != old]
    return (f"duplicate: the video of {csv0} line {line0} again"
            + (f", with {' and '.join(differs)}" if differs else "") + "; the first row is kept")


def _labels_in(csvs: list[Path]) -> set[str]:
    import pandas as pd

    labels: set[str] = set()
    for csv in csvs:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        if "label" in df.columns:
            labels |= {x.strip() for x in df["label"]}
    return labels


def _list_folders(src: Path) -> Listing:
    sources, classes = [], set()
    for split_dir in sorted(d for d in src.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES):
        split = SPLIT_NAMES[split_dir.name.lower()]
        taken: set[str] = {s.video_id for s in sources if s.split == split}
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            classes.add(class_dir.name)
            for p in sorted(class_dir.iterdir()):
                if p.suffix.lower() not in VIDEO_EXTENSIONS or p.is_dir():
                    continue
                video_id, k = p.stem, 2
                while video_id in taken:
                    video_id, k = f"{p.stem}_{k}", k + 1
                taken.add(video_id)
                sources.append(Source(video_id, p, split, class_dir.name))
    if not classes:
        raise LayoutError(f"{src}: no class folders under {src}/<split>/. HINT: expected SRC/train/<class>/<video>")
    return Listing("folders", sources, sorted(classes))


def _activitynet_json(src: Path) -> Path | None:
    for p in sorted(src.glob("*.json")):
        try:
            with p.open(encoding="utf-8", errors="replace") as f:  # sniffing: another encoding is not ours
                head = f.read(4096)
        except OSError:
            continue
        if '"database"' in head:
            return p
    return None


def _list_activitynet(src: Path) -> Listing:
    path = _activitynet_json(src)
    if path is None:
        raise LayoutError(f"{src}: no *.json with a 'database' key. HINT: put activity_net.v1-3.min.json in SRC")
    database = json.loads(path.read_text(encoding="utf-8"))["database"]
    files = _video_files(src)
    sources, rejected, classes = [], [], set()
    for vid, entry in sorted(database.items()):
        split = SPLIT_NAMES.get(str(entry.get("subset", "")).lower())
        if split is None:
            rejected.append((f"{path.name}:{vid}", f"unknown subset {entry.get('subset')!r}"))
            continue
        segments = tuple(Segment(float(a["segment"][0]), float(a["segment"][1]), str(a["label"]))
                         for a in entry.get("annotations", []))
        classes |= {s.label_name for s in segments}
        found = files.get(vid) or files.get(f"v_{vid}")
        if not found:
            rejected.append((f"{path.name}:{vid}", f"missing: listed in {path.name} but no file {vid}.* or "
                             f"v_{vid}.* under {src}"))
            continue
        labels = {s.label_name for s in segments}
        label = labels.pop() if len(labels) == 1 else (MULTIPLE if labels else "")
        sources.append(Source(vid, _pick(found, set()), split, label, segments or None))
    return Listing("activitynet", sources, sorted(classes), rejected)
