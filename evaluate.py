"""Video-level recognition accuracy of a trained 3D ResNet, as in the paper's Table 2.

Every video is split into non-overlapping 16-frame clips (a shorter video gives one looped clip), each clip is
centre-cropped at the maximum scale, and the clips' class probabilities are averaged per video. --views K,C
evaluates PySlowFast's "K clips x C crops" test views instead, C = 1 or 3 (pipeline/sampling.py: view_starts,
view_boxes, which name the PySlowFast functions they reproduce).

  python evaluate.py --data DST --checkpoint runs/r34/checkpoints/best.pt   # -> runs/r34/eval-best-val/
  python evaluate.py --data DST --checkpoint CKPT --views 10,3              # 10 clips x 3 crops per video
  python evaluate.py --data DST --checkpoint resnet-34-kinetics.pth --arch resnet-34 --norm activitynet
  python evaluate.py --data DST --checkpoint r3d18_K_200ep.pth --arch resnet-18 --shortcut B --norm kinetics-0-1
  python evaluate.py --data DST --checkpoint CKPT --gpus 4    (or --nproc 2 on CPU, or under torchrun)
  python evaluate.py --data DST --checkpoint CKPT --split train --features feats/   # + every window's features

Writes OUT/metrics.json (with the protocol used), OUT/predictions.json (3D-ResNets-PyTorch format, top 5 per
video), OUT/per_class.csv, and for a split with labels OUT/confusion.csv (counts, row = true class) and
OUT/confusion.png, and prints a Table-2-style summary. OUT is checked to be writable before any work.

--features DIR also writes the pooled features (the classifier's input) of every window of every video, one
DIR/<video_id>.npy each, plus DIR/features.csv and DIR/features.json (engine/features.py). Each video is computed
whole by one rank; a video already in DIR is not decoded again (the metrics take its logits from its features), so
an interrupted run is finished by running the same command again.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from rich.table import Table

from engine import distributed
from engine.checkpoint import RunRecord, checkpoint_record, run_dir
from engine.cli import (
    CLIP_RANGES,
    DEVICE_RANGES,
    LOADER_DEFAULTS,
    LOADER_RANGES,
    MODEL_RANGES,
    CheckpointOverrides,
    Range,
    add_clip_flags,
    add_device_flags,
    add_loader_flags,
    add_model_flags,
    check_numeric_flags,
    loader_options,
    resolve_device_flags,
    resolve_normalisation,
    shown_config,
    unwritable_folder,
    with_flag_hints,
)
from engine.distributed import Dist, Interrupted
from engine.features import DatasetFeatures, FeatureDir, FeaturesError, describe
from engine.metrics import VideoAccumulator, confusion_matrix, per_class_rows, reference_predictions
from engine.plots import plot_confusion
from engine.progress import StepBar, make_console
from engine.step import forward, memory_format, to_device
from model import CheckpointError, build_model, load_weights
from pipeline import DatasetError, build_loader
from pipeline.manifest import held_out_manifest, load_classes, manifest_names
from pipeline.sampling import VIEW_CROPS, eval_starts
from prepare.run import interrupted_preparation


@dataclass(frozen=True)
class EvalConfig(CheckpointOverrides):
    data: str
    checkpoint: str
    split: str = "val"
    out: str = ""  # resolved: default RUN_DIR/eval-<checkpoint stem>-<split>
    clips: int | None = None  # --views K,C: K clips x C crops per video; None: the paper's windows
    crops: int | None = None
    batch_size: int = 64  # global, split evenly across processes
    backend: str = LOADER_DEFAULTS.backend
    workers: int = LOADER_DEFAULTS.workers
    skip_bad: bool = LOADER_DEFAULTS.skip_bad
    features: str | None = None  # --features DIR: also write every window's pooled features there
    # the model and clips (arch ... normalisation): CheckpointOverrides
    # run
    device: str = "cpu"
    gpus: int = 1
    nproc: int = 1
    amp: bool = False

    def world_size(self) -> int:
        return distributed.world_size(self.device, self.gpus, self.nproc)

    def protocol(self, sample_duration: int) -> dict:
        """How the videos are cut into clips, for metrics.json and the summary."""
        if self.clips is None:
            return {"name": "windows", "clips": "all", "crops": 1,
                    "description": f"every non-overlapping {sample_duration}-frame window x 1 centre crop"}
        return {"name": "views", "clips": self.clips, "crops": self.crops,
                "description": f"{self.clips} clips x {self.crops} crops"}


# Every numeric flag's allowed values; parse_args rejects the rest with a one-line usage error.
RANGES = {**LOADER_RANGES, **DEVICE_RANGES, **MODEL_RANGES, **CLIP_RANGES,
          **{name: Range(min=1) for name in ("batch_size", "clips", "crops")}}


def views_flag(text: str) -> tuple[int, int]:
    """--views K,C -> (K, C), both >= 1."""
    try:
        k, c = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K,C (clips,crops), e.g. 10,3") from None
    if k < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: K and C must be >= 1")
    if c not in VIEW_CROPS:
        raise argparse.ArgumentTypeError(f"{text!r}: C must be 1 (centre) or 3 (both ends and the centre)")
    return k, c


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepare_data.py output folder")
    p.add_argument("--checkpoint", required=True, help="train.py's best.pt/last.pt, or a 3D-ResNets-PyTorch one")
    p.add_argument("--split", default="val", help="manifest to evaluate: train, val, test, ... (DST/<split>.csv), "
                   "or a split number K: testK.csv (valK.csv where there is none)")
    p.add_argument("--out", default="", help="output folder (default: RUN_DIR/eval-<checkpoint>-<split>)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per step, split evenly across processes")
    g = p.add_argument_group("protocol (default: the paper's, every non-overlapping window, centre crop)")
    g.add_argument("--views", type=views_flag, metavar="K,C",
                   help="K clips with uniformly spaced starts x C square crops along the long side (1: centre, "
                        "3: both ends and centre), e.g. 10,3")
    g.add_argument("--clips", type=int, help="K of --views (--crops defaults to 1)")
    g.add_argument("--crops", type=int, help="C of --views (needs --clips)")
    p.add_argument("--features", metavar="DIR", help="also write the pooled features of every window of every "
                                                      "video to DIR (<video_id>.npy, features.csv, features.json); "
                                                      "videos already there are not computed again")
    add_loader_flags(p)
    add_model_flags(p)
    add_clip_flags(p)
    add_device_flags(p.add_argument_group("run"))
    return p


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    p = build_parser()
    a = p.parse_args(argv)
    check_numeric_flags(p, a, RANGES)
    device, amp = resolve_device_flags(p, a)
    normalisation = resolve_normalisation(p, a)
    if a.views is not None and (a.clips is not None or a.crops is not None):
        p.error("--views K,C and --clips/--crops say the same thing: give one")
    if a.crops is not None and a.clips is None:
        p.error(f"--crops {a.crops} needs --clips K (or use --views K,{a.crops})")
    if a.crops is not None and a.crops not in VIEW_CROPS:
        p.error(f"--crops {a.crops}: must be 1 (centre) or 3 (both ends and the centre)")
    clips, crops = a.views if a.views else (a.clips, None if a.clips is None else (a.crops or 1))
    if a.features and clips is not None:
        p.error("--features: the features are those of the paper's windows; drop --views/--clips/--crops")
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        p.error(f"--checkpoint {ckpt}: no such file")
    a.split = held_out_manifest(Path(a.data), a.split)
    if Path(a.data).is_dir() and not (Path(a.data) / f"{a.split}.csv").is_file():
        names = manifest_names(Path(a.data))
        p.error(f"{a.data}/{a.split}.csv not found; manifests there: {', '.join(names) or 'none'}"
                + ("; HINT: --split K evaluates testK.csv" if any(n.removeprefix("test").isdigit() for n in names)
                   else ""))
    out = a.out or str(run_dir(ckpt) / f"eval-{ckpt.stem}-{a.split}")
    skip = ("device", "amp", "out", "views", "clips", "crops", "norm", "value_scale", "mean_values", "std_values")
    fields = {k: v for k, v in vars(a).items() if k not in skip}
    cfg = EvalConfig(**fields, out=out, device=device, amp=amp, clips=clips, crops=crops,
                     normalisation=normalisation)
    if cfg.batch_size % cfg.world_size():
        p.error(f"--batch-size {cfg.batch_size} is not divisible by {cfg.world_size()} processes")
    return cfg


def run_record(cfg: EvalConfig, class_names: list[str]) -> RunRecord:
    """The model and clips to evaluate: the checkpoint's and the flags' (engine.checkpoint.checkpoint_record), or
    CheckpointError."""
    return checkpoint_record(cfg.checkpoint, vars(cfg), class_names, cfg.data)  # vars: the fields, not copied


def load_model(cfg: EvalConfig, class_names: list[str], d: Dist) -> tuple[torch.nn.Module, RunRecord, str]:
    """(model in eval mode on d.device, the run record it is evaluated with, description); see run_record."""
    path = Path(cfg.checkpoint)
    record = run_record(cfg, class_names)
    model = build_model(**record.model_args)
    load_weights(model, path, strict_head=True, verbose=d.is_main)
    model = model.to(d.device, memory_format=memory_format(d.device.type == "cuda"))
    return model.eval(), record, record.model_name()


def expected_clips(videos, sample_duration: int, views: int | None = None) -> torch.Tensor:
    """(V,) int64: clips per video, to check every clip came once: the windows of eval mode (the pipeline's
    rule), or `views` (K x C) each."""
    if views is not None:
        return torch.full((len(videos),), views, dtype=torch.int64)
    lengths = (videos["end_frame"] - videos["start_frame"]).tolist()
    return torch.tensor([len(eval_starts(n, sample_duration)) for n in lengths], dtype=torch.int64)


@torch.no_grad()
def evaluate(cfg: EvalConfig, d: Dist) -> dict | None:
    """Run the evaluation on this rank; rank 0 merges, checks, writes the files and returns the metrics."""
    console = make_console(d.is_main)
    # Rank 0 writes OUT, at the end: find out now, all ranks together (one leaving alone would leave the others
    # waiting for it in their first collective).
    if problem := distributed.first_problem(unwritable_folder(Path(cfg.out)) if d.is_main else None):
        raise SystemExit(f"error: {problem}")
    console.print(f"config: {json.dumps(shown_config(asdict(cfg)))}", highlight=False)
    if warning := interrupted_preparation(Path(cfg.data)):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    on_gpu = d.device.type == "cuda"
    distributed.share_cpu_threads(d)
    class_names = load_classes(Path(cfg.data))
    model, record, name = load_model(cfg, class_names, d)
    fdir = open_features(cfg, record, model, d) if cfg.features else None
    views = None if cfg.clips is None else cfg.clips * cfg.crops
    options = loader_options(cfg, d, cfg.batch_size)  # --backend auto resolved for this machine
    loader = build_loader(Path(cfg.data), split=cfg.split, mode="eval" if views is None else "views",
                          clips=cfg.clips or 1, crops=cfg.crops or 1, sample_duration=record.sample_duration,
                          sample_size=record.sample_size, normalisation=record.normalisation, **options)
    console.print(f"protocol: {cfg.protocol(record.sample_duration)['description']}; normalisation: "
                  f"{record.normalisation.describe()}; loader: {options['backend']}")
    ids = loader.videos["video_id"]
    if ids.duplicated().any():  # every rank sees it: all stop, with one line
        vid = ids[ids.duplicated()].iloc[0]
        loader.close()
        raise DatasetError(f"{cfg.data}/{cfg.split}.csv: video_id {vid!r} is listed {int((ids == vid).sum())} "
                           "times: its video would count more than once in the accuracy; HINT: prepare the dataset "
                           "again with prepare_data.py (it keeps one row per video and lists the others in "
                           "rejected.csv)")
    n_videos, n_classes = len(loader.videos), len(class_names)
    acc = VideoAccumulator(n_videos, n_classes, d.device)
    feats = None
    if cfg.features:  # whole videos per rank, those not in DIR yet
        feats = DatasetFeatures(cfg.features, loader.videos, expected_clips(loader.videos, record.sample_duration)
                                .numpy(), None if fdir is None else fdir.done, cfg.data, record.sample_duration,
                                d.rank, d.world_size)
        loader.only_videos(feats.compute)
        console.print(f"features: {feats.n_todo} videos to compute into {cfg.features}, {feats.n_stored} there "
                      "already", highlight=False)
    done = 0  # steps
    try:
        if feats is not None:  # the videos written before count with the logits of their stored features
            for v, logits in feats.stored_logits(model, d.device):
                acc.add(logits, torch.full((len(logits),), int(loader.labels[v]), device=d.device),
                        torch.full((len(logits),), v, device=d.device))
        with StepBar(console, "eval", len(loader)) as bar:
            for step, (clips, labels, video_idx) in enumerate(loader):  # (N, 3, T, S, S) float32, (N,), (N,) int64
                clips, labels = to_device(clips, labels, d.device, channels_last=on_gpu)
                logits = (forward(model, clips, cfg.amp) if feats is None
                          else feats.run(model, clips, video_idx, cfg.amp))  # (N, K)
                acc.add(logits, labels, video_idx.to(d.device))
                done = step + 1
                bar.update(done)
        states = distributed.all_gather_objects(acc.state())  # the one CPU-GPU sync of the run
        features_done = feats.finish(fdir) if feats is not None else None  # collective; rank 0 writes features.csv
    except BaseException:  # Ctrl-C: KeyboardInterrupt, or what the C call it interrupted raised
        if not distributed.interrupted():
            raise
        kept = f"; the features written so far are kept in {cfg.features}" if cfg.features else ""
        raise Interrupted(f"interrupted after {done} of {len(loader)} steps; nothing was written (the files come "
                          f"at the end){kept}; run the same command again") from None
    finally:
        loader.close()  # DALI threads / decord worker processes end here; loader.videos stays usable
    if not d.is_main:
        return None

    total = VideoAccumulator.merge(states, n_videos, n_classes)
    expected = expected_clips(loader.videos, record.sample_duration, views)
    wrong = (total.counts != expected).nonzero().flatten().tolist()
    if wrong:  # a loader or sharding bug: every window of every video must reach the sums exactly once
        v = wrong[0]
        vid, got, want = loader.videos["video_id"][v], int(total.counts[v]), int(expected[v])
        raise RuntimeError(f"{len(wrong)} of {n_videos} videos not counted exactly once, e.g. {vid!r}: "
                           f"{got} clips, expected {want}")
    video_labels = torch.tensor(loader.videos["label"].to_numpy(), dtype=torch.int64)
    metrics = total.summary(video_labels)
    metrics.update(split=cfg.split, checkpoint=cfg.checkpoint, model=name, n_classes=n_classes,
                   world_size=d.world_size, protocol=cfg.protocol(record.sample_duration),
                   input=record.to_dict()["input"])
    probs = total.video_probs()  # (V, K) float64
    out = Path(cfg.out)
    try:
        written = write_results(out, metrics, probs, [str(v) for v in loader.videos["video_id"]], video_labels,
                                class_names, title=f"{name}, {Path(cfg.data).name} {cfg.split}")
    except OSError as e:  # the disk filled up during the run: one line, not a traceback (the numbers are above)
        print_summary(console, metrics, cfg.data)
        raise SystemExit(f"error: cannot write the results to {out} ({e})") from None
    if "confusion.csv" not in written:
        console.print(f"no confusion matrix: no video of the {cfg.split} split has a label (label -1)")
    print_summary(console, metrics, cfg.data)
    console.print(f"wrote {out}/{{{', '.join(written)}}}", highlight=False)
    if features_done is not None:
        per_rank = f" ({', '.join(f'rank {r}: {n}' for r, n in enumerate(features_done['written']))})"
        console.print(f"features: wrote {sum(features_done['written'])} videos"
                      f"{per_rank if d.world_size > 1 else ''}, {features_done['stored']} there already; "
                      f"{cfg.features}/{{features.csv, features.json, <video_id>.npy}}", highlight=False)
    return metrics


def open_features(cfg: EvalConfig, record: RunRecord, model: torch.nn.Module, d: Dist) -> FeatureDir | None:
    """--features DIR, taken by rank 0 (FeatureDir: lock, features.json, the videos written before; None on the
    other ranks); all ranks stop together, with one line, when it cannot be used."""
    fdir, problem = None, None
    if d.is_main:
        try:
            fdir = FeatureDir(cfg.features, describe(record, cfg.checkpoint, model, cfg.amp,
                                                     videos=f"evaluate.py: {cfg.data} {cfg.split}"))
        except FeaturesError as e:
            problem = str(e)
    if problem := distributed.first_problem(problem):
        raise SystemExit(f"error: {problem}")
    return fdir


def write_results(out: Path, metrics: dict, probs: torch.Tensor, video_ids: list[str], video_labels: torch.Tensor,
                  class_names: list[str], title: str) -> list[str]:
    """The output files (names returned): metrics.json, predictions.json, per_class.csv, and where some video has
    a label, confusion.csv and confusion.png. probs: (V, K) float64 video probabilities; video_labels: (V,) int64."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "predictions.json").write_text(json.dumps(reference_predictions(probs, video_ids, class_names)) + "\n")
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "n", "top1", "top5"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_class_rows(probs, video_labels, class_names))
    written = ["metrics.json", "predictions.json", "per_class.csv"]
    if metrics["n_labelled_videos"]:
        matrix = confusion_matrix(probs.argmax(1), video_labels, len(class_names)).numpy()  # (K, K) int64
        write_confusion_csv(matrix, class_names, out / "confusion.csv")
        plot_confusion(matrix, class_names, out / "confusion.png", title=title)
        written += ["confusion.csv", "confusion.png"]
    return written


def write_confusion_csv(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    """matrix (K, K) int counts, row = true class, column = predicted class, as a CSV with the class names as
    header and first column (pandas: read_csv(path, index_col=0)); readable at any class count, unlike the PNG."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["true \\ predicted", *class_names])
        writer.writerows([name, *(int(x) for x in row)] for name, row in zip(class_names, matrix, strict=True))


def print_summary(console, m: dict, data_name: str) -> None:
    """The paper's Table 2 columns (video top-1, top-5, their average) plus clip accuracy, in percent, under a
    title that names the protocol."""
    table = Table(title=f"{data_name} {m['split']}: {m['n_videos']} videos, {m['n_clips']} clips "
                        f"({m['protocol']['description']})")
    for col in ("Method", "Top-1", "Top-5", "Average", "Clip top-1", "Clip top-5"):
        table.add_column(col, justify="left" if col == "Method" else "right")
    pct = [m[k] for k in ("video_top1", "video_top5", "video_avg", "clip_top1", "clip_top5")]
    table.add_row(f"3D {m['model']}", *("n/a" if v is None else f"{100 * v:.1f}" for v in pct))
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    # Here too, before the launcher starts any process: a refusal is one line, not one per process. Not under torchrun, where
    # every process runs main(): there evaluate() checks, all ranks together.
    if not distributed.launched_by_torchrun():
        for folder in (cfg.out, cfg.features):
            if folder and (problem := unwritable_folder(Path(folder))):
                raise SystemExit(f"error: {problem}")
    try:
        run_record(cfg, load_classes(Path(cfg.data)))
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {with_flag_hints(str(e))}") from None
    distributed.launch(evaluate, cfg, cfg.world_size(), use_cuda=cfg.device == "cuda",
                       user_errors=(CheckpointError, DatasetError))


if __name__ == "__main__":
    main()
