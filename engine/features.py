"""Pooled features of every window of every video, for downstream work (action localisation, retrieval): the one
format that infer.py --features and evaluate.py --features write, as the authors' video-classification-3d-cnn-
pytorch tool gives them (the features of every 16-frame clip of a video).

    DIR/<name>.npy     (windows, dim) float32. Row k: the input of the model's classifier (model pooled_features:
                       the global average pool of its last stage; 512 for ResNet-18/34, 2048 for the Bottleneck
                       depths) for window k, the paper's non-overlapping windows (pipeline.sampling.eval_starts:
                       frames kT .. kT + T - 1 of the video; one shorter than T gives one window looped from frame
                       0), centre-cropped at the maximum scale and normalised as in training.
    DIR/features.csv   one row per video (COLUMNS): video_id, file (the .npy's name, file_name), source (the video
                       file), frames, windows, dim, fps, start_s (where the video starts in its source: a segment's
                       start frame / fps, else 0), seconds_per_window (T / fps). Window k spans
                       [start_s + k x seconds_per_window, start_s + (k + 1) x seconds_per_window).
    DIR/features.json  what made them (describe): the checkpoint and its SHA-256, its run record (architecture,
                       model arguments, class names, and its `input` entry: normalisation, clip size and
                       duration), the layer, the precision.

Resumable: a video whose .npy and row are in DIR is not computed again. Every .npy is written atomically
(pipeline.atomic: a killed run leaves whole files and hidden ".partial" temp files, which the next run deletes),
and right after it the writer appends the video's row to its own journal (DIR/.journal-rank<R>.csv). The main
process (FeatureDir, rank 0) merges the journals into features.csv when a run starts and when it ends, so a killed
run costs at most the videos in flight; a .npy whose row never reached a journal is computed again. One run writes
a DIR at a time (DIR/.lock), and a DIR written with another model or precision is refused (features.json).

Under DDP (evaluate.py) every video is computed by one rank, whole (video_owners): no two ranks write one file, and
no window has to travel between ranks.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from engine.checkpoint import RunRecord, file_digest
from pipeline.atomic import NO_SPACE_ERRNOS, NoSpace, atomic_write

COLUMNS = ("video_id", "file", "source", "frames", "windows", "dim", "fps", "start_s", "seconds_per_window")
CSV_NAME, JSON_NAME, LOCK_NAME = "features.csv", "features.json", ".lock"
JOURNAL_GLOB = ".journal-rank*.csv"
# features.json entries that must agree for features to go on being written into a DIR: the same weights, the same
# clips, the same layer, the same arithmetic. Not the class names (infer.py --classes renames them) nor the paths.
SAME_MODEL = ("checkpoint_sha256", "model_args", "input", "features", "precision")
# Characters never kept in a file name: the path separators, '%' (the escape character itself), and those that
# Windows and SMB shares refuse (a DIR on a network share).
UNSAFE = frozenset('/\\%:*?"<>|')
MAX_NAME_BYTES = 200  # of the name before ".npy": file systems allow 255, atomic_write's temp name adds ~40


class FeaturesError(Exception):
    """A features folder that cannot be used as asked. str(exc) is the one-line message for the user."""


def _escape(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


def file_name(video_id: str) -> str:
    """The .npy name of a video: "<video_id>.npy" when video_id is a safe file name (Kinetics' YouTube ids, even
    those that start with '-', UCF101's and HMDB51's names, ActivityNet's), else with each unsafe character
    percent-encoded as its UTF-8 bytes (%XX): the characters in UNSAFE, control characters, a leading '.' (a
    hidden file, or '..') and a trailing '.' or space (dropped by Windows shares). A name longer than
    MAX_NAME_BYTES is cut and ends in '~' and 16 hex digits of its SHA-256. Two video_ids never get one name
    ('%' itself is escaped)."""
    if not video_id:
        raise ValueError("a video_id cannot be empty")
    name = "".join(_escape(c) if c in UNSAFE or ord(c) < 32 or ord(c) == 127 else c for c in video_id)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if name.endswith((".", " ")):
        name = name[:-1] + _escape(name[-1])
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        cut = name.encode("utf-8", "surrogatepass")[: MAX_NAME_BYTES - 17].decode("utf-8", "ignore")
        name = f"{cut}~{digest}"
    return name + ".npy"


@dataclass(frozen=True)
class FeatureRow:
    """One video's row of features.csv (COLUMNS)."""

    video_id: str
    file: str  # the .npy's name in DIR
    source: str  # the video file the windows were cut from
    frames: int  # frames of the video (of the segment, for a manifest row with start_frame/end_frame)
    windows: int  # rows of the .npy
    dim: int  # columns of the .npy
    fps: float
    start_s: float  # where the video starts in its source, seconds
    seconds_per_window: float  # T / fps

    def fields(self) -> list[str]:
        return [str(getattr(self, c)) for c in COLUMNS]  # str(float) round-trips exactly

    @classmethod
    def parse(cls, fields: list[str]) -> FeatureRow | None:
        """The row of a features.csv or journal line; None for a line that is not one (a header, or a line cut
        short by a full disk)."""
        if len(fields) != len(COLUMNS):
            return None
        try:
            typed = [t(v) for t, v in zip((str, str, str, int, int, int, float, float, float), fields, strict=True)]
        except ValueError:
            return None
        return cls(*typed)


def describe(record: RunRecord, checkpoint: str | Path, net: nn.Module, amp: bool, videos: str,
             video_height: int | None = None) -> dict[str, Any]:
    """features.json: what makes the features. net: the model (its head names the layer); videos: where the frames
    come from (said, not compared); video_height: the height infer.py resizes every file to (compared; None for
    prepared videos, whose height preparation chose)."""
    entries = record.to_dict()
    head = next(name for name, m in net.named_children() if m is net.head)
    t, s = record.sample_duration, record.sample_size
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(Path(checkpoint)),
        "arch": entries["arch"],
        "model_args": entries["model_args"],
        "class_names": entries["class_names"],
        # the checkpoint's `input` entry but its video height: prepared videos' is theirs; infer.py's is below
        "input": {k: v for k, v in entries["input"].items() if k != "video_height"},
        "features": {"layer": f"input of {head} (the global average pool of the last stage)",
                     "dim": net.head.in_features, "dtype": "float32", "window_frames": t, "window_stride": t,
                     "crop": f"centre square at the maximum scale, resized to {s}x{s}",
                     "short_videos": f"a video shorter than {t} frames gives one window, looped from frame 0",
                     **({} if video_height is None else {"video_height": video_height})},
        "precision": "bf16 autocast" if amp else "float32",
        "videos": videos,
    }


def features_and_logits(net: nn.Module, clips: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, C) float32, logits (N, K) float32) of clips (N, 3, T, H, W): one forward pass. The backbone
    runs under bf16 autocast when amp; the head always in float32 on the float32 features, so the logits are
    those that a later run computes from the stored features (head_logits)."""
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=amp):
        pooled = net.pooled_features(clips)
    pooled = pooled.float()
    return pooled, net.head(pooled)


def head_logits(net: nn.Module, feats: np.ndarray, device: torch.device) -> torch.Tensor:
    """(W, K) float32 logits on device of stored features (W, C) float32."""
    return net.head(torch.from_numpy(feats).to(device))


def video_owners(counts: np.ndarray, world: int) -> np.ndarray:
    """The rank that computes each video, whole: (V,) int64 ranks, non-decreasing (contiguous blocks, in order),
    balanced by windows: video v goes to the rank whose share of all windows (rank_share's) holds its first
    window. counts: (V,) windows per video. E.g. counts [2, 1, 3, 1, 2, 1, 1], world 2 -> [0, 0, 0, 1, 1, 1, 1]
    (6 and 5 windows)."""
    counts = np.asarray(counts, np.int64)
    first = np.cumsum(counts) - counts
    total = max(int(counts.sum()), 1)
    return np.minimum(first * world // total, world - 1)


def load_features(root: Path, row: FeatureRow) -> np.ndarray:
    """The (windows, dim) float32 features of a row, checked against it; FeaturesError (one line) otherwise."""
    path = Path(root) / row.file
    try:
        feats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeaturesError(f"{path}: unreadable ({e}); HINT: delete it and run again (it is computed anew)") from None
    if feats.dtype != np.float32 or feats.shape != (row.windows, row.dim):
        raise FeaturesError(f"{path}: holds {feats.dtype} {feats.shape}, {CSV_NAME} says float32 ({row.windows}, "
                            f"{row.dim}); HINT: delete it and run again (it is computed anew)")
    return feats


# ---- the folder -----------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[FeatureRow]:
    """The rows of a features.csv or journal (in order; lines that are not rows skipped); [] when missing."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for fields in csv.reader(f) if (row := FeatureRow.parse(fields)) is not None]
    except FileNotFoundError:
        return []


def _write_csv(path: Path, rows: list[FeatureRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.fields() for r in rows)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


class FeatureDir:
    """A features folder as the main process (rank 0) holds it for one run: locked, features.json written or
    checked against `description`, the temp files of killed runs deleted, the journals merged into features.csv.

    done: {video_id: row} of the videos written before (their .npy present). FeaturesError (one line) when another
    run holds DIR, or DIR holds features of another model. close() (or the end of the process) releases DIR.
    """

    def __init__(self, root: str | Path, description: dict[str, Any]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = self._take_lock()
            self._check_description(description)
            for p in self.root.glob(".*.partial-*"):  # atomic_write's temp files of a killed run
                p.unlink(missing_ok=True)
            self.done = self.merge()
        except FeaturesError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise FeaturesError(f"{self.root}: cannot write features there ({e})") from None

    def _take_lock(self) -> IO[str]:
        f = open(self.root / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            raise FeaturesError(f"{self.root}: another run{f' (pid {pid})' if pid else ''} is writing features there; "
                                "HINT: wait for it to end, or use another --features folder") from None
        except OSError:  # a file system without locks: one run at a time is then the user's to keep
            return f
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        return f

    def _check_description(self, description: dict[str, Any]) -> None:
        path = self.root / JSON_NAME
        if path.is_file():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise FeaturesError(f"{path}: unreadable ({e}); HINT: use another --features folder") from None
            now = json.loads(json.dumps(description))  # as stored: lists, not tuples
            diffs = [k for k in SAME_MODEL if before.get(k) != now[k]]
            if diffs:
                shown = "; ".join(f"{k}: {json.dumps(before.get(k))[:120]} there, {json.dumps(now[k])[:120]} now"
                                  for k in diffs)
                hint = " (--amp / --no-amp)" if diffs == ["precision"] else ""
                raise FeaturesError(f"{self.root} holds features of another model ({shown}); HINT: use another "
                                    f"--features folder, or the same settings{hint}")
        with atomic_write(path) as tmp:  # the path of the checkpoint may have changed: the latest is recorded
            tmp.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")

    def merge(self, order: list[str] | None = None) -> dict[str, FeatureRow]:
        """Fold the journals into features.csv (then delete them) and return its rows: those whose .npy is in
        DIR, the last row of each video_id. Call only when no writer is writing (at the start of a run, or after
        every rank finished). order: the video_ids of this run's input, whose rows come first, in this order;
        the others follow in their previous order."""
        journals = sorted(self.root.glob(JOURNAL_GLOB))
        rows: dict[str, FeatureRow] = {}
        for path in [self.root / CSV_NAME, *journals]:
            for row in _read_rows(path):
                rows.pop(row.video_id, None)  # a video written again: its latest row, at its latest place
                rows[row.video_id] = row
        present = {p.name for p in self.root.iterdir()}
        rows = {vid: row for vid, row in rows.items() if row.file in present}
        if order is not None:
            first = {vid: rows[vid] for vid in order if vid in rows}
            rows = first | {vid: row for vid, row in rows.items() if vid not in first}
        _write_csv(self.root / CSV_NAME, list(rows.values()))
        for path in journals:
            path.unlink()
        return rows

    def finish(self, order: list[str]) -> dict[str, FeatureRow]:
        """features.csv at the end of a run (merge in the input's order); releases DIR."""
        try:
            return self.merge(order)
        finally:
            self.close()

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None


class FeatureWriter:
    """Writes videos' features into DIR: the .npy atomically, then the row to this writer's journal (any rank)."""

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.journal_path = self.root / f".journal-rank{rank}.csv"
        self._journal: IO[str] | None = None
        self.written: list[str] = []  # video_ids, in the order written

    def write(self, row: FeatureRow, feats: np.ndarray) -> None:
        """Write feats (row.windows, row.dim) float32 as row.file; NoSpace (one line) when the disk is full."""
        assert feats.dtype == np.float32 and feats.shape == (row.windows, row.dim), (feats.dtype, feats.shape, row)
        with atomic_write(self.root / row.file) as tmp, open(tmp, "wb") as f:
            np.save(f, feats, allow_pickle=False)
        try:
            if self._journal is None:
                self._journal = open(self.journal_path, "a", newline="", encoding="utf-8")
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow(row.fields())
            self._journal.write(line.getvalue())  # one write per row: a kill leaves whole lines
            self._journal.flush()
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise NoSpace.at(self.journal_path, e) from None
            raise
        self.written.append(row.video_id)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


class WindowGatherer:
    """Joins a rank's window features per video as batches bring them (in plan order: each video's windows
    together and in order) and calls complete(video, feats (windows, dim) float32) when a video's last window has
    come. counts: {video: windows} of the videos this rank computes."""

    def __init__(self, counts: dict[int, int], complete: Callable[[int, np.ndarray], None]) -> None:
        self.counts, self.complete = counts, complete
        self.pending: dict[int, list[np.ndarray]] = {}

    def add(self, videos: np.ndarray, feats: np.ndarray) -> None:
        """videos: (N,) int64; feats: (N, dim) float32, row i a window of video videos[i]."""
        for v, f in zip(videos.tolist(), feats, strict=True):
            got = self.pending.setdefault(v, [])
            got.append(f)
            if len(got) == self.counts[v]:
                self.complete(v, np.stack(self.pending.pop(v)))

    def unfinished(self) -> list[int]:
        return sorted(self.pending)


# ---- evaluate.py --features: a prepared dataset through the loader, one rank per video ------------------------


class DatasetFeatures:
    """evaluate.py --features on one rank: the videos this rank computes (whole, those not in DIR yet: load them
    with loader.only_videos(compute)), those it reads back from DIR for the metrics (stored), and the writer.

    videos: the loader's rows (video_id, path, fps, start_frame, end_frame); counts: (V,) windows per video;
    done: rank 0's FeatureDir.done (None on the other ranks): rank 0 decides, and every rank learns it in a
    collective, so all plan the same. data: the dataset folder (the rows' paths are relative to it).
    """

    def __init__(self, root: str | Path, videos: Any, counts: np.ndarray, done: dict[str, FeatureRow] | None,
                 data: str | Path, sample_duration: int, rank: int, world: int) -> None:
        from engine import distributed

        self.root, self.videos, self.counts = Path(root), videos, np.asarray(counts, np.int64)
        ids = [str(v) for v in videos["video_id"]]
        mine = None
        if done is not None:  # rank 0: a row counts as written when it has this video's windows
            mine = {v: done[vid] for v, vid in enumerate(ids) if vid in done and done[vid].windows == self.counts[v]}
        self.rows: dict[int, FeatureRow] = distributed.all_gather_objects(mine)[0]  # rank 0's, on every rank
        stored = np.array(sorted(self.rows), np.int64)
        todo = np.setdiff1d(np.arange(len(ids)), stored)
        owners = video_owners(self.counts[todo], world)
        self.compute = todo[owners == rank]  # (M,) int64 row indices, in manifest order
        self.stored = stored[rank::world]  # read back from DIR for the metrics, shared round-robin
        self.n_stored, self.n_todo = len(stored), len(todo)
        self.writer = FeatureWriter(self.root, rank)
        self.gatherer = WindowGatherer({int(v): int(self.counts[v]) for v in self.compute}, self._write)
        self.data, self.sample_duration, self.ids = Path(data), sample_duration, ids

    def _write(self, v: int, feats: np.ndarray) -> None:
        r = self.videos.iloc[v]
        fps = float(r["fps"])
        row = FeatureRow(video_id=self.ids[v], file=file_name(self.ids[v]), source=str(self.data / r["path"]),
                         frames=int(r["end_frame"] - r["start_frame"]), windows=len(feats), dim=feats.shape[1],
                         fps=fps, start_s=int(r["start_frame"]) / fps, seconds_per_window=self.sample_duration / fps)
        try:
            self.writer.write(row, feats)
        except OSError as e:  # NoSpace: the file and the space free
            raise SystemExit(f"error: {e if isinstance(e, NoSpace) else f'cannot write {self.root / row.file} ({e})'}"
                             "; the features written so far are kept; HINT: free space (or make the folder "
                             "writable), then run the same command again") from None

    def run(self, net: nn.Module, clips: torch.Tensor, video_idx: torch.Tensor, amp: bool) -> torch.Tensor:
        """(N, K) logits of a batch of clips (N, 3, T, S, S) from video rows video_idx (N,); the features of each
        video whose last window this batch brings are written."""
        feats, logits = features_and_logits(net, clips, amp)
        # CPU-GPU sync, once per batch: the features go to the disk
        self.gatherer.add(video_idx.cpu().numpy(), feats.cpu().numpy())
        return logits

    def stored_logits(self, net: nn.Module, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(video row, (W, K) logits) of this rank's share of the videos written before, from their features."""
        for v in self.stored.tolist():
            try:
                feats = load_features(self.root, self.rows[v])
            except FeaturesError as e:
                raise SystemExit(f"error: {e}") from None
            yield v, head_logits(net, feats, device)

    def finish(self, fdir: FeatureDir | None) -> dict[str, Any]:
        """After the last batch, on every rank (a collective): check that each video was written by exactly one
        rank; rank 0 (fdir) merges features.csv. Returns {"written": per-rank counts, "stored": n}."""
        from engine import distributed

        self.writer.close()
        if unfinished := self.gatherer.unfinished():  # a plan or loader bug: a video's windows did not all come
            v = unfinished[0]
            raise RuntimeError(f"{len(unfinished)} video(s) missed windows, e.g. {self.ids[v]!r}: "
                               f"{len(self.gatherer.pending[v])} of {self.counts[v]}")
        written = distributed.all_gather_objects(self.writer.written)
        if fdir is not None:
            every = [vid for rank in written for vid in rank]
            expected = {self.ids[v] for v in range(len(self.ids))} - {self.ids[v] for v in self.rows}
            if len(every) != len(set(every)) or set(every) != expected:
                raise RuntimeError(f"the ranks wrote {len(every)} feature files ({len(set(every))} distinct), "
                                   f"expected each of {len(expected)} once")
            try:
                fdir.finish(self.ids)
            except OSError as e:  # the .npy files and their rows (in the journals) are kept: the next run merges
                raise SystemExit(f"error: cannot write {self.root / CSV_NAME} ({e}); the features are kept; HINT: "
                                 "free space, then run the same command again (it writes it)") from None
        return {"written": [len(w) for w in written], "stored": self.n_stored}

