"""Recognise actions in any video files with a trained 3D ResNet, with no preparation step.

  python infer.py clip.mp4 --checkpoint runs/r34/checkpoints/best.pt
  python infer.py videos/ phone.mov --checkpoint CKPT --top-k 3 --out preds
  python infer.py clip.mp4 --checkpoint r3d18_K_200ep.pth --arch resnet-18 --shortcut B --norm kinetics-0-1 \\
      --classes kinetics700.txt
  python infer.py videos/ --checkpoint CKPT --features feats/   # + every window's pooled features, per file

Each file (or every video file under a folder) is read with PyAV and streamed the way prepare_data.py stores
videos (pipeline/video.py, which prepare/transcode.py uses too): upright (its display matrix applied), at a
constant frame rate by presentation time (the source's nominal rate, frames duplicated or dropped as needed),
resized to the checkpoint's video height (train.py records the height of the videos it trained on; other
checkpoints: 360; --height overrides) with the display aspect ratio kept, as limited-range yuv420p with the same
bicubic scaler (a full-range source, e.g. MJPEG, is converted as preparation converts it). It is then cut
into the paper's non-overlapping 16-frame windows (pipeline.sampling.eval_starts; a shorter video gives one
looped window), each centre-cropped at the maximum scale (sampling.crop_box) and normalised as in training by
pipeline/augment.py (colour conversion, crop, resize, normalisation: on the GPU when there is one), a batch of
windows at a time, so a long video never sits in memory whole. Window probabilities are averaged per file.
Decoding stays on the CPU (PyAV); the NVDEC path of training is not used here.

Writes OUT/predictions.json (3D-ResNets-PyTorch's format, as evaluate.py writes it; keys: the files as named on
the command line), OUT/timeline.csv (file, start_s, label, score: each window's top-1) and prints a table; OUT is
checked to be writable before any file runs. A file that cannot be read is one line naming it and the reason, and
the others still run; so is a still image (a file that decodes to one frame), named or in a folder. Exit status: 1 if any
file failed, 0 otherwise, 2 for usage errors (a bad flag, an unusable checkpoint), 130 on Ctrl-C (one line).

--features DIR also writes the pooled features (the classifier's input) of every window, one DIR/<video_id>.npy
per file (video_id: the file's name without its extension; two files with one name are a usage error), plus
DIR/features.csv and DIR/features.json (engine/features.py). A file whose features are in DIR already is not
decoded again: its predictions and timeline come from its stored features, so an interrupted run is finished by
running the same command again.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.checkpoint import RunRecord, checkpoint_record, run_dir
from engine.cli import (
    CLIP_RANGES,
    MODEL_RANGES,
    CheckpointOverrides,
    Range,
    add_clip_flags,
    add_device_flags,
    add_model_flags,
    check_numeric_flags,
    resolve_device_flags,
    resolve_normalisation,
    shown_config,
    unwritable_folder,
    with_flag_hints,
)
from engine.distributed import INTERRUPTED_EXIT
from engine.features import (
    FeatureDir,
    FeatureRow,
    FeaturesError,
    FeatureWriter,
    describe,
    features_and_logits,
    file_name,
    head_logits,
    load_features,
)
from engine.metrics import reference_predictions
from engine.progress import make_console
from engine.step import forward, memory_format
from model import CheckpointError, build_model, load_weights
from pipeline.atomic import NoSpace
from pipeline.augment import augment_nv12
from pipeline.sampling import CENTER, clip_frames, crop_box, eval_starts
from pipeline.video import Geometry, Rejected, Retimer, check_readable, open_source, pick_rate, to_nv12

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".ogv")  # fmt: skip
# Taken from folders too, to be refused as stills (Frames) the same way as when named: one line each, exit status 1,
# rather than skipped without a word. An animated GIF or WebP that decodes to several frames is read as a video.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
STILL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # one frame always (not GIF, WebP)


@dataclass(frozen=True)
class InferConfig(CheckpointOverrides):
    videos: tuple[str, ...]  # files, as named (folders expanded to the video files under them, sorted)
    checkpoint: str
    top_k: int = 5
    out: str = ""  # resolved: default RUN_DIR/infer-<checkpoint stem>
    batch_size: int = 16  # windows per forward pass
    classes: str | None = None  # class names, one per line; default the checkpoint's (ours), else "0", "1", ...
    height: int | None = None  # video height in pixels; default the checkpoint's (ours), else 360
    features: str | None = None  # --features DIR: also write every window's pooled features there
    # the model and clips (arch ... normalisation), as evaluate.py's: CheckpointOverrides
    device: str = "cpu"
    amp: bool = False


RANGES = {**MODEL_RANGES, **CLIP_RANGES, "top_k": Range(min=1), "batch_size": Range(min=1),
          "height": Range(min=2, why="and even: yuv420p")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="train.py's best.pt/last.pt, or a 3D-ResNets-PyTorch one")
    p.add_argument("--top-k", type=int, default=5, help="labels per file in the table and predictions.json")
    p.add_argument("--out", default="", help="output folder (default: RUN_DIR/infer-<checkpoint>)")
    p.add_argument("--batch-size", type=int, default=16, help="16-frame windows per forward pass")
    p.add_argument("--classes", help="class names, one per line (default: the checkpoint's, else 0, 1, ...)")
    p.add_argument("--height", type=int, help="resize videos to this height (default: the checkpoint's, else 360)")
    p.add_argument("--features", metavar="DIR", help="also write the pooled features of every window of every file "
                                                      "to DIR (<name>.npy, features.csv, features.json); files "
                                                      "already there are not decoded again")
    add_model_flags(p)
    add_clip_flags(p)
    add_device_flags(p.add_argument_group("run"), processes=False)
    return p


def video_files(paths: list[str]) -> list[str]:
    """The files named, with each folder replaced by the video and image files under it (by extension, sorted;
    images to be refused as stills); a name that is neither stays, to fail later with its reason."""
    out = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*")
                          if f.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS and f.is_file())
        else:
            out.append(name)
    return list(dict.fromkeys(out))  # each once, in order


def video_id(path: str) -> str:
    """A file's video_id for --features: its name without the extension (as the datasets' ids are)."""
    return Path(path).stem


def read_classes(path: str) -> list[str]:
    """One class name per line (blank lines at the end ignored)."""
    names = [line.strip() for line in Path(path).read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    return names


def parse_args(argv: list[str] | None = None) -> tuple[InferConfig, RunRecord]:
    """The config and its run record (model, classes, clips); every problem is a usage error (exit status 2)."""
    p = build_parser()
    a = p.parse_args(argv)
    check_numeric_flags(p, a, RANGES)
    device, amp = resolve_device_flags(p, a)
    if a.height is not None and a.height % 2:
        p.error(f"--height {a.height}: must be even (yuv420p)")
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        p.error(f"--checkpoint {ckpt}: no such file")
    if a.classes is not None and not Path(a.classes).is_file():
        p.error(f"--classes {a.classes}: no such file")
    videos = video_files(a.videos)
    out = a.out or str(run_dir(ckpt) / f"infer-{ckpt.stem}")
    for folder in (out, a.features):
        if folder and (problem := unwritable_folder(Path(folder))):  # now, not after all the files have run
            p.exit(2, f"error: {problem}\n")
    if not videos:
        p.error(f"no video files in {' '.join(a.videos)} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    if a.features:
        seen: dict[str, str] = {}
        for v in videos:
            if Path(v).suffix.lower() in STILL_EXTENSIONS:  # refused as a still later: never gets features
                continue
            if (other := seen.setdefault(video_id(v), v)) != v:
                p.error(f"--features: {other} and {v} would both be {video_id(v)!r} ({file_name(video_id(v))}); "
                        "HINT: give them separate --features folders (one run each)")
    skip = ("videos", "device", "amp", "out", "norm", "value_scale", "mean_values", "std_values")
    cfg = InferConfig(**{k: v for k, v in vars(a).items() if k not in skip}, videos=tuple(videos),
                      out=out, device=device, amp=amp,
                      normalisation=resolve_normalisation(p, a))
    try:
        record = checkpoint_record(ckpt, vars(cfg) | {"video_height": cfg.height}, None)
    except CheckpointError as e:
        p.error(with_flag_hints(str(e)))
    if cfg.classes is not None:
        names = read_classes(cfg.classes)
        if len(names) != len(record.class_names):
            p.error(f"--classes {cfg.classes}: {len(names)} names, the checkpoint has {len(record.class_names)} "
                    "classes")
        record = dataclasses.replace(record, class_names=tuple(names))
    if record.video_height % 2:
        p.error(f"{ckpt}: video height {record.video_height} is odd; HINT: add --height {record.video_height + 1}")
    return cfg, record


# ---- reading a video as prepare_data.py would store it ----------------------------------------------------------


class Frames:
    """The frames of one file: upright, constant rate, `height` px high (pipeline/video.py, as prepare_data.py
    stores videos); iterate for (y (H, W), uv (H/2, W)) uint8 NV12 planes, one per output frame. rate, width:
    known once iterating has begun. Rejected (str: the reason) when the file gives no frames, or only one (a still
    image: refused before any frame is given)."""

    def __init__(self, path: str, height: int):
        self.path, self.height = path, height
        self.rate: Fraction = Fraction(0)
        self.width = 0
        self.errors = 0
        self.count = 0  # frames given so far
        self.expected = 0  # frames expected from the container's duration (for the progress bar); 0: unknown
        check_readable(Path(path))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with open_source(self.path) as (container, vs):
            self.rate, _ = pick_rate(vs)
            if vs.duration and vs.time_base:
                self.expected = int(vs.duration * vs.time_base * self.rate)
            retimer, scaler, geometry = Retimer(container, vs, self.rate), VideoReformatter(), None
            for frame, count in retimer:
                if geometry is None:  # the first frame sets the geometry, as prepare_data.py's output
                    if retimer.end is not None and retimer.decoded == 1:  # nothing moves; nothing given yet
                        raise Rejected(f"a still image ({vs.codec_context.name}, one frame), not a video: nothing "
                                       "moves in it for the model to recognise")
                    geometry = Geometry.of(frame, vs.sample_aspect_ratio, self.height)
                    self.width = geometry.width
                if count > 0:
                    f = to_nv12(geometry.apply(frame, scaler))  # (H*3/2, W)
                    self.count += count
                    yield from [(f[:self.height], f[self.height:])] * count
            self.errors = retimer.errors


def windows(frames: Iterator[tuple[np.ndarray, np.ndarray]], length: int) -> Iterator[tuple[int, np.ndarray,
                                                                                                np.ndarray]]:
    """(start frame, y (T, H, W), uv (T, H/2, W)) of every non-overlapping window of `length` frames, where
    sampling.eval_starts places them (trailing frames that fill no window are left out); a video shorter than
    one window gives one window looped from frame 0 (sampling.clip_frames). Holds one window at a time."""
    ys, uvs, n, given = [], [], 0, 0
    for y, uv in frames:
        ys.append(y)
        uvs.append(uv)
        n += 1
        if len(ys) == length:
            yield n - length, np.stack(ys), np.stack(uvs)
            ys, uvs, given = [], [], given + 1
    if 0 < n < length:  # never filled a window: loop the frames there are
        idx = clip_frames(0, n, length).tolist()
        yield 0, np.stack([ys[i] for i in idx]), np.stack([uvs[i] for i in idx])
        given += 1
    assert n == 0 or given == len(eval_starts(n, length)), (n, given)


# ---- the model over windows ---------------------------------------------------------------------------------------


def window_clips(batch: list[tuple[int, np.ndarray, np.ndarray]], record, device: torch.device) -> torch.Tensor:
    """(N, 3, T, S, S) float32 clips on device of N windows (start, y (T, H, W), uv (T, H/2, W)) of one file:
    the centre square at the maximum scale, resized and normalised as in training."""
    y = torch.from_numpy(np.stack([w[1] for w in batch])).to(device, non_blocking=True)  # (N, T, H, W) uint8
    uv = torch.from_numpy(np.stack([w[2] for w in batch])).to(device, non_blocking=True)  # (N, T, H/2, W)
    n, _, h, w = y.shape
    box = crop_box(w, h, CENTER, 1.0)  # the centre square at the maximum scale
    clips = augment_nv12(y, uv, [[h, w]] * n, [box] * n, [False] * n, record.sample_size, record.normalisation)
    return clips.contiguous(memory_format=memory_format(device.type == "cuda"))


@torch.no_grad()
def window_outputs(model: torch.nn.Module, batch: list[tuple[int, np.ndarray, np.ndarray]], record,
                   device: torch.device, amp: bool, features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """((N, K) float64 class probabilities, (N, C) float32 pooled features or None) of N windows of one file;
    with features, the logits are the head's on the float32 features (engine.features.features_and_logits)."""
    clips = window_clips(batch, record, device)
    if features:
        feats, logits = features_and_logits(model, clips, amp)
    else:
        feats, logits = None, forward(model, clips, amp)
    probs = logits.softmax(1).double()  # (N, K)
    # CPU-GPU sync: once per batch (the timeline needs every window's scores)
    return probs.cpu().numpy(), None if feats is None else feats.cpu().numpy()


def infer_file(path: str, cfg: InferConfig, record, model, device, progress: Progress, task,
               writer: FeatureWriter | None = None) -> dict:
    """One file's result: {"probs": (K,) float64 mean window probability, "windows": [(start_s, (K,) probs)],
    "seconds": duration at the constant rate}; Rejected when it gives no frames. writer: --features, where the
    file's window features go once all are computed."""
    frames = Frames(path, record.video_height)
    total, rows, batch, n_windows, feats = np.zeros(len(record.class_names)), [], [], 0, []
    progress.update(task, completed=0, total=None, description=f"{Path(path).name[:40]}")

    def run() -> None:
        nonlocal n_windows
        probs, f = window_outputs(model, batch, record, device, cfg.amp, features=writer is not None)
        for (start, _, _), p in zip(batch, probs, strict=True):
            total[:] += p
            rows.append((float(start / frames.rate), p))
        if f is not None:
            feats.append(f)
        n_windows += len(batch)
        batch.clear()
        progress.update(task, completed=n_windows,
                        total=max(frames.expected // record.sample_duration, n_windows, 1))

    for window in windows(iter(frames), record.sample_duration):
        batch.append(window)
        if len(batch) == cfg.batch_size:
            run()
    if batch:
        run()
    if frames.errors:
        print(f"warning: {path}: {frames.errors} packets did not decode (their frames are lost)", file=sys.stderr)
    if writer is not None:
        vid, fps, f = video_id(path), float(frames.rate), np.concatenate(feats)  # (windows, C) float32
        writer.write(FeatureRow(video_id=vid, file=file_name(vid), source=path, frames=frames.count,
                                windows=len(f), dim=f.shape[1], fps=fps, start_s=0.0,
                                seconds_per_window=record.sample_duration / fps), f)
    return {"probs": total / n_windows, "windows": rows, "seconds": float(frames.count / frames.rate)}


@torch.no_grad()
def stored_result(row: FeatureRow, root: str, model, device: torch.device) -> dict:
    """infer_file's result for a file whose features are in DIR (row: its features.csv row), from them: the head's
    probabilities of each stored window, no decoding. FeaturesError when its .npy is unreadable."""
    probs = head_logits(model, load_features(Path(root), row), device).softmax(1).double().cpu().numpy()  # (W, K)
    return {"probs": probs.mean(0), "seconds": row.frames / row.fps,
            "windows": [(row.start_s + k * row.seconds_per_window, p) for k, p in enumerate(probs)]}


def main(argv: list[str] | None = None) -> int:
    cfg, record = parse_args(argv)
    try:
        return predict(cfg, record)
    except KeyboardInterrupt:  # one line, not a traceback (the exit statuses: the module docstring)
        kept = f" (but the features of the files finished, kept in {cfg.features})" if cfg.features else ""
        print(f"interrupted: nothing was written{kept} (the files come at the end); run the same command again",
              file=sys.stderr)
        return INTERRUPTED_EXIT


def predict(cfg: InferConfig, record: RunRecord) -> int:
    """Every file through the model, then the outputs and the table. Exit status: 0; 1 when a file failed; 2 when
    the checkpoint's weights do not fit the model the flags describe."""
    console = make_console(True)
    console.print(f"config: {json.dumps(shown_config(asdict(cfg)))}", highlight=False)
    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    model = build_model(**record.model_args)
    try:
        load_weights(model, cfg.checkpoint, strict_head=True, verbose=False)
    except CheckpointError as e:  # the flags describe another model: a usage error, as in parse_args
        print(f"error: {with_flag_hints(str(e))}", file=sys.stderr)
        return 2
    model = model.to(device, memory_format=memory_format(device.type == "cuda")).eval()
    fdir = writer = None
    if cfg.features:
        try:
            fdir = FeatureDir(cfg.features, describe(record, cfg.checkpoint, model, cfg.amp,
                                                     videos="infer.py: video files", video_height=record.video_height))
        except FeaturesError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        writer = FeatureWriter(cfg.features)
        try:
            return predict_files(cfg, record, model, device, console, fdir, writer)
        finally:  # also on Ctrl-C: features.csv lists the files finished
            writer.close()
            try:
                fdir.finish([video_id(v) for v in cfg.videos])
            except OSError as e:  # the .npy files and their rows (in the journal) are kept: the next run merges
                print(f"warning: cannot write {cfg.features}/features.csv ({e}); the next run writes it",
                      file=sys.stderr)
    return predict_files(cfg, record, model, device, console)


def predict_files(cfg: InferConfig, record: RunRecord, model, device: torch.device, console,
                  fdir: FeatureDir | None = None, writer: FeatureWriter | None = None) -> int:
    """predict's part after the model is built: the files, the outputs and the table."""
    console.print(f"{record.model_name()}, {len(record.class_names)} classes, "
                  f"clips {record.sample_duration} x {record.sample_size} px from videos {record.video_height} px "
                  f"high | normalisation {record.normalisation.describe()} | {len(cfg.videos)} file(s) on "
                  f"{device.type}", highlight=False)
    results, failed, stored = {}, [], 0
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=console.quiet) as progress:
        files = progress.add_task("files", total=len(cfg.videos))
        task = progress.add_task("windows", total=None)
        for path in cfg.videos:
            try:
                if fdir is not None and video_id(path) in fdir.done:  # written by an earlier run: not decoded
                    results[path] = stored_result(fdir.done[video_id(path)], cfg.features, model, device)
                    stored += 1
                else:
                    results[path] = infer_file(path, cfg, record, model, device, progress, task, writer)
            except Rejected as e:
                failed.append(path)
                print(f"error: {path}: {e}", file=sys.stderr)  # (rich's live display shows it above the bars)
            except (FeaturesError, OSError) as e:  # a stored .npy unreadable, or the disk full: nothing else can go on
                if isinstance(e, OSError) and not isinstance(e, NoSpace):
                    raise
                print(f"error: {e}; the features written so far are kept; HINT: fix it, then run the same command "
                      "again", file=sys.stderr)
                return 1
            progress.advance(files)
        progress.update(task, visible=False)
    if writer is not None:
        console.print(f"features: wrote {len(writer.written)} file(s), {stored} there already; {cfg.features}/"
                      "{features.csv, features.json, <video_id>.npy}", highlight=False)
    if results:
        print_table(console, results, record.class_names, cfg.top_k)
        try:
            write_outputs(cfg, record, results)
        except OSError as e:  # the disk filled up during the run: one line, not a traceback (the table is above)
            print(f"error: cannot write the results to {cfg.out} ({e})", file=sys.stderr)
            return 1
        console.print(f"wrote {cfg.out}/{{predictions.json, timeline.csv}}", highlight=False)
    if failed:
        print(f"{len(failed)} of {len(cfg.videos)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def write_outputs(cfg: InferConfig, record, results: dict) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = torch.from_numpy(np.stack([r["probs"] for r in results.values()]))  # (V, K) float64
    predictions = reference_predictions(probs, list(results), list(record.class_names), k=cfg.top_k)
    (out / "predictions.json").write_text(json.dumps(predictions) + "\n")
    with open(out / "timeline.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "start_s", "label", "score"])
        for path, r in results.items():
            for start_s, p in r["windows"]:
                writer.writerow([path, f"{start_s:.3f}", record.class_names[int(p.argmax())], f"{p.max():.6f}"])


def print_table(console, results: dict, class_names: tuple[str, ...], k: int) -> None:
    table = Table(title="predictions (mean over the 16-frame windows)")
    for col in ("file", "windows", "seconds", f"top {k}"):
        table.add_column(col, justify="right" if col in ("windows", "seconds") else "left")
    for path, r in results.items():
        best = np.argsort(-r["probs"], kind="stable")[:k]
        labels = "\n".join(f"{class_names[c]} {r['probs'][c]:.3f}" for c in best)
        table.add_row(path, str(len(r["windows"])), f"{r['seconds']:.1f}", labels)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
