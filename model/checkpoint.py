"""Load weights into a model of the zoo from our checkpoints or 3D-ResNets-PyTorch ones.

Accepted file contents (read with `torch.load(weights_only=True)`, so no code runs on load):
  - ours:       {"model": state_dict, "optimizer": ..., "config": {...}, ...}
  - reference:  {"state_dict": state_dict, "arch": "resnet-18", "epoch": ..., ...}
  - a raw state_dict.
Keys may carry `module.` (DataParallel / DDP) and `_orig_mod.` (torch.compile) prefixes. DenseNet checkpoints of
3D-ResNets-PyTorch's CVPR2018 branch (densenet-121-kinetics.pth, ...) name their layers as torchvision did in
2017 (features.conv0, denselayer1.norm.1, ...): read_checkpoint renames them to the master branch's names, ours.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.zoo import canonical_arch

HEAD_KEYS = ("fc.weight", "fc.bias", "classifier.weight", "classifier.bias")  # the classifier (DenseNet's)
# The first conv that spans time, per family: conv1 (residual networks), conv1_t (R(2+1)D), features.conv1
# (DenseNet). Its weight is (C_out, C_in, T, H, W).
STEM_TIME_KEYS = ("conv1.weight", "conv1_t.weight", "features.conv1.weight")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STATE_DICT_KEYS = ("model", "state_dict")
# Large or non-metadata entries that load_weights does not hand back.
_NOT_METADATA = frozenset({"model", "state_dict", "optimizer", "scheduler", "scaler"})


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    """What load_weights did. `metadata` holds the file's other top-level entries (arch, epoch, config, ...)."""

    path: Path
    n_loaded: int  # tensors copied from the file
    head_replaced: bool  # True when the file's fc had another class count and the model kept its own
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str | None:
        """The architecture the file says it holds ("resnet-18"), from `arch` or `config["arch"]`, in our
        spelling (3D-ResNets-PyTorch's "resnet2p1d-18" is "r2plus1d-18")."""
        arch = self.metadata.get("arch")
        if arch is None and isinstance(self.metadata.get("config"), Mapping):
            arch = self.metadata["config"].get("arch")
        return canonical_arch(arch)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers (what checkpoints should hold)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading `module.` / `_orig_mod.` (in any order, repeated) from every key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


# 3D-ResNets-PyTorch's CVPR2018 DenseNet -> its master DenseNet (ours): the stem's conv0/norm0 became conv1/norm1,
# a dense layer's norm.1, conv.1, norm.2, conv.2 became norm1, conv1, norm2, conv2 (PyTorch >= 0.4 refuses dots
# in module names). Our DenseNet has no key the old names match, so renaming is safe on any checkpoint.
_LEGACY_DENSENET = (
    (re.compile(r"^features\.(conv|norm)0\."), r"features.\g<1>1."),
    (re.compile(r"(\.denselayer\d+\.(?:norm|conv))\.([12])\."), r"\1\2."),
)


def rename_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with the CVPR2018 branch's DenseNet names replaced by ours (features.conv0.weight ->
    features.conv1.weight, features.denseblock1.denselayer1.norm.1.weight -> ...denselayer1.norm1.weight);
    other keys unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, replacement in _LEGACY_DENSENET:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def classifier_weight(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The classifier's weight (n_classes, C): fc.weight, or DenseNet's classifier.weight; None without one."""
    return next((state_dict[k] for k in ("fc.weight", "classifier.weight") if k in state_dict), None)


def stem_time_weight(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The weight (C_out, C_in, T, H, W) of the first conv that spans time (STEM_TIME_KEYS); None without one."""
    return next((state_dict[k] for k in STEM_TIME_KEYS if k in state_dict), None)


def load_file(path: str | Path) -> Any:
    """torch.load(path, weights_only=True) onto the CPU; every way of failing becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive (or, legacy, a pickle starting with protocol byte 0x80)
        if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint file; is it the right file?") from e
        if "weights only load failed" in first.lower():
            raise CheckpointError(
                f"{path}: holds Python objects that weights_only loading refuses ({first}); "
                "re-save it with only tensors and plain types (dict, list, str, int, float)"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first}); is it the right file?") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, or truncated ({type(e).__name__}: {first}); "
            "re-download or re-save it"
        ) from e


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read `path` -> (state_dict with wrapper prefixes stripped and legacy DenseNet names renamed, metadata).
    Raises CheckpointError."""
    path = Path(path)
    obj = load_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    metadata: dict[str, Any] = {}
    state_dict: Any = obj
    for key in _STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            state_dict = obj[key]
            metadata = {k: v for k, v in obj.items() if k not in _NOT_METADATA}
            break
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: no state dict found (expected a 'model' or 'state_dict' entry, or a dict of tensors); "
            f"top-level keys: {_sample(list(obj))}"
        )
    return rename_legacy_keys(strip_wrapper_prefixes(state_dict)), metadata


def load_weights(
    model: nn.Module, path: str | Path, *, strict_head: bool = False, verbose: bool = True
) -> LoadReport:
    """Copy the weights in `path` into `model` (any DDP / compile wrapper is looked through).

    When only the classifier (fc, DenseNet's classifier) shape differs, e.g. fine-tuning a Kinetics-400 checkpoint to 10
    classes, the model keeps its freshly initialised fc, everything else loads, and one line says so
    (`strict_head=True` makes that an error instead). Any other missing, unexpected or mis-shaped key
    raises CheckpointError listing the keys. Checkpoints without BatchNorm's `num_batches_tracked`
    counters (saved by PyTorch < 0.4.1) load; the counters start at 0.
    """
    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    target = unwrap_model(model)
    own = target.state_dict()

    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    head_mismatch = [k for k in mismatched if k in HEAD_KEYS]
    other_mismatch = [k for k in mismatched if k not in HEAD_KEYS]

    problems = []
    if missing:
        problems.append(f"missing from the file: {_sample(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_sample(unexpected)}")
    if other_mismatch:
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in other_mismatch]
        problems.append(f"shape differs: {_sample(shapes)}")
    if head_mismatch and strict_head:
        problems.append(f"classifier shape differs (strict_head=True): {_sample(head_mismatch)}")
    if problems:
        arch = LoadReport(path, 0, False, metadata).arch
        hint = f" (the file says arch={arch!r})" if arch else ""
        raise CheckpointError(
            f"{path}: weights do not fit the model{hint}; "
            + "; ".join(problems)
            + ". Build the model with the checkpoint's arch, shortcut type and widen_factor."
        )

    head_replaced = bool(head_mismatch)
    to_load = dict(state_dict)
    head = [k for k in HEAD_KEYS if k in own]
    if head_replaced:
        for k in head:
            to_load[k] = own[k]  # keep the model's fresh head
    target.load_state_dict(to_load, strict=True)
    n_loaded = len(state_dict) - (len(head) if head_replaced else 0)
    if head_replaced and verbose:
        k = head_mismatch[0]
        print(
            f"load_weights: {path}: classifier has {state_dict[k].shape[0]} classes, the model "
            f"{own[k].shape[0]}; kept the model's new {k.split('.')[0]}, loaded the other {n_loaded} tensors"
        )
    return LoadReport(path=path, n_loaded=n_loaded, head_replaced=head_replaced, metadata=metadata)


def _sample(items: list[str], n: int = 5) -> str:
    """'a, b, c, ... (12 in all)': the first few of a list of keys, and the count."""
    shown = ", ".join(items[:n])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > n else f"{shown} ({len(items)})"
