"""Training throughput of the model zoo (the 3D ResNets and the other families of model/): train.py's training step
(engine.step: host-to-device copy, forward, backward, SGD step), in clips/s, and peak memory; each model's
parameters and forward multiply-adds per clip are printed first (model.model_cost).

Synthetic mode (this file): one pre-generated batch of (N, 3, 16, 112, 112) float32 clips is reused
every step, so the number is the model's ceiling with a free loader. `time_training_steps` takes any
iterator of (clips, labels[, ...]) batches, so an end-to-end mode can pass the real loader instead
and compare against this baseline.

    python benchmarks/train_speed.py --arch resnet-18,resnet-34 --batch-size 8 --device cpu
    python benchmarks/train_speed.py --arch zoo --batch-size 32 --precision bf16 --channels-last  # one per family
    python benchmarks/train_speed.py --arch zoo --shortcut B --cost-only   # parameters and MACs only, no timing
    python benchmarks/train_speed.py --arch resnet-18 --batch-size 64,128 --precision bf16 --channels-last --compile

End-to-end mode (--data DST): the same training steps fed by the real loader (pipeline.build_loader, train
mode, --backend dali|decord|nvdec) and by synthetic tensors of the same shape, on the same model; the ratio
real/synthetic is the share of the model's speed the loader delivers (1.0 = the GPU never starves).

    python benchmarks/train_speed.py --data DST --backend dali --arch resnet-18 --batch-size 64 --precision bf16

Each case: build the model, --warmup steps (includes torch.compile time), then --repeats timed runs of
--iters steps each, synchronising before every clock read; the table shows the median run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from engine.cli import model_arg_message  # noqa: E402
from engine.step import memory_format, to_device, train_step  # noqa: E402
from model import ARCHS, ModelArgError, ModelCost, build_model, check_model_args, model_cost, takes  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity), matched against the
# device name in order; --peak-tflops overrides.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (the name reads "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
TRAIN_FLOPS_PER_FWD_MAC = 6  # 1 MAC = 2 FLOPs; backward ~2x forward (grads w.r.t. inputs and weights)
# --arch zoo: one depth of each family, those with published Kinetics weights, next to the paper's two ResNets.
ZOO = ("resnet-18", "resnet-34", "preresnet-200", "resnext-101", "wideresnet-50", "densenet-121", "r2plus1d-18")


@dataclass(frozen=True)
class Config:
    archs: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    channels_last: bool
    compile: bool
    device: str
    warmup: int
    iters: int
    repeats: int
    n_classes: int
    widen_factor: float
    shortcut: str
    frames: int
    size: int
    peak_tflops: float | None
    threads: int | None
    json: Path | None
    data: Path | None = None  # end-to-end mode: a prepare_data.py output folder
    backend: str = "dali"
    loader_threads: int = 4
    cost_only: bool = False  # print each model's parameters and multiply-adds per clip, time nothing


@dataclass(frozen=True)
class StepTimes:
    """Wall time of a run of training steps (device synchronised at both ends)."""

    seconds: float
    steps: int
    clips: int
    data_wait_s: float  # host time spent waiting in next(batches); ~0 for synthetic batches


def _csv(kind: type) -> Any:
    return lambda text: tuple(kind(v) for v in text.split(",") if v)


def _archs(text: str) -> tuple[str, ...]:
    """--arch: a comma list of architectures, where "zoo" stands for ZOO."""
    return tuple(a for name in _csv(str)(text) for a in (ZOO if name == "zoo" else (name,)))


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("what to measure (comma lists: every combination is a row)")
    g.add_argument(
        "--arch", type=_archs, default=("resnet-18", "resnet-34"),
        help=f"any of model.ARCHS (resnet-18, resnext-101, ...); zoo = {','.join(ZOO)}"
    )
    g.add_argument("--batch-size", type=_csv(int), default=(8,))
    g.add_argument("--precision", type=_csv(str), default=("fp32",), help="fp32 | bf16 (autocast)")
    g.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=False, help="channels_last_3d"
    )
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    g = p.add_argument_group("model and input")
    g.add_argument("--n-classes", type=int, default=400)
    g.add_argument("--widen-factor", type=float, default=1.0)
    g.add_argument("--shortcut", choices=("A", "B"), default="A", help="for the families that have shortcuts")
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--size", type=int, default=112)
    g = p.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps per case (include compile time)")
    g.add_argument("--iters", type=int, default=10, help="steps per timed run")
    g.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is reported")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not in the table"
    )
    g.add_argument("--json", type=Path, default=None, help="also write the rows here")
    g.add_argument("--cost-only", action="store_true",
                   help="only count each model's parameters and forward multiply-adds per clip (meta device)")
    g = p.add_argument_group("end-to-end mode: real loader vs synthetic tensors")
    g.add_argument("--data", type=Path, default=None, help="prepared dataset (prepare_data.py --out); enables the mode")
    g.add_argument("--backend", choices=("dali", "decord", "nvdec"), default="dali")
    g.add_argument("--loader-threads", type=int, default=4, help="DALI threads / decord workers")
    a = p.parse_args(argv)
    if a.data is not None and not (a.data / "train.csv").is_file():
        p.error(f"--data {a.data}: no train.csv; HINT: python prepare_data.py SRC --out {a.data}")

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device; use --device cpu")
    if bad := [x for x in a.arch if x not in ARCHS]:
        p.error(f"unknown --arch {', '.join(bad)}; choose from {', '.join(ARCHS)} or zoo")
    for arch in a.arch:
        try:
            check_model_args(**model_args(arch, a.n_classes, a.shortcut, a.widen_factor))
        except ModelArgError as e:
            p.error(f"--arch {arch}: {model_arg_message(e)}")
    if bad := [x for x in a.precision if x not in ("fp32", "bf16")]:
        p.error(f"unknown --precision {', '.join(bad)}; choose fp32 or bf16")
    if min(a.batch_size, default=0) < 1 or a.iters < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--batch-size, --iters and --repeats must be >= 1, --warmup >= 0")
    return Config(
        archs=a.arch,
        batch_sizes=a.batch_size,
        precisions=a.precision,
        channels_last=a.channels_last,
        compile=a.compile,
        device=device,
        warmup=a.warmup,
        iters=a.iters,
        repeats=a.repeats,
        n_classes=a.n_classes,
        widen_factor=a.widen_factor,
        shortcut=a.shortcut,
        frames=a.frames,
        size=a.size,
        peak_tflops=a.peak_tflops,
        threads=a.threads,
        json=a.json,
        data=a.data,
        backend=a.backend,
        loader_threads=a.loader_threads,
        cost_only=a.cost_only,
    )


# ---------------------------------------------------------------- measuring


def model_args(arch: str, n_classes: int, shortcut: str, widen_factor: float) -> dict[str, Any]:
    """build_model's arguments for one row: --shortcut where the family has shortcuts (not DenseNet)."""
    return {"arch": arch, "n_classes": n_classes, "widen_factor": widen_factor,
            "shortcut": shortcut if takes(arch, "shortcut") else "A"}


def cost_per_clip(cfg: Config, arch: str) -> ModelCost:
    """Parameters and forward multiply-adds of one (3, frames, size, size) clip, convs and fc only (BN, ReLU,
    pooling are < 1% and not counted). Counted on the meta device: no memory, no compute."""
    return model_cost(cfg.frames, cfg.size, **model_args(arch, cfg.n_classes, cfg.shortcut, cfg.widen_factor))


def synthetic_batches(
    batch_size: int, n_classes: int, frames: int, size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same random batch forever: clips (N, 3, T, S, S) float32 ~ N(0, 1), labels (N,) int64, on `device`."""
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(batch_size, 3, frames, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (batch_size,), generator=gen).to(device)
    return itertools.repeat((clips, labels))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CPU-GPU sync: the clock must see finished kernels


def time_training_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Sequence[torch.Tensor]],
    steps: int,
    *,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
) -> StepTimes:
    """Run `steps` of train.py's training steps on batches drawn from `batches` (each (clips, labels, ...); clips
    (N, 3, T, H, W) float on any device, labels (N,) int64) and time them end to end."""
    n_clips, data_wait = 0, 0.0
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t0
        clips, labels = to_device(batch[0], batch[1], device, channels_last)
        train_step(model, optimizer, clips, labels, amp)
        n_clips += clips.shape[0]
    _sync(device)
    return StepTimes(time.perf_counter() - start, steps, n_clips, data_wait)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated by torch in this case. CPU: the process's peak RSS so far (cannot be reset,
    so on CPU it is the max over this and all earlier cases)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def build_for_training(cfg: Config, arch: str, n_classes: int, device: torch.device) -> tuple[nn.Module, Any]:
    """(the model to run, possibly compiled; its SGD optimiser), laid out as cfg says."""
    torch.manual_seed(0)
    model = build_model(**model_args(arch, n_classes, cfg.shortcut, cfg.widen_factor))
    model = model.to(device, memory_format=memory_format(cfg.channels_last))
    # The paper's optimiser settings; lr 0.01 rather than 0.1 so random labels do not blow up the weights.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    return (torch.compile(model) if cfg.compile else model), optimizer


def bench_case(
    cfg: Config, arch: str, batch_size: int, precision: str, cost: ModelCost, peak: float | None
) -> dict:
    """Build the model, warm up, time `repeats` runs; one table row."""
    device = torch.device(cfg.device)
    row: dict[str, Any] = {
        "arch": arch,
        "batch_size": batch_size,
        "precision": precision,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "device": cfg.device,
        "params_m": round(cost.parameters / 1e6, 3),
        "fwd_gmacs_per_clip": round(cost.macs / 1e9, 3),
    }
    run, optimizer = build_for_training(cfg, arch, cfg.n_classes, device)
    batches = synthetic_batches(batch_size, cfg.n_classes, cfg.frames, cfg.size, device)
    kw = {"device": device, "amp": precision == "bf16", "channels_last": cfg.channels_last}
    _reset_peak_memory(device)
    try:
        warm = time_training_steps(run, optimizer, batches, cfg.warmup, **kw)
        runs = [time_training_steps(run, optimizer, batches, cfg.iters, **kw) for _ in range(cfg.repeats)]
    except torch.cuda.OutOfMemoryError:
        return row | {"error": "out of memory"}
    rates = [r.clips / r.seconds for r in runs]
    median = statistics.median(rates)
    tflops = median * TRAIN_FLOPS_PER_FWD_MAC * cost.macs / 1e12
    return row | {
        "clips_per_s": round(median, 3),
        "clips_per_s_runs": [round(r, 3) for r in rates],
        "ms_per_step": round(1e3 * batch_size / median, 2),
        "warmup_s": round(warm.seconds, 2),
        "tflops": round(tflops, 4),
        "frac_bf16_peak": round(tflops / peak, 4) if peak else None,
        "peak_mem_mib": round(_peak_memory_mib(device), 1),
    }


def loader_batches(loader: Any) -> Iterator[Sequence[torch.Tensor]]:
    """The loader's batches, epoch after epoch (set_epoch 0, 1, ...), forever."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def bench_end_to_end(cfg: Config, arch: str, batch_size: int, precision: str) -> dict:
    """One model, timed on the real loader's batches and on synthetic batches of the same shape.

    Each source: --warmup untimed steps (they absorb the pipeline's start-up), then --repeats runs of --iters
    steps, alternating real and synthetic runs; the medians are compared.
    """
    from pipeline import build_loader  # only this mode needs the pipeline (DALI / decord)

    device = torch.device(cfg.device)
    on_gpu = device.type == "cuda"
    phases: dict[str, list[StepTimes]] = {"real": [], "synthetic": []}
    # the loader's DALI threads / decord workers end with the block, before the next case builds another loader
    with build_loader(cfg.data, split="train", mode="train", backend=cfg.backend, device="gpu" if on_gpu else "cpu",
                      batch_size=batch_size, workers=cfg.loader_threads, sample_duration=cfg.frames,
                      sample_size=cfg.size, device_id=(device.index or 0) if on_gpu else None) as loader:
        n_classes = len(loader.class_names)
        run, optimizer = build_for_training(cfg, arch, n_classes, device)
        kw = {"device": device, "amp": precision == "bf16", "channels_last": cfg.channels_last}
        sources = {"real": loader_batches(loader),
                   "synthetic": synthetic_batches(batch_size, n_classes, cfg.frames, cfg.size, device)}
        for batches in sources.values():
            time_training_steps(run, optimizer, batches, cfg.warmup, **kw)
        for _ in range(cfg.repeats):  # interleaved, so a change in machine load hits both sides alike
            for name, batches in sources.items():
                phases[name].append(time_training_steps(run, optimizer, batches, cfg.iters, **kw))
    real = statistics.median(r.clips / r.seconds for r in phases["real"])
    synthetic = statistics.median(r.clips / r.seconds for r in phases["synthetic"])
    wait = statistics.median(r.data_wait_s / r.seconds for r in phases["real"])
    return {
        "mode": "end-to-end", "data": str(cfg.data), "backend": cfg.backend, "loader_threads": cfg.loader_threads,
        "arch": arch, "widen_factor": cfg.widen_factor, "size": cfg.size, "batch_size": batch_size,
        "precision": precision, "channels_last": cfg.channels_last, "compile": cfg.compile, "device": cfg.device,
        "real_clips_per_s": round(real, 3), "synthetic_clips_per_s": round(synthetic, 3),
        "ratio": round(real / synthetic, 3), "data_wait_share": round(wait, 3),
        "real_runs": [round(r.clips / r.seconds, 3) for r in phases["real"]],
        "synthetic_runs": [round(r.clips / r.seconds, 3) for r in phases["synthetic"]],
    }


# ---------------------------------------------------------------- reporting


def cost_row(cfg: Config, arch: str, cost: ModelCost) -> dict:
    """--cost-only: one model's row (its shortcut is --shortcut's where the family has shortcuts)."""
    args = model_args(arch, cfg.n_classes, cfg.shortcut, cfg.widen_factor)
    return {"mode": "cost", "arch": arch, "shortcut": args["shortcut"] if takes(arch, "shortcut") else None,
            "widen_factor": cfg.widen_factor, "n_classes": cfg.n_classes, "frames": cfg.frames, "size": cfg.size,
            "params": cost.parameters, "fwd_macs_per_clip": cost.macs}


def print_cost_table(console: Console, rows: list[dict], cfg: Config) -> None:
    table = Table(title=f"cost per {cfg.frames}x{cfg.size}x{cfg.size} clip, {cfg.n_classes} classes (convs + fc)")
    for name in ("arch", "shortcut", "parameters (M)", "forward multiply-adds (G)"):
        table.add_column(name, justify="left" if name in ("arch", "shortcut") else "right")
    for r in rows:
        table.add_row(r["arch"], r["shortcut"] or "-", f"{r['params'] / 1e6:.2f}", f"{r['fwd_macs_per_clip'] / 1e9:.2f}")
    console.print(table)


def print_end_to_end_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="end-to-end training: real loader vs synthetic tensors (median of repeats)")
    for name in ("arch", "batch", "precision", "backend", "real clips/s", "synthetic clips/s", "ratio", "data wait"):
        table.add_column(name, justify="left" if name in ("arch", "backend") else "right")
    for r in rows:
        table.add_row(r["arch"], str(r["batch_size"]), r["precision"], r["backend"], f"{r['real_clips_per_s']:.2f}",
                      f"{r['synthetic_clips_per_s']:.2f}", f"{r['ratio']:.2f}", f"{r['data_wait_share']:.0%}")
    console.print(table)
    console.print("ratio = real / synthetic: the share of the model's training speed the loader sustains")


def environment(cfg: Config) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if cfg.device == "cuda":
        env["cudnn"] = str(torch.backends.cudnn.version())
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["cudnn"] = "n/a"
        env["device_name"] = _cpu_name()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bf16_peak_tflops(cfg: Config, device_name: str) -> float | None:
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops
    if cfg.device != "cuda":
        return None
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def print_table(console: Console, rows: list[dict], show_peak: bool) -> None:
    table = Table(title="training step throughput (synthetic clips, median of repeats)")
    for name in (
        "arch",
        "params M",
        "GMACs/clip",
        "batch",
        "precision",
        "memory format",
        "compile",
        "clips/s",
        "runs (clips/s)",
        "ms/step",
    ):
        table.add_column(name, justify="right" if name not in ("arch", "memory format") else "left")
    table.add_column("TFLOP/s", justify="right")
    if show_peak:
        table.add_column("% bf16 peak", justify="right")
    table.add_column("peak mem MiB", justify="right")
    for r in rows:
        cells = [r["arch"], f"{r['params_m']:.2f}", f"{r['fwd_gmacs_per_clip']:.2f}", str(r["batch_size"]), r["precision"],
                 "channels_last_3d" if r["channels_last"] else "contiguous", "yes" if r["compile"] else "no"]  # fmt: skip
        if "error" in r:
            table.add_row(*cells, r["error"], *[""] * (len(table.columns) - len(cells) - 1))
            continue
        cells += [f"{r['clips_per_s']:.2f}", " ".join(f"{x:.2f}" for x in r["clips_per_s_runs"]), f"{r['ms_per_step']:.0f}",
                  f"{r['tflops']:.3f}"]  # fmt: skip
        if show_peak:
            cells.append(f"{100 * r['frac_bf16_peak']:.1f}" if r["frac_bf16_peak"] is not None else "?")
        table.add_row(*cells, f"{r['peak_mem_mib']:.0f}")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped to a file or log: do not squeeze the table into 80 columns
    torch.manual_seed(0)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv3d kernels

    env = environment(cfg)
    peak = bf16_peak_tflops(cfg, env["device_name"])
    console.print(f"torch {env['torch']}  cuDNN {env['cudnn']}  device {cfg.device}: {env['device_name']}"
                  + (f"  ({env['cpu_threads']} threads)" if cfg.device == "cpu" else ""))  # fmt: skip
    console.print(f"config: {json.dumps(asdict(cfg), default=str)}")
    try:
        costs = {a: cost_per_clip(cfg, a) for a in cfg.archs}
    except ValueError as e:  # a clip too small for a model (DenseNet needs 16 frames)
        console.print(f"[red]error: {e} (--frames, --size)")
        return 2
    console.print(
        "TFLOP/s = clips/s x 6 x forward MACs per clip (1 MAC = 2 FLOPs, backward ~ 2x forward); parameters / "
        f"forward MACs per {cfg.frames}x{cfg.size}x{cfg.size} clip (convs + fc): "
        + ", ".join(f"{a} {c.parameters / 1e6:.2f} M / {c.macs / 1e9:.2f} G" for a, c in costs.items())
    )
    if cfg.device == "cuda" and not cfg.cost_only:
        console.print(
            f"bf16 dense peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown for this card (--peak-tflops)'}"
        )

    rows: list[dict] = []

    def save() -> None:  # after every row: a later row that crashes or hangs loses only itself
        if cfg.json:
            cfg.json.parent.mkdir(parents=True, exist_ok=True)
            cfg.json.write_text(json.dumps({"env": env, "config": asdict(cfg), "rows": rows}, indent=2, default=str))

    failed = 0
    if cfg.cost_only:
        rows += [cost_row(cfg, a, c) for a, c in costs.items()]
        print_cost_table(console, rows, cfg)
        save()
    else:
        for arch, batch_size, precision in itertools.product(cfg.archs, cfg.batch_sizes, cfg.precisions):
            console.print(f"[dim]running {arch} batch {batch_size} {precision} ...[/dim]")
            if cfg.data is None:
                rows.append(bench_case(cfg, arch, batch_size, precision, costs[arch], peak))
            else:
                try:
                    rows.append(bench_end_to_end(cfg, arch, batch_size, precision))
                except Exception as e:  # the loader failed (e.g. a backend not installed): a row that says so
                    failed += 1
                    rows.append({"mode": "end-to-end", "backend": cfg.backend, "arch": arch, "batch_size": batch_size,
                                 "precision": precision, "error": f"{type(e).__name__}: {e}"[:500]})
                    console.print(f"[red]{arch} batch {batch_size} {precision} --backend {cfg.backend} failed:[/red] "
                                  f"{rows[-1]['error']}")
            save()
        if cfg.data is not None:
            print_end_to_end_table(console, [r for r in rows if "error" not in r])
        else:
            print_table(console, rows, show_peak=cfg.device == "cuda")
        if cfg.device == "cpu":
            console.print("peak mem on CPU = the process's peak RSS up to that row (ru_maxrss cannot be reset)")
    if cfg.json:
        console.print(f"wrote {cfg.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
