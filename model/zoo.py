"""build_model: every architecture by name, the arguments each family takes, and what a model costs.

Families (one module each): resnet-* (model/resnet.py), preresnet-* (pre_act_resnet.py), resnext-* (resnext.py),
wideresnet-* (wide_resnet.py), densenet-* (densenet.py), r2plus1d-* (resnet2p1d.py). The names are 3D-ResNets-PyTorch's `--model`-`--model_depth`
(what its checkpoints store as "arch"), but for R(2+1)D, whose checkpoints say "resnet2p1d-18": canonical_arch
reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model import densenet as densenet_mod
from model import pre_act_resnet as preact_mod
from model import resnet as resnet_mod
from model import resnet2p1d as r2p1d_mod
from model import resnext as resnext_mod
from model import wide_resnet as wide_mod

FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": resnet_mod.ARCHS,
    "preresnet": preact_mod.ARCHS,
    "resnext": resnext_mod.ARCHS,
    "wideresnet": wide_mod.ARCHS,
    "densenet": densenet_mod.ARCHS,
    "r2plus1d": r2p1d_mod.ARCHS,
}
ARCHS: tuple[str, ...] = tuple(arch for archs in FAMILIES.values() for arch in archs)
# "resnet-10|18|34|50|101|152|200, preresnet-18|...": ARCHS in a line, for help texts.
ARCHS_HELP = ", ".join(f"{name}-" + "|".join(a.rsplit("-", 1)[1] for a in archs) for name, archs in FAMILIES.items())
# 3D-ResNets-PyTorch's own names, as its checkpoints' "arch" entry spells them, where ours differ.
ARCH_ALIASES: dict[str, str] = {f"resnet2p1d-{a.split('-')[1]}": a for a in r2p1d_mod.ARCHS}

# The build_model arguments that only some families have, with the default every other family must leave alone.
FAMILY_ARGS: dict[str, tuple[str, Any, tuple[str, ...]]] = {  # argument: (default, families that take it)
    "shortcut": ("A", ("resnet", "preresnet", "resnext", "wideresnet", "r2plus1d")),
    "cardinality": (32, ("resnext",)),
    "wide_k": (2, ("wideresnet",)),
}


class ModelArgError(ValueError):
    """A build_model argument that the architecture cannot take. `name` is the keyword argument and `value` the
    value given, so that a command line can name its flag; `why` says what is wrong and what would work."""

    def __init__(self, name: str, value: Any, why: str) -> None:
        super().__init__(f"{name}={value!r}: {why}")
        self.name, self.value, self.why = name, value, why


def family(arch: str) -> str:
    """"resnext" for "resnext-101"; ModelArgError for an unknown architecture."""
    for name, archs in FAMILIES.items():
        if arch in archs:
            return name
    raise ModelArgError("arch", arch, f"unknown architecture; choose one of {', '.join(ARCHS)}")


def canonical_arch(name: str | None) -> str | None:
    """Our name for an architecture named as 3D-ResNets-PyTorch's checkpoints name it ("resnet2p1d-18" ->
    "r2plus1d-18"); other names unchanged."""
    return ARCH_ALIASES.get(name, name) if isinstance(name, str) else name


def takes(arch: str, name: str) -> bool:
    """Whether build_model's argument `name` means something for `arch` (cardinality: ResNeXt only, ...)."""
    return name not in FAMILY_ARGS or family(arch) in FAMILY_ARGS[name][1]


def check_model_args(
    arch: str,
    n_classes: int,
    shortcut: str = "A",
    conv1_t_size: int = 7,
    conv1_t_stride: int = 1,
    no_max_pool: bool = False,
    widen_factor: float = 1.0,
    cardinality: int = 32,
    wide_k: int = 2,
) -> None:
    """ModelArgError (a ValueError) for the first argument that build_model cannot build `arch` with."""
    fam = family(arch)
    given = {"shortcut": shortcut, "cardinality": cardinality, "wide_k": wide_k}
    for name, (default, families) in FAMILY_ARGS.items():
        if fam not in families and given[name] != default:
            raise ModelArgError(name, given[name], f"{arch} has no {name.replace('_', ' ')} to set (only "
                                f"{', '.join(f + '-*' for f in families)} do); leave it at {default!r}")
    if shortcut not in ("A", "B"):
        raise ModelArgError("shortcut", shortcut, "must be 'A' (zero-padding, the paper's) or 'B' (1x1x1 conv + BN)")
    if n_classes < 1:
        raise ModelArgError("n_classes", n_classes, "must be >= 1")
    for name, value in (("conv1_t_size", conv1_t_size), ("conv1_t_stride", conv1_t_stride),
                        ("cardinality", cardinality), ("wide_k", wide_k)):
        if value < 1:
            raise ModelArgError(name, value, "must be >= 1")
    # The narrowest width each family scales by widen_factor, and how many channels it needs.
    narrowest, need, what = {
        "resnext": (resnext_mod.STAGE_PLANES[0], resnext_mod.GROUP_WIDTH_DIVISOR,
                    "layer1's groups get 128 x widen_factor // 32 channels each"),
        "densenet": (densenet_mod.GROWTH_RATE, 1, "the growth rate, 32 x widen_factor channels, must be >= 1"),
    }.get(fam, (resnet_mod.STEM_PLANES, 1, "conv1 gets 64 x widen_factor channels"))
    if not widen_factor > 0 or int(narrowest * widen_factor) < need:
        raise ModelArgError("widen_factor", widen_factor, f"too narrow for {arch}: {what}; use >= "
                            f"{need / narrowest:g}")
    if fam == "r2plus1d" and r2p1d_mod.mid_planes(3, int(resnet_mod.STEM_PLANES * widen_factor), conv1_t_size, 7) < 1:
        raise ModelArgError("conv1_t_size", conv1_t_size, f"{arch}'s factorised conv1 keeps no channels between its "
                            f"spatial and temporal convs at widen_factor {widen_factor}; use a larger one")


def build_model(
    arch: str,
    n_classes: int,
    shortcut: str = "A",
    conv1_t_size: int = 7,
    conv1_t_stride: int = 1,
    no_max_pool: bool = False,
    widen_factor: float = 1.0,
    cardinality: int = 32,
    wide_k: int = 2,
) -> nn.Module:
    """Build `arch` (one of ARCHS) for n_classes; (N, 3, T, H, W) float clips -> (N, n_classes) logits. Its
    pooled_features(clips) gives (N, C), the input of its classifier `head` (C = head.in_features).

    shortcut: "A" (zero-padding, the ICCV 2017 paper's) or "B" (1x1x1 conv + BN, 3D-ResNets-PyTorch's default
    and its checkpoints' from ResNet-50 on), for every family but DenseNet (which has no shortcuts).
    conv1_t_size, conv1_t_stride, no_max_pool: the stem, as 3D-ResNets-PyTorch's options of the same names
    (defaults: the paper's conv1 7x7x7, stride (1, 2, 2), then a max pool). widen_factor: channel multiplier
    (1: the published widths; small values give CPU-sized models). cardinality: ResNeXt's groups (32: the
    published "32x4d"). wide_k: Wide ResNet's stage widening (2: wideresnet-50-kinetics.pth's).
    Raises ModelArgError (a ValueError) naming the argument that does not fit.
    """
    check_model_args(arch, n_classes, shortcut, conv1_t_size, conv1_t_stride, no_max_pool, widen_factor,
                     cardinality, wide_k)
    fam, depth = family(arch), int(arch.rsplit("-", 1)[1])
    stem = {"conv1_t_size": conv1_t_size, "conv1_t_stride": conv1_t_stride, "no_max_pool": no_max_pool,
            "widen_factor": widen_factor}
    if fam == "densenet":
        return densenet_mod.densenet(depth, n_classes, **stem)
    if fam == "resnext":
        return resnext_mod.resnext(depth, n_classes, shortcut, **stem, cardinality=cardinality)
    if fam == "wideresnet":
        return wide_mod.wide_resnet(depth, n_classes, shortcut, **stem, wide_k=wide_k)
    if fam == "r2plus1d":
        return r2p1d_mod.r2plus1d(depth, n_classes, shortcut, **stem)
    if fam == "preresnet":
        return preact_mod.pre_act_resnet(depth, n_classes, shortcut, **stem)
    return resnet_mod.resnet(depth, n_classes, shortcut, **stem)


def check_clip(frames: int, size: int, arch: str, conv1_t_size: int = 7, conv1_t_stride: int = 1,
               no_max_pool: bool = False, **_: Any) -> None:
    """ValueError (one line) when a (3, frames, size, size) clip shrinks to nothing inside the model: only DenseNet
    can, whose three transitions each halve T, H and W, rounding down (with the max pool it needs 15 frames).
    Shape arithmetic only; takes build_model's keyword arguments."""
    if family(arch) != "densenet":
        return  # padded convs and pools keep every dimension >= 1

    def out(n: int, kernel: int, stride: int, pad: int) -> int:
        return (n + 2 * pad - kernel) // stride + 1

    t, hw = out(frames, conv1_t_size, conv1_t_stride, conv1_t_size // 2), out(size, 7, 2, 3)
    if not no_max_pool:
        t, hw = out(t, 3, 2, 1), out(hw, 3, 2, 1)
    if min(t, hw) < 8:
        raise ValueError(f"{arch} cannot take {frames}x{size}x{size} clips: its stem makes them {t}x{hw}x{hw}, and "
                         "its three 2x2x2 average pools need 8 in each dimension; use more frames or a larger size")


def fine_tuning_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level modules in forward order, as train.py --ft-begin names them: the children of the
    residual networks (conv1, bn1, ..., layer4, fc), and of DenseNet its `features` children then `classifier`
    (conv1, norm1, ..., denseblock4, norm5, classifier): 3D-ResNets-PyTorch's --ft_begin_module names."""
    if isinstance(net, densenet_mod.DenseNet3d):
        return [*net.features.named_children(), ("classifier", net.classifier)]
    return list(net.named_children())


@dataclass(frozen=True)
class ModelCost:
    """What one clip costs a model: parameters (count) and forward multiply-adds (convs and the classifier; BN,
    ReLU and pooling, < 1%, not counted)."""

    parameters: int
    macs: int

    def describe(self) -> str:
        """'48.34 M parameters, 7.52 G multiply-adds per clip (forward)'."""
        return f"{self.parameters / 1e6:.2f} M parameters, {self.macs / 1e9:.2f} G multiply-adds per clip (forward)"


def model_cost(frames: int, size: int, **model_args: Any) -> ModelCost:
    """Parameters and forward multiply-adds of build_model(**model_args) on one (3, frames, size, size) clip,
    counted on the meta device (no memory, no compute; torch.utils.flop_counter counts grouped convs by their
    weights). ValueError (one line) when such a clip shrinks to nothing inside the model (DenseNet's transitions
    need 16 frames)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        # eval(): with one clip, train-mode BatchNorm refuses a last stage of 1x1x1
        net = build_model(**model_args).eval()
        clip = torch.empty(1, 3, frames, size, size)
    parameters = sum(p.numel() for p in net.parameters())
    try:
        with FlopCounterMode(display=False) as counter:
            net(clip)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{model_args['arch']} cannot take {frames}x{size}x{size} clips: they shrink to nothing "
                         f"inside it ({first}); use more frames or a larger size") from None
    return ModelCost(parameters=parameters, macs=counter.get_total_flops() // 2)


def describe_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """model_args without the arguments its architecture does not take (cardinality of a ResNet, ...)."""
    return {k: v for k, v in model_args.items() if takes(model_args["arch"], k)}
