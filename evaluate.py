"""Video-level recognition accuracy of a trained 3D ResNet, as in the paper's Table 2.

Every video is split into non-overlapping 16-frame clips (a shorter video gives one looped clip), each clip is
centre-cropped at the maximum scale, and the clips' class probabilities are averaged per video. --views K,C
evaluates the "K clips x C crops" protocol of PySlowFast and MMAction2 instead (pipeline/sampling.py:
view_starts, view_boxes).

  python evaluate.py --data DST --checkpoint runs/r34/checkpoints/best.pt   # -> runs/r34/eval-best-val/
  python evaluate.py --data DST --checkpoint CKPT --views 10,3              # 10 clips x 3 crops per video
  python evaluate.py --data DST --checkpoint resnet-34-kinetics.pth --arch resnet-34 --norm activitynet
  python evaluate.py --data DST --checkpoint r3d18_K_200ep.pth --arch resnet-18 --shortcut B --norm kinetics-0-1
  python evaluate.py --data DST --checkpoint CKPT --gpus 4    (or --nproc 2 on CPU, or under torchrun)

Writes OUT/metrics.json (with the protocol used), OUT/predictions.json (3D-ResNets-PyTorch format, top 5 per
video), OUT/per_class.csv and OUT/confusion.png, and prints a Table-2-style summary.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table

from engine import distributed
from engine.checkpoint import RunRecord, checkpoint_record, run_dir
from engine.cli import (
    CLIP_RANGES,
    DEVICE_RANGES,
    LOADER_RANGES,
    MODEL_RANGES,
    CheckpointOverrides,
    Range,
    add_clip_flags,
    add_device_flags,
    add_loader_flags,
    add_model_flags,
    check_numeric_flags,
    loader_backend,
    resolve_device_flags,
    resolve_normalisation,
    with_flag_hints,
)
from engine.distributed import Dist, Interrupted
from engine.metrics import VideoAccumulator, confusion_matrix, per_class_rows, reference_predictions
from engine.plots import plot_confusion
from engine.progress import StepBar, make_console
from engine.step import forward, memory_format, to_device
from model import CheckpointError, build_model, load_weights
from pipeline import DatasetError, build_loader
from pipeline.manifest import load_classes
from pipeline.sampling import eval_starts


@dataclass(frozen=True)
class EvalConfig(CheckpointOverrides):
    data: str
    checkpoint: str
    split: str = "val"
    out: str = ""  # resolved: default RUN_DIR/eval-<checkpoint stem>-<split>
    clips: int | None = None  # --views K,C: K clips x C crops per video; None: the paper's windows
    crops: int | None = None
    backend: str = "auto"  # engine.cli.loader_backend: pyav on the CPU, dali on a GPU
    batch_size: int = 64  # global, split evenly across processes
    num_threads: int = 4
    skip_bad: bool = False
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
    return k, c


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepare_data.py output folder")
    p.add_argument("--checkpoint", required=True, help="train.py's best.pt/last.pt, or a 3D-ResNets-PyTorch one")
    p.add_argument("--split", default="val", help="manifest to evaluate: train, val or test")
    p.add_argument("--out", default="", help="output folder (default: RUN_DIR/eval-<checkpoint>-<split>)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per step, split evenly across processes")
    g = p.add_argument_group("protocol (default: the paper's, every non-overlapping window, centre crop)")
    g.add_argument("--views", type=views_flag, metavar="K,C",
                   help="K clips with uniformly spaced starts x C square crops along the long side (1: centre, "
                        "3: both ends and centre), e.g. 10,3")
    g.add_argument("--clips", type=int, help="K of --views (--crops defaults to 1)")
    g.add_argument("--crops", type=int, help="C of --views (needs --clips)")
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
    clips, crops = a.views if a.views else (a.clips, None if a.clips is None else (a.crops or 1))
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        p.error(f"--checkpoint {ckpt}: no such file")
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
    return model.eval(), record, f"{record.model_args['arch']}-{record.model_args['shortcut']}"


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
    console.print(f"config: {json.dumps(asdict(cfg))}")
    on_gpu = d.device.type == "cuda"
    distributed.share_cpu_threads(d)
    class_names = load_classes(Path(cfg.data))
    model, record, name = load_model(cfg, class_names, d)
    views = None if cfg.clips is None else cfg.clips * cfg.crops
    backend = loader_backend(cfg.backend, on_gpu)
    loader = build_loader(Path(cfg.data), split=cfg.split, mode="eval" if views is None else "views",
                          clips=cfg.clips or 1, crops=cfg.crops or 1, backend=backend,
                          device="gpu" if on_gpu else "cpu", batch_size=cfg.batch_size // d.world_size,
                          rank=d.rank, world_size=d.world_size, num_threads=cfg.num_threads,
                          sample_duration=record.sample_duration, sample_size=record.sample_size,
                          normalisation=record.normalisation, device_id=d.local_rank if on_gpu else None,
                          skip_bad=cfg.skip_bad, progress=d.is_main)
    console.print(f"protocol: {cfg.protocol(record.sample_duration)['description']}; normalisation: "
                  f"{record.normalisation.describe()}; loader: {backend}")
    n_videos, n_classes = len(loader.videos), len(class_names)
    acc = VideoAccumulator(n_videos, n_classes, d.device)
    done = 0  # steps
    try:
        with StepBar(console, "eval", len(loader)) as bar:
            for step, (clips, labels, video_idx) in enumerate(loader):  # (N, 3, T, S, S) float32, (N,), (N,) int64
                clips, labels = to_device(clips, labels, d.device, channels_last=on_gpu)
                acc.add(forward(model, clips, cfg.amp), labels, video_idx.to(d.device))  # logits (N, K)
                done = step + 1
                bar.update(done)
        states = distributed.all_gather_objects(acc.state())  # the one CPU-GPU sync of the run
    except BaseException:  # Ctrl-C: KeyboardInterrupt, or what the C call it interrupted raised
        if not distributed.interrupted():
            raise
        raise Interrupted(f"interrupted after {done} of {len(loader)} steps; nothing was written (the files come "
                          "at the end); run the same command again") from None
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
                   normalisation=record.to_dict()["normalisation"])
    probs = total.video_probs()  # (V, K) float64
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    video_ids = [str(v) for v in loader.videos["video_id"]]
    predictions = reference_predictions(probs, video_ids, class_names)
    (out / "predictions.json").write_text(json.dumps(predictions) + "\n")
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "n", "top1", "top5"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_class_rows(probs, video_labels, class_names))
    matrix = confusion_matrix(probs.argmax(1), video_labels, n_classes).numpy()
    plot_confusion(matrix, class_names, out / "confusion.png", title=f"{name} on {cfg.data} {cfg.split}")
    print_summary(console, metrics, cfg.data)
    console.print(f"wrote {out}/{{metrics.json, predictions.json, per_class.csv, confusion.png}}")
    return metrics


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
    try:  # here too, before any process is spawned: a refusal is one line, not one per process
        run_record(cfg, load_classes(Path(cfg.data)))
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {with_flag_hints(str(e))}") from None
    distributed.launch(evaluate, cfg, cfg.world_size(), use_cuda=cfg.device == "cuda",
                       user_errors=(CheckpointError, DatasetError))


if __name__ == "__main__":
    main()
