"""3D-ResNets-PyTorch's JPEG frame folders as an input layout (jpg-frames), and one such folder read as a video.

The layout, as its util_scripts/generate_video_jpgs.py writes it and its datasets/videodataset.py reads it:
    SRC/<label>/<video_id>/image_00001.jpg, image_00002.jpg, ...      (1-based; unlabelled videos in SRC/test/)
and its annotation JSON (util_scripts/kinetics_json.py, ucf101_json.py, hmdb51_json.py, mit_json.py):
    {"labels": [class names, in class-index order],
     "database": {video_id: {"subset": "training" | "validation" | "testing",
                             "annotations": {"label": name, "segment": [first, last + 1]}}}}   (1-based frames)
Classes: "labels" in its order, so class k means what it means to that code and its checkpoints. Manifests by
subset: train, val, test. Several JSONs (their UCF101/HMDB51 splits, ucf101_01.json ... ucf101_03.json) give one
set each, in the order given: train1/val1, train2/val2, ...; each video is prepared once. The segment's frames
become the row's start_frame/end_frame (0-based: first - 1, last). Frame folders record no frame rate: they are
encoded at --fps (default 30, said in the report), so output frame k shows image_<k+1>.jpg.

Reported, never dropped silently: a video a JSON lists but SRC lacks ("missing"), a frame folder no JSON lists
("not listed"), a folder with a frame number missing or none at all (rejected by the worker).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import AbstractContextManager
from fractions import Fraction
from pathlib import Path

import av

from pipeline.video import Rejected, open_source
from prepare.listing import LayoutError, Listing, Source

DEFAULT_FPS = 30.0
FIRST_FRAME = "image_00001.jpg"
FRAME = re.compile(r"^image_(\d{5,})\.jpg$")
SUBSETS = {"training": "train", "validation": "val", "testing": "test"}
UNLABELLED_FOLDER = "test"  # where their code keeps (and looks for) the frames of videos without a label


def looks_like_frames(src: Path) -> bool:
    """SRC/<label>/<video>/image_00001.jpg for one of the first few folders (a peek, not a scan)."""
    for label_dir in sorted(d for d in src.iterdir() if d.is_dir())[:3]:
        with os.scandir(label_dir) as it:
            videos = sorted(e.name for e in it if e.is_dir())[:3]
        if any((label_dir / v / FIRST_FRAME).is_file() for v in videos):
            return True
    return False


def is_annotation_json(path: Path) -> bool:
    """A 3D-ResNets-PyTorch annotation JSON: "labels" and "database" near the start (a sniff, not a parse)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 20)  # "labels" comes first: Kinetics-700's list is ~15 kB
    except OSError:
        return False
    return '"labels"' in head and '"database"' in head


def find_annotations(src: Path) -> list[Path]:
    """The annotation JSONs in SRC, else in its parent (where their scripts usually write them)."""
    for folder in (src, src.parent):
        found = [p for p in sorted(folder.glob("*.json")) if is_annotation_json(p)]
        if found:
            return found
    return []


def _manifest_order(name: str) -> tuple[int, int]:
    kind, k = re.fullmatch(r"(train|val|test)(\d*)", name).groups()
    return int(k or 0), ("train", "val", "test").index(kind)


def list_frames(src: Path, annotations: tuple[Path, ...] = (), fps: float | None = None) -> Listing:
    """The videos of a frame-folder dataset. annotations: the JSONs (none given: find_annotations); fps: the rate
    to encode frames at (None: DEFAULT_FPS, and the report says it was not given)."""
    paths = list(annotations) or find_annotations(src)
    if not paths:
        raise LayoutError(f"{src}: no 3D-ResNets-PyTorch annotation JSON (with \"labels\" and \"database\") in it or "
                          f"in {src.parent}. HINT: pass it with --annotations FILE")
    if len(paths) > 1 and not annotations:
        raise LayoutError(f"found {len(paths)} annotation JSONs ({', '.join(p.name for p in paths)}) in "
                          f"{paths[0].parent}. HINT: pass the ones to use with --annotations (several: one set of "
                          "manifests each, e.g. ucf101_01.json ucf101_02.json ucf101_03.json)")
    docs = []
    for p in paths:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            docs.append((p, list(doc["labels"]), dict(doc["database"])))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LayoutError(f"{p}: not a 3D-ResNets-PyTorch annotation JSON ({type(e).__name__}: {e}). HINT: "
                              "expected {\"labels\": [...], \"database\": {...}}") from None
    classes = docs[0][1]
    for p, labels, _ in docs[1:]:
        if labels != classes:
            raise LayoutError(f"{p}: its \"labels\" differ from {docs[0][0].name}'s. HINT: pass the JSONs of one "
                              "dataset only")
    on_disk = {}  # (label folder, video_id) -> folder
    for label_dir in sorted(d for d in src.iterdir() if d.is_dir()):
        with os.scandir(label_dir) as it:
            on_disk |= {(label_dir.name, e.name): Path(e.path) for e in it if e.is_dir()}
    suffixes = [""] if len(docs) == 1 else [str(k) for k in range(1, len(docs) + 1)]
    seen: dict[str, tuple[str, tuple[int, int] | None, list[str]]] = {}  # video_id -> label, frames, manifests
    rejected = []
    for (path, _, database), suffix in zip(docs, suffixes, strict=True):
        for vid, entry in sorted(database.items()):
            subset = entry.get("subset") if isinstance(entry, dict) else None
            if subset not in SUBSETS:
                rejected.append((f"{path.name}:{vid}", f"unknown subset {subset!r}"))
                continue
            ann = entry.get("annotations") or {}
            label = str(ann.get("label", ""))
            if label and label not in classes:
                raise LayoutError(f"{path}: video {vid}: label {label!r} is not in its \"labels\"")
            segment = ann.get("segment")
            frames = None if segment is None else (int(segment[0]) - 1, int(segment[1]) - 1)
            manifest = f"{SUBSETS[subset]}{suffix}"
            if vid in seen:
                if seen[vid][:2] != (label, frames):
                    raise LayoutError(f"{path}: video {vid}: label or segment differs from an earlier JSON's "
                                      f"({seen[vid][0]!r} {seen[vid][1]} vs {label!r} {frames}). HINT: pass the "
                                      "JSONs of one dataset only")
                seen[vid][2].append(manifest)
            else:
                seen[vid] = (label, frames, [manifest])
    sources, listed = [], set()
    names = ", ".join(p.name for p, _, _ in docs)
    for vid, (label, frames, manifests) in sorted(seen.items()):
        key = (label or UNLABELLED_FOLDER, vid)
        listed.add(key)
        if key not in on_disk:
            rejected.append((f"{names}:{vid}", f"missing: listed in {names} but no folder {key[0]}/{vid} under "
                             f"{src}"))
            continue
        if frames is not None and frames[1] <= max(frames[0], 0):
            rejected.append((f"{names}:{vid}", f"empty segment: {[frames[0] + 1, frames[1] + 1]} (1-based frames)"))
            continue
        sources.append(Source(vid, on_disk[key], "", label, manifests=tuple(sorted(manifests, key=_manifest_order)),
                              frame_rate=fps or DEFAULT_FPS, frame_range=frames))
    rejected += [(str(folder), f"not listed in {names}") for key, folder in sorted(on_disk.items())
                 if key not in listed]
    notes = {"annotations": [str(p) for p, _, _ in docs], "fps": fps or DEFAULT_FPS,
             "fps_given": fps is not None,
             "manifests": sorted({m for s in sources for m in s.manifests}, key=_manifest_order)}
    return Listing("jpg-frames", sources, list(classes), rejected, notes)


# ---------------------------------------------------------------- one folder as a video (in the worker)


def check_frames(folder: Path) -> tuple[int, int]:
    """(frames, bytes) of a frame folder, numbered image_00001.jpg to image_<n>.jpg without a gap; raise
    Rejected otherwise (their loader skips missing numbers silently, which shifts every frame after)."""
    try:
        with os.scandir(folder) as it:
            sizes = {int(m.group(1)): e.stat().st_size for e in it if (m := FRAME.match(e.name))}
    except FileNotFoundError:
        raise Rejected("missing: folder not found") from None
    except OSError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    if not sizes:
        raise Rejected("no frames: no image_NNNNN.jpg in the folder")
    n = max(sizes)
    if min(sizes) != 1:
        raise Rejected(f"frames numbered from image_{min(sizes):05d}.jpg: expected image_00001.jpg first "
                       "(generate_video_jpgs.py's numbering)")
    if len(sizes) != n:
        gap = min(set(range(1, n + 1)) - set(sizes))
        raise Rejected(f"frames missing: image_{gap:05d}.jpg absent ({len(sizes)} of image_00001.jpg to "
                       f"image_{n:05d}.jpg present)")
    return n, sum(sizes.values())


def open_frames(folder: Path, fps: float, decode_threads: int = 0) -> AbstractContextManager[
        tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The folder's JPEGs as one video stream at fps (FFmpeg's image2 demuxer), opened as pipeline/video.py's
    open_source opens a file: frame k (0-based) is image_<k+1>.jpg, at time k / fps."""
    rate = Fraction(fps).limit_denominator(1001)
    return open_source(folder / "image_%05d.jpg", decode_threads, format="image2",
                       options={"framerate": f"{rate.numerator}/{rate.denominator}", "start_number": "1"})
