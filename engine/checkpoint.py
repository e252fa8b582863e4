"""The run record and the training checkpoint: what they hold, written and read here only.

A checkpoint is TrainingState as a dict of plain types and tensors (loadable with torch.load(weights_only=True)),
so that 3D-ResNets-PyTorch-style tools and model.load_weights read it without this module. Its entries:
  model, optimizer, epoch, config, history                 TrainingState (what --resume needs)
  arch, model_args, class_names, input                      RunRecord (what a user of the model needs)
No RNG state: the only randomness after initialisation is the loader's, drawn from (seed, epoch). No scheduler
state either: the learning rate follows from the validation losses in `history` (engine/schedule.py). No loss
scaler: bf16 autocast needs none.

checkpoint_record gives the record to use any checkpoint with (evaluate.py, infer.py): ours carry theirs,
3D-ResNets-PyTorch's are described by command-line flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from engine.cli import MODEL_FLAGS, as_flag, model_arg_message
from model import (
    ARCHS,
    ModelArgError,
    build_model,
    canonical_arch,
    check_clip,
    check_model_args,
    read_checkpoint,
    takes,
)
from model.checkpoint import (  # one error type for every unusable checkpoint
    CheckpointError,
    classifier_weight,
    load_file,
    stem_time_weight,
)
from pipeline.atomic import NoSpace, atomic_write, temp_path
from pipeline.normalisation import Normalisation

__all__ = ["CLIP_FIELDS", "REQUIRED_KEYS", "CheckpointError", "RunRecord", "TrainingState",
           "check_compatible", "checkpoint_record", "file_digest", "link_atomic", "load_training_checkpoint", "run_dir",
           "save_atomic", "saved_config"]  # fmt: skip

# build_model's keyword arguments, with their defaults where it has them.
MODEL_ARGS = tuple(inspect.signature(build_model).parameters)
MODEL_DEFAULTS = {k: v.default for k, v in inspect.signature(build_model).parameters.items()
                  if v.default is not inspect.Parameter.empty}


@dataclass(frozen=True)
class RunRecord:
    """What a trained model needs to be rebuilt and fed the clips it learned from. train.py stores it in every
    checkpoint; checkpoint_record (evaluate.py, infer.py) and train.py --pretrained read it back with
    from_metadata."""

    model_args: dict[str, Any]  # every model.build_model keyword argument: arch, n_classes, shortcut, ...
    class_names: tuple[str, ...]  # index = label
    normalisation: Normalisation
    sample_size: int  # clip height and width in pixels
    sample_duration: int  # frames per clip
    # Height in pixels of the videos the clips were cut from (prepare_data.py --height; train.py records the
    # training videos' most common height); infer.py resizes raw videos to it. Older checkpoints: 360.
    video_height: int = 360

    KEYS: ClassVar[tuple[str, ...]] = ("arch", "model_args", "class_names", "input")  # in a checkpoint

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entries. `arch` repeats model_args["arch"] where 3D-ResNets-PyTorch's checkpoints have
        it; `input` says what the model takes: {"normalisation": {value_scale, mean, std}, "sample_size",
        "sample_duration", "video_height"}."""
        return {"arch": self.model_args["arch"], "model_args": dict(self.model_args),
                "class_names": list(self.class_names),
                "input": {"normalisation": self.normalisation.to_dict(), "sample_size": self.sample_size,
                          "sample_duration": self.sample_duration, "video_height": self.video_height}}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], path: str | Path) -> RunRecord | None:
        """The record among a checkpoint's entries (model.read_checkpoint's metadata, or the whole dict); None
        for a checkpoint without one (3D-ResNets-PyTorch's, a raw state dict); CheckpointError when broken.
        Checkpoints written before the `input` entry held the same numbers in one flat `normalisation` entry
        (and, before that, no video height: 360, prepare_data.py's default): still read, for evaluate.py,
        infer.py and --pretrained (--resume needs the entries of now: load_training_checkpoint)."""
        if "model_args" not in meta:
            return None
        try:
            model_args = {**MODEL_DEFAULTS, **meta["model_args"]}
            if set(model_args) != set(MODEL_ARGS):
                raise ValueError(f"model_args {sorted(model_args)} are not build_model's {sorted(MODEL_ARGS)}")
            clips = meta["input"] if "input" in meta else meta["normalisation"]
            norm = clips["normalisation"] if "input" in meta else clips
            return cls(model_args=model_args, class_names=tuple(str(c) for c in meta["class_names"]),
                       normalisation=Normalisation.from_dict(norm), sample_size=int(clips["sample_size"]),
                       sample_duration=int(clips["sample_duration"]),
                       video_height=int(clips.get("video_height", 360)))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its run record is broken ({type(e).__name__}: {e}); HINT: use the "
                                  "checkpoint as a 3D-ResNets-PyTorch one (describe the model with flags)") from None

    def model_name(self) -> str:
        """The model in a few characters, for summaries and metrics.json: the arch, and its shortcut type for the
        families that have one ("resnet-18-A", "resnext-101-B"; "densenet-121": its blocks concatenate)."""
        arch = self.model_args["arch"]
        return f"{arch}-{self.model_args['shortcut']}" if takes(arch, "shortcut") else arch

    def refuse_contradicting(self, given: Mapping[str, Any], path: str | Path) -> None:
        """CheckpointError (one line) when a model flag given (build_model argument -> value) differs from this
        record's model: every one changes what the weights compute or whether they load at all (conv1's temporal
        stride and the max pool own no weights: those would load and give a wrong model without an error)."""
        contradicting = [k for k, v in given.items() if v != self.model_args[k]]
        if contradicting:
            arch = self.model_args["arch"]
            itself = " ".join([arch] + [as_flag(k, self.model_args[k]) for k in MODEL_FLAGS[1:] if takes(arch, k)])
            shown = [as_flag(k, given[k]) for k in contradicting]
            verb = "contradicts" if len(shown) == 1 else "contradict"
            raise CheckpointError(f"{path}: the checkpoint describes itself: {itself}; {', '.join(shown)} {verb} "
                                  f"it: drop {' '.join(f.split()[0] for f in shown)}")


@dataclass(frozen=True)
class TrainingState:
    """Everything --resume needs; train.py writes a checkpoint only through this class and reads one only as
    this class, so the keys checked on loading (REQUIRED_KEYS) are exactly the keys it uses."""

    model: dict  # state_dict of the unwrapped, uncompiled model (keys as in 3D-ResNets-PyTorch's resnet.py)
    optimizer: dict
    epoch: int  # number of finished epochs (metrics.csv numbers epochs from 1); --resume runs epoch + 1 next
    config: dict  # the run's TrainConfig as a dict
    record: RunRecord
    history: list  # one dict per finished epoch, the rows of metrics.csv: the lr schedule's state (val_loss)

    def to_dict(self) -> dict:
        # shallow: asdict would copy every tensor
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "record"}
        return state | self.record.to_dict()


REQUIRED_KEYS = tuple(f.name for f in fields(TrainingState) if f.name != "record") + RunRecord.KEYS


def save_atomic(state: TrainingState | dict, path: Path) -> None:
    """Write state to path so that a crash at any moment leaves either the old file or the new one, never half.

    A full disk (or quota, or file size limit) raises pipeline.atomic.NoSpace, one line naming path, the exact
    size of the checkpoint and the space free; path keeps its previous content.
    """
    obj = state.to_dict() if isinstance(state, TrainingState) else state
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # fsync: a power cut must not leave last.pt empty either. torch.save writes through a Python file object:
        # given a path, its own writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos"
        # with no errno; through the file it is the OSError of the failed write.
        with atomic_write(path, fsync=True) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except NoSpace as e:
        raise NoSpace.at(path, e, needed=serialized_size(obj)) from None


class _CountingSink:
    """A write-only file that keeps nothing but the number of bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes | memoryview) -> int:
        n = memoryview(data).nbytes
        self.n += n
        return n

    def flush(self) -> None:
        pass


def serialized_size(obj: object) -> int:
    """Bytes torch.save(obj) writes, counted without storing them (for the space a checkpoint needs)."""
    sink = _CountingSink()
    torch.save(obj, sink)
    return sink.n


def link_atomic(src: Path, dst: Path) -> None:
    """Make dst name the file src names now (a hard link: no copy, no space), replacing dst atomically.

    train.py's fallback for best.pt when the disk has no room for a second copy: save_atomic always replaces a
    checkpoint by renaming a new file onto its name, so the next last.pt leaves this one to best.pt alone.
    """
    tmp = temp_path(dst)
    os.link(src, tmp)
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex: what DDP ranks compare to know they resume the same checkpoint."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_training_checkpoint(path: Path) -> TrainingState:
    """A checkpoint written by train.py, with every key that --resume needs present."""
    state = load_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete train.py checkpoint (missing {', '.join(missing)}); "
            "use --pretrained to start a new run from its weights"
        )
    record = RunRecord.from_metadata(state, path)
    return TrainingState(**{f.name: state[f.name] for f in fields(TrainingState) if f.name != "record"},
                         record=record)


def saved_config(path: Path) -> dict:
    """The `config` entry of a train.py checkpoint, read without loading its tensors (memory-mapped);
    CheckpointError when the file cannot be read so."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways; load_training_checkpoint names them
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__})") from None
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a train.py checkpoint (no config)")
    return config


def check_compatible(path: Path, saved: RunRecord, now: RunRecord) -> None:
    """A one-line CheckpointError when the run record of this run differs from the checkpoint's. The video
    height is left out: it says how the data was prepared, and a run may go on with data prepared again (the
    next checkpoint records the new height; checkpoints from before it was recorded say 360)."""
    saved_entries, now_entries = (dataclasses.replace(r, video_height=0).to_dict() for r in (saved, now))
    diffs = [f"{k}: checkpoint {saved_entries[k]!r} vs now {now_entries[k]!r}"
             for k in RunRecord.KEYS if saved_entries[k] != now_entries[k]]
    if diffs:
        raise CheckpointError(f"{path}: incompatible with this run ({'; '.join(diffs)})")


# ---- using a checkpoint: ours or 3D-ResNets-PyTorch's (evaluate.py, infer.py) ----------------------------------

# RunRecord fields that say how clips are made; a command line may override each.
CLIP_FIELDS = ("normalisation", "sample_duration", "sample_size", "video_height")
# A checkpoint without a run record (3D-ResNets-PyTorch's) is used with that code's default clips.
REFERENCE_CLIPS = dict(normalisation=Normalisation.named("activitynet"), sample_size=112, sample_duration=16)


def checkpoint_record(path: str | Path, flags: Mapping[str, Any], class_names: list[str] | None,
                      data: str = "") -> RunRecord:
    """The model and clips to use the checkpoint at path with, or CheckpointError (one line).

    flags: what the command line gave (None: not given) for MODEL_FLAGS and CLIP_FIELDS. Our checkpoints carry
    their run record, and model flags that contradict it are an error; for others the model comes from the
    flags, the file's 'arch' entry and its layers' shapes, and the clips are 3D-ResNets-PyTorch's defaults.
    Clip flags override the clips of either. class_names: the classes of the dataset `data`, which ours must
    have been trained on and a foreign checkpoint's head must count; None (infer.py): ours name their classes,
    a foreign checkpoint's are numbered '0', '1', ... (the caller may rename them).
    """
    path = Path(path)
    state_dict, meta = read_checkpoint(path)
    given = {k: flags[k] for k in MODEL_FLAGS if flags.get(k) is not None}
    record = RunRecord.from_metadata(meta, path)
    if record is not None:  # train.py's checkpoint
        record.refuse_contradicting(given, path)
        saved_classes = list(record.class_names)
        if class_names is not None and saved_classes != class_names:
            raise CheckpointError(f"{path}: trained on {len(saved_classes)} classes {saved_classes[:4]}..., but "
                                  f"{data} has {len(class_names)} {class_names[:4]}...; use the same classes")
    else:
        fc = classifier_weight(state_dict)  # (n_classes, C)
        arch = given.get("arch") or canonical_arch(meta.get("arch"))
        if arch not in ARCHS:
            raise CheckpointError(f"{path}: architecture {arch!r} unknown; HINT: add --arch "
                                  f"(one of {', '.join(ARCHS)})")
        n_classes = given.get("n_classes") or (fc.shape[0] if fc is not None else len(class_names or ()))
        if class_names is not None and n_classes != len(class_names):
            raise CheckpointError(f"{path}: has {n_classes} classes, {data} has {len(class_names)}")
        if not n_classes:
            raise CheckpointError(f"{path}: no fc layer to count the classes; HINT: add --n-classes")
        model_args = {**MODEL_DEFAULTS, **given, "arch": arch, "n_classes": n_classes}
        try:
            check_model_args(**model_args)
        except ModelArgError as e:
            raise CheckpointError(f"{path}: {model_arg_message(e)}") from None
        conv1 = stem_time_weight(state_dict)  # (C, C_in, T, H, W): conv1's, R(2+1)D's conv1_t, DenseNet's
        if conv1 is not None and conv1.ndim == 5 and conv1.shape[2] != model_args["conv1_t_size"]:
            raise CheckpointError(f"{path}: its conv1 spans {conv1.shape[2]} frames, the model's "
                                  f"{model_args['conv1_t_size']}; HINT: add --conv1-t-size {conv1.shape[2]} (and "
                                  "--conv1-t-stride, --no-max-pool if it was trained with them)")
        names = class_names if class_names is not None else [str(k) for k in range(n_classes)]
        record = RunRecord(model_args=model_args, class_names=tuple(names), **REFERENCE_CLIPS)
    record = dataclasses.replace(record, **{k: flags[k] for k in CLIP_FIELDS if flags.get(k) is not None})
    try:
        check_clip(record.sample_duration, record.sample_size, **record.model_args)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e} (--sample-duration, --sample-size)") from None
    return record


def run_dir(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to (RUN_DIR for RUN_DIR/checkpoints/best.pt), else its folder: where
    evaluate.py and infer.py put their outputs by default."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
