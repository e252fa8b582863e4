"""UCF101 and HMDB51 as distributed: the videos plus the official train/test split files (three splits each).

ucf101  SRC/UCF-101/<Class>/v_<Class>_gGG_cCC.avi (UCF101.rar extracted; the UCF-101 level is optional) and
        SRC/ucfTrainTestlist/ (UCF101TrainTestSplits-RecognitionTask.zip extracted): classInd.txt, lines
        "1 ApplyEyeMakeup"; trainlist0K.txt, lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"; testlist0K.txt,
        lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi". Classes in classInd.txt's order, label = its number - 1.
hmdb51  SRC/<class>/<video>.avi (hmdb51_org.rar extracted, and the 51 .rar files inside it: this code reads no
        .rar) and SRC/testTrainMulti_7030_splits/ (test_train_splits.rar extracted): <class>_test_split<K>.txt, lines
        "<video>.avi 1" (1: train, 2: test, 0: not used in split K; the official files end each line with a space).
        Classes: the names in those file names, sorted, label = position (as 3D-ResNets-PyTorch's hmdb51_json.py).

A video's class is the folder its list line names (UCF101: "<Class>/" in the line; HMDB51: the list file's name),
and its file is looked up at exactly that <class>/<file name>, as 3D-ResNets-PyTorch's ucf101_json.py and
torchvision's UCF101 do. The class is never parsed from the file name: UCF101 keeps the videos of class
HandstandPushups as HandstandPushups/v_HandStandPushups_g01_c01.avi.

One Source per video that a selected split uses, prepared once into videos/<class>/<video>.webm, listed in the
manifests train<K>.csv and test<K>.csv of every selected split K that uses it. Reported, never dropped silently:
a video a selected list names but SRC lacks ("missing", a rejected.csv row naming the lists), a video file no
list names ("not listed", a rejected.csv row), and videos the selected splits leave out (HMDB51's 0s, or the
splits not selected: counted in the report's listing notes, not prepared).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prepare.listing import VIDEO_EXTENSIONS, LayoutError, Listing, Source

HMDB_LIST = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$")
HMDB_CODES = {"1": "train", "2": "test"}  # "0": not used in that split


def ucf101_lists(src: Path) -> Path | None:
    """The folder holding UCF101's classInd.txt: SRC itself or a folder in it (ucfTrainTestlist); else None."""
    return next((d for d in [src, *sorted(p for p in src.iterdir() if p.is_dir())]
                 if (d / "classInd.txt").is_file()), None)


def hmdb51_lists(src: Path) -> Path | None:
    """The folder of HMDB51's <class>_test_split<K>.txt files: SRC itself or a folder in it whose name says
    "split" (testTrainMulti_7030_splits; only those are listed, so detection stays cheap next to large video
    folders); else None."""
    candidates = [src, *sorted(p for p in src.iterdir() if p.is_dir() and "split" in p.name.lower())]
    return next((d for d in candidates if any(HMDB_LIST.match(p.name) for p in d.glob("*_test_split*.txt"))), None)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text stripped) of the non-blank lines. Bytes are decoded as file names are (os.fsdecode), so
    a name matches its file whatever its characters; CRLF line ends and a UTF-8 byte-order mark are ignored."""
    out = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        text = os.fsdecode(raw).lstrip("\ufeff").strip()
        if text:
            out.append((n, text))
    return out


def _split_numbers(texts: list[str]) -> list[int]:
    return sorted({int(t) for t in texts})


def _check_splits(splits: tuple[int, ...], found: list[int], lists: Path, what: str) -> None:
    absent = [k for k in splits if k not in found]
    if absent:
        raise LayoutError(f"{lists}: no {what} for split {', '.join(map(str, absent))} (found: "
                          f"{', '.join(map(str, found)) or 'none'}). HINT: pass --split with those found")


def list_ucf101(src: Path, splits: tuple[int, ...]) -> Listing:
    lists = ucf101_lists(src)
    if lists is None:
        raise LayoutError(f"{src}: no ucfTrainTestlist/classInd.txt. HINT: extract UCF101TrainTestSplits-"
                          "RecognitionTask.zip into SRC")
    classes = []
    for n, text in _lines(lists / "classInd.txt"):
        number, _, name = text.partition(" ")
        if number != str(len(classes) + 1) or not name.strip():
            raise LayoutError(f"{lists / 'classInd.txt'}:{n}: expected '{len(classes) + 1} <ClassName>', got "
                              f"{text!r}")
        classes.append(name.strip())
    index = {name: i for i, name in enumerate(classes)}
    found = _split_numbers(m.group(1) for p in lists.glob("*list0*.txt")
                           if (m := re.fullmatch(r"(?:train|test)list(\d+)\.txt", p.name)))
    _check_splits(splits, found, lists, "trainlist0K.txt/testlist0K.txt")
    entries = []  # (list file, line, "Class/file", manifest or None when the split is not selected)
    for k in found:
        for kind in ("train", "test"):
            path = lists / f"{kind}list{k:02d}.txt"
            if not path.is_file():
                raise LayoutError(f"{path}: not found, but {'test' if kind == 'train' else 'train'}list{k:02d}.txt "
                                  "is. HINT: extract the split files again")
            for n, text in _lines(path):
                rel, number = (text.rsplit(None, 1) + [""])[:2] if kind == "train" else (text, "")
                cls = rel.split("/")[0] if rel.count("/") == 1 else None
                if cls is None or (kind == "train" and not number.isdigit()):
                    shape = "<Class>/<video>.avi <number>" if kind == "train" else "<Class>/<video>.avi"
                    raise LayoutError(f"{path}:{n}: expected '{shape}', got {text!r}")
                if cls not in index:
                    raise LayoutError(f"{path}:{n}: class {cls!r} is not in classInd.txt")
                if number and int(number) != index[cls] + 1:
                    raise LayoutError(f"{path}:{n}: {rel} says class {number}, but classInd.txt numbers {cls} "
                                      f"{index[cls] + 1}")
                entries.append((path, n, rel, f"{kind}{k}" if k in splits else None))
    notes = {"split_files": str(lists.relative_to(src)) or ".", "class_index": "classInd.txt's number - 1"}
    return _listing("ucf101", src, lists, entries, classes, splits, notes)


def list_hmdb51(src: Path, splits: tuple[int, ...]) -> Listing:
    lists = hmdb51_lists(src)
    if lists is None:
        raise LayoutError(f"{src}: no testTrainMulti_7030_splits/<class>_test_split<K>.txt. HINT: extract "
                          "test_train_splits.rar into SRC")
    files = sorted((m.group("cls"), int(m.group("k")), p) for p in lists.glob("*_test_split*.txt")
                   if (m := HMDB_LIST.match(p.name)))
    classes = sorted({cls for cls, _, _ in files})
    _check_splits(splits, _split_numbers(str(k) for _, k, _ in files), lists, "<class>_test_split<K>.txt")
    entries = []
    for cls, k, path in files:
        for n, text in _lines(path):
            parts = text.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise LayoutError(f"{path}:{n}: expected '<video>.avi 0|1|2', got {text!r}")
            name, code = parts
            use = k in splits and code in HMDB_CODES
            entries.append((path, n, f"{cls}/{name}", f"{HMDB_CODES[code]}{k}" if use else None))
    notes = {"split_files": str(lists.relative_to(src)) or ".", "class_index": "class names sorted, 0-based"}
    return _listing("hmdb51", src, lists, entries, classes, splits, notes)


def _manifest_order(name: str) -> tuple[int, int]:
    """train1, test1, train2, ...: by split, train before test."""
    kind, k = re.fullmatch(r"(train|test)(\d+)", name).groups()
    return int(k), kind == "test"


def _listing(layout: str, src: Path, lists: Path, entries: list[tuple[Path, int, str, str | None]],
             classes: list[str], splits: tuple[int, ...], notes: dict) -> Listing:
    """The Listing of a split-file dataset from its list entries (list file, line, "<class>/<file>", manifest or
    None for a split not selected or a video it does not use)."""
    memberships: dict[str, list[str]] = {}  # "<class>/<file>" -> the selected manifests listing it
    named_in: dict[str, list[str]] = {}  # -> the selected list files naming it
    listed = set()  # named by any list, selected or not
    for path, n, rel, manifest in entries:
        listed.add(rel)
        if manifest is None:
            continue
        have = memberships.setdefault(rel, [])
        if manifest in have:  # a list naming a video twice: once is enough (the row would be a duplicate)
            continue
        if any(_manifest_order(m)[0] == _manifest_order(manifest)[0] for m in have):
            other = next(m for m in have if _manifest_order(m)[0] == _manifest_order(manifest)[0])
            raise LayoutError(f"{path}:{n}: {rel} is in both {other} and {manifest} of split "
                              f"{_manifest_order(manifest)[0]}. HINT: extract the official split files again")
        have.append(manifest)
        named_in.setdefault(rel, []).append(path.name)
    files: dict[str, list[Path]] = {}  # "<parent folder>/<file name>" -> the video files there
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
            files.setdefault(f"{p.parent.name}/{p.name}", []).append(p)
    sources, rejected, taken = [], [], set()
    for rel in sorted(memberships):
        found = files.get(rel)
        if not found:
            rejected.append((f"{lists.name}:{rel}", f"missing: listed in {', '.join(named_in[rel])} but no file "
                             f"{rel} under {src}"))
            continue
        rejected += [(str(p), f"duplicate: another copy of {rel}; {found[0]} is used") for p in found[1:]]
        cls, name = rel.split("/")
        video_id, k = Path(name).stem, 2
        while video_id in taken:  # the manifests need unique ids; UCF101's and HMDB51's names are already
            video_id, k = f"{Path(name).stem}_{k}", k + 1
        taken.add(video_id)
        manifests = tuple(sorted(memberships[rel], key=_manifest_order))
        sources.append(Source(video_id, found[0], "", cls, manifests=manifests))
    rejected += [(str(p), f"not listed in any split file of {lists.name}")
                 for rel, ps in files.items() if rel not in listed for p in ps]
    unused = sorted(rel for rel in files if rel in listed and rel not in memberships)
    notes |= {"splits": list(splits),
              "manifests": sorted({m for s in sources for m in s.manifests}, key=_manifest_order),
              "not_used": {"count": len(unused), "why": f"split files list them, but not for split(s) "
                           f"{', '.join(map(str, splits))} (not prepared)", "files": unused}}
    return Listing(layout, sources, classes, rejected, notes)
