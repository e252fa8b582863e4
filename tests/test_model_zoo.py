"""The model zoo beyond ResNet: pre-activation ResNet, ResNeXt, Wide ResNet, DenseNet, R(2+1)D
(model/pre_act_resnet.py, resnext.py, wide_resnet.py, densenet.py, resnet2p1d.py; build_model in model/zoo.py).

3D-ResNets-PyTorch's layer structure is written out below as data (REFERENCE DESCRIPTION), independently of
model/: from it come the state_dict layout (keys in order, shapes), a functional forward pass (F.conv3d,
F.batch_norm on a state dict), the parameter count and the multiply-adds by shape arithmetic. Our modules must
agree with all four. The key counts and parameter counts written as literals were checked once against the
authors' own code (their master and CVPR2018 branches, instantiated outside this repository).

Then: arguments each family refuses, checkpoints in the authors' layouts (module. prefixes, the CVPR2018
DenseNet names, R(2+1)D's "resnet2p1d-N" arch entry), what evaluate.py/infer.py make of them, and train.py on
each family: a few steps from an authors'-layout checkpoint with --ft-begin, its start-up cost line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import (
    CheckpointError,
    ModelArgError,
    build_model,
    canonical_arch,
    check_clip,
    fine_tuning_modules,
    load_weights,
    model_cost,
)
from model.checkpoint import rename_legacy_keys
from model.resnet import ZeroPadShortcut
from model.resnet2p1d import BasicBlock2p1d
from model.resnext import ResNeXtBottleneck

ROOT = Path(__file__).resolve().parent.parent

# ================================================================ REFERENCE DESCRIPTION
# A network is a list of ops applied in order to (N, C, T, H, W):
#   Conv(key, out, in_per_group, kernel, stride, padding, groups)  bias-free 3D convolution, weight at key.weight
#   BN(key, channels)       eval-mode batch norm, eps 1e-5: key.weight, .bias, .running_mean, .running_var,
#                           .num_batches_tracked
#   ReLU(), MaxPool()       kernel 3, stride 2, padding 1 in T, H and W
#   AvgPool2()              kernel 2, stride 2 (DenseNet's transitions)
#   Residual(body, short)   relu(body(x) + short(x)) (relu=False: without the ReLU); short: None (identity),
#                           ZeroPad(planes, stride): keep every stride-th voxel, append zero channels up to
#                           planes; or a list of ops (type B)
#   Dense(body)             cat(x, body(x)) along channels
#   Head(key, in, n)        global average pool over T, H, W, then the linear layer at key


@dataclass(frozen=True)
class Conv:
    key: str
    out: int
    inp: int  # input channels per group
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)
    groups: int = 1


@dataclass(frozen=True)
class BN:
    key: str
    channels: int


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    pass


@dataclass(frozen=True)
class AvgPool2:
    pass


@dataclass(frozen=True)
class ZeroPad:
    planes: int
    stride: int


@dataclass(frozen=True)
class Residual:
    body: tuple
    short: object  # None | ZeroPad | tuple of ops
    relu: bool = True


@dataclass(frozen=True)
class Dense:
    body: tuple


@dataclass(frozen=True)
class Head:
    key: str
    inp: int
    n: int


def _conv3(key: str, out: int, inp: int, stride: int = 1, groups: int = 1) -> Conv:
    return Conv(key, out, inp // groups, (3, 3, 3), (stride,) * 3, (1, 1, 1), groups)


def _conv1(key: str, out: int, inp: int, stride: int = 1) -> Conv:
    return Conv(key, out, inp, (1, 1, 1), (stride,) * 3)


def _split(in_c: int, out_c: int, t: int, k: int) -> int:
    """R(2+1)D: channels between the 1 x k x k and the t x 1 x 1 conv: the 3D conv's weight count divided by the
    weights one intermediate channel costs (k x k x in_c + t x out_c), rounded down."""
    return in_c * out_c * t * k * k // (k * k * in_c + t * out_c)


BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}  # fmt: skip
DENSE_LAYERS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}


def residual_net(family: str, depth: int, n_classes: int, shortcut: str = "A", widen: float = 1.0,
                 cardinality: int = 32, k: int = 2, t_size: int = 7, t_stride: int = 1,
                 max_pool: bool = True) -> list:
    """The authors' residual networks. Stem: 64 x widen channels (R(2+1)D: a 1x7x7 conv to the split width, BN,
    ReLU, then a t_size x 1 x 1 conv); max pool; four stages of blocks, the first block of stages 2-4 striding by
    2; stage widths 64, 128, 256, 512 (ResNeXt 128 ... 1024, Wide ResNet k x 64 ...), times widen.
    Blocks: 'basic' two 3x3x3 convs (ResNet/R(2+1)D up to 34 layers); bottleneck 1x1x1, 3x3x3 (strided), 1x1x1 to
    4 x width (ResNeXt: 3x3x3 in `cardinality` groups over cardinality x (width // 32) channels, output 2 x
    width; Wide ResNet: output 2 x width). R(2+1)D replaces each 3x3x3 by 1x3x3 (strides H, W), BN, ReLU, 3x1x1
    (strides T). Pre-activation ResNet: ResNet's convs, each after a BN and a ReLU, no ReLU after the sum (and none
    after the last block). The first block of a stage gets a shortcut when its stride or channel count changes."""
    stem_c = int(64 * widen)
    base = {"resnext": (128, 256, 512, 1024), "wideresnet": tuple(64 * k * i for i in (1, 2, 4, 8))}.get(
        family, (64, 128, 256, 512))
    widths = [int(w * widen) for w in base]
    basic = family in ("resnet", "preresnet", "r2plus1d") and depth <= 34
    expansion = 1 if basic else 4 if family in ("resnet", "preresnet", "r2plus1d") else 2
    pre = family == "preresnet"
    r21d = family == "r2plus1d"
    if r21d:
        mid = _split(3, stem_c, t_size, 7)
        ops: list = [Conv("conv1_s", mid, 3, (1, 7, 7), (1, 2, 2), (0, 3, 3)), BN("bn1_s", mid), ReLU(),
                     Conv("conv1_t", stem_c, mid, (t_size, 1, 1), (t_stride, 1, 1), (t_size // 2, 0, 0)),
                     BN("bn1_t", stem_c), ReLU()]  # fmt: skip
    else:
        ops = [Conv("conv1", stem_c, 3, (t_size, 7, 7), (t_stride, 2, 2), (t_size // 2, 3, 3)), BN("bn1", stem_c),
               ReLU()]  # fmt: skip
    if max_pool:
        ops.append(MaxPool())
    c = stem_c
    for stage, (w, n_blocks) in enumerate(zip(widths, BLOCKS[depth], strict=True), start=1):
        for b in range(n_blocks):
            p, s = f"layer{stage}.{b}", (2 if stage > 1 and b == 0 else 1)
            if basic and r21d:
                m1, m2 = _split(c, w, 3, 3), _split(w, w, 3, 3)
                body = [Conv(f"{p}.conv1_s", m1, c, (1, 3, 3), (1, s, s), (0, 1, 1)), BN(f"{p}.bn1_s", m1), ReLU(),
                        Conv(f"{p}.conv1_t", w, m1, (3, 1, 1), (s, 1, 1), (1, 0, 0)), BN(f"{p}.bn1_t", w), ReLU(),
                        Conv(f"{p}.conv2_s", m2, w, (1, 3, 3), (1, 1, 1), (0, 1, 1)), BN(f"{p}.bn2_s", m2), ReLU(),
                        Conv(f"{p}.conv2_t", w, m2, (3, 1, 1), (1, 1, 1), (1, 0, 0)), BN(f"{p}.bn2_t", w)]  # fmt: skip
            elif pre and basic:
                body = [BN(f"{p}.bn1", c), ReLU(), _conv3(f"{p}.conv1", w, c, s), BN(f"{p}.bn2", w), ReLU(),
                        _conv3(f"{p}.conv2", w, w)]  # fmt: skip
            elif pre:
                body = [BN(f"{p}.bn1", c), ReLU(), _conv1(f"{p}.conv1", w, c), BN(f"{p}.bn2", w), ReLU(),
                        _conv3(f"{p}.conv2", w, w, s), BN(f"{p}.bn3", w), ReLU(), _conv1(f"{p}.conv3", 4 * w, w)]  # fmt: skip
            elif basic:
                body = [_conv3(f"{p}.conv1", w, c, s), BN(f"{p}.bn1", w), ReLU(), _conv3(f"{p}.conv2", w, w),
                        BN(f"{p}.bn2", w)]  # fmt: skip
            elif r21d:
                m = _split(w, w, 3, 3)
                body = [_conv1(f"{p}.conv1", w, c), BN(f"{p}.bn1", w), ReLU(),
                        Conv(f"{p}.conv2_s", m, w, (1, 3, 3), (1, s, s), (0, 1, 1)), BN(f"{p}.bn2_s", m), ReLU(),
                        Conv(f"{p}.conv2_t", w, m, (3, 1, 1), (s, 1, 1), (1, 0, 0)), BN(f"{p}.bn2_t", w), ReLU(),
                        _conv1(f"{p}.conv3", 4 * w, w), BN(f"{p}.bn3", 4 * w)]  # fmt: skip
            else:
                g = cardinality if family == "resnext" else 1
                m = cardinality * (w // 32) if family == "resnext" else w
                body = [_conv1(f"{p}.conv1", m, c), BN(f"{p}.bn1", m), ReLU(), _conv3(f"{p}.conv2", m, m, s, g),
                        BN(f"{p}.bn2", m), ReLU(), _conv1(f"{p}.conv3", expansion * w, m),
                        BN(f"{p}.bn3", expansion * w)]  # fmt: skip
            out_c = expansion * w
            short = None
            if s != 1 or c != out_c:
                short = ZeroPad(out_c, s) if shortcut == "A" else (
                    _conv1(f"{p}.downsample.0", out_c, c, s), BN(f"{p}.downsample.1", out_c))
            ops.append(Residual(tuple(body), short, relu=not pre))
            c = out_c
    ops.append(Head("fc", c, n_classes))
    return ops


def dense_net(depth: int, n_classes: int, widen: float = 1.0, t_size: int = 7, t_stride: int = 1,
              max_pool: bool = True) -> list:
    """The authors' DenseNet-BC, every key under `features.` but the classifier's: stem conv1 (64 x widen), norm1,
    ReLU, max pool; dense blocks of layers (BN, ReLU, 1x1x1 conv to 4 x growth, BN, ReLU, 3x3x3 conv to growth;
    concatenated to the input), growth 32 x widen; between blocks a transition (BN, ReLU, 1x1x1 conv to half the
    channels, 2x2x2 average pool); norm5, ReLU, average pool, classifier."""
    c, g = int(64 * widen), int(32 * widen)
    ops: list = [Conv("features.conv1", c, 3, (t_size, 7, 7), (t_stride, 2, 2), (t_size // 2, 3, 3)),
                 BN("features.norm1", c), ReLU()]  # fmt: skip
    if max_pool:
        ops.append(MaxPool())
    blocks = DENSE_LAYERS[depth]
    for i, n_layers in enumerate(blocks, start=1):
        for j in range(1, n_layers + 1):
            p = f"features.denseblock{i}.denselayer{j}"
            ops.append(Dense((BN(f"{p}.norm1", c), ReLU(), _conv1(f"{p}.conv1", 4 * g, c), BN(f"{p}.norm2", 4 * g),
                              ReLU(), _conv3(f"{p}.conv2", g, 4 * g))))
            c += g
        if i < len(blocks):
            p = f"features.transition{i}"
            ops += [BN(f"{p}.norm", c), ReLU(), _conv1(f"{p}.conv", c // 2, c), AvgPool2()]
            c //= 2
    ops += [BN("features.norm5", c), ReLU(), Head("classifier", c, n_classes)]
    return ops


def layout(ops: Sequence) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape, in the order the ops register them."""
    keys: dict[str, tuple[int, ...]] = {}
    for op in ops:
        if isinstance(op, Conv):
            keys[f"{op.key}.weight"] = (op.out, op.inp, *op.kernel)
        elif isinstance(op, BN):
            for name in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{op.key}.{name}"] = (op.channels,)
            keys[f"{op.key}.num_batches_tracked"] = ()
        elif isinstance(op, Residual):
            keys |= layout(op.body) | (layout(op.short) if isinstance(op.short, tuple) else {})
        elif isinstance(op, Dense):
            keys |= layout(op.body)
        elif isinstance(op, Head):
            keys |= {f"{op.key}.weight": (op.n, op.inp), f"{op.key}.bias": (op.n,)}
    return keys


def run(ops: Sequence, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The forward pass of the description on the weights sd (eval mode)."""
    for op in ops:
        if isinstance(op, Conv):
            x = F.conv3d(x, sd[f"{op.key}.weight"], None, op.stride, op.padding, 1, op.groups)
        elif isinstance(op, BN):
            x = F.batch_norm(x, sd[f"{op.key}.running_mean"], sd[f"{op.key}.running_var"], sd[f"{op.key}.weight"],
                             sd[f"{op.key}.bias"], False, 0.0, 1e-5)
        elif isinstance(op, ReLU):
            x = F.relu(x)
        elif isinstance(op, MaxPool):
            x = F.max_pool3d(x, 3, 2, 1)
        elif isinstance(op, AvgPool2):
            x = F.avg_pool3d(x, 2, 2)
        elif isinstance(op, Residual):
            if op.short is None:
                short = x
            elif isinstance(op.short, ZeroPad):
                kept = x[:, :, :: op.short.stride, :: op.short.stride, :: op.short.stride]
                short = torch.cat([kept, kept.new_zeros(kept.shape[0], op.short.planes - kept.shape[1],
                                                        *kept.shape[2:])], 1)
            else:
                short = run(op.short, sd, x)
            x = run(op.body, sd, x) + short
            x = F.relu(x) if op.relu else x
        elif isinstance(op, Dense):
            x = torch.cat([x, run(op.body, sd, x)], 1)
        elif isinstance(op, Head):
            x = F.linear(x.mean((2, 3, 4)), sd[f"{op.key}.weight"], sd[f"{op.key}.bias"])
    return x


def cost(ops: Sequence, shape: tuple[int, int, int, int]) -> tuple[int, int, tuple[int, int, int, int]]:
    """(parameters, forward multiply-adds of convs and linear layers, output shape) for one clip of `shape`
    (C, T, H, W), by shape arithmetic alone: out = floor((n + 2 pad - kernel) / stride) + 1."""
    params = macs = 0
    c, *thw = shape
    for op in ops:
        if isinstance(op, Conv):
            thw = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(thw, op.padding, op.kernel, op.stride, strict=True)]
            c = op.out
            params += op.out * op.inp * math.prod(op.kernel)
            macs += math.prod(thw) * op.out * op.inp * math.prod(op.kernel)
        elif isinstance(op, BN):
            params += 2 * op.channels
        elif isinstance(op, MaxPool):
            thw = [(n + 2 - 3) // 2 + 1 for n in thw]
        elif isinstance(op, AvgPool2):
            thw = [n // 2 for n in thw]
        elif isinstance(op, Residual):
            p1, m1, out = cost(op.body, (c, *thw))
            p2, m2, _ = cost(op.short, (c, *thw)) if isinstance(op.short, tuple) else (0, 0, None)
            params, macs, (c, *thw) = params + p1 + p2, macs + m1 + m2, out
        elif isinstance(op, Dense):
            p1, m1, out = cost(op.body, (c, *thw))
            params, macs, c = params + p1, macs + m1, c + out[0]
        elif isinstance(op, Head):
            params += op.n * op.inp + op.n
            macs += op.n * op.inp
            c, thw = op.n, [1, 1, 1]
    return params, macs, (c, *thw)


def describe(arch: str, n_classes: int, **kw) -> list:
    """The description for build_model's arguments."""
    fam, depth = arch.rsplit("-", 1)[0], int(arch.rsplit("-", 1)[1])
    stem = {"t_size": kw.get("conv1_t_size", 7), "t_stride": kw.get("conv1_t_stride", 1),
            "max_pool": not kw.get("no_max_pool", False), "widen": kw.get("widen_factor", 1.0)}
    if fam == "densenet":
        return dense_net(depth, n_classes, **stem)
    return residual_net(fam, depth, n_classes, shortcut=kw.get("shortcut", "A"), cardinality=kw.get("cardinality", 32),
                        k=kw.get("wide_k", 2), **stem)


# ================================================================ layout, parameters, outputs, multiply-adds


def _meta(arch: str, n_classes: int = 400, **kw) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(arch, n_classes, **kw)


# (arch, build_model keywords, state_dict entries other than num_batches_tracked in 3D-ResNets-PyTorch's model)
LAYOUTS = [
    ("preresnet-18", {"shortcut": "A"}, 87),
    ("preresnet-200", {"shortcut": "B"}, 1017),
    ("resnext-50", {"shortcut": "A"}, 247),
    ("resnext-50", {"shortcut": "B"}, 267),
    ("resnext-101", {"shortcut": "B"}, 522),
    ("wideresnet-50", {"shortcut": "B"}, 267),
    ("wideresnet-101", {"shortcut": "A"}, 502),
    ("wideresnet-50", {"shortcut": "B", "wide_k": 1, "widen_factor": 2.0}, 267),  # the master branch's k = 2
    ("densenet-121", {}, 606),
    ("densenet-169", {}, 846),
    ("r2plus1d-18", {"shortcut": "A"}, 172),
    ("r2plus1d-18", {"shortcut": "B"}, 187),
    ("r2plus1d-50", {"shortcut": "B"}, 352),
    # the stem options, one model of each family (the CVPR2018 ResNeXt and pre-activation ResNet have none: their
    # count is the default model's, only conv1's shape changes)
    ("resnext-50", {"shortcut": "B", "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}, 267),
    ("preresnet-50", {"shortcut": "B", "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}, 267),
    ("wideresnet-50", {"shortcut": "A", "wide_k": 1, "conv1_t_size": 3, "no_max_pool": True}, 247),
    ("densenet-121", {"conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}, 606),
    ("r2plus1d-34", {"shortcut": "B", "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True,
                     "widen_factor": 0.5}, 347),
]


@pytest.mark.parametrize(("arch", "kw", "n_reference"), LAYOUTS)
def test_state_dict_is_the_references(arch: str, kw: dict, n_reference: int) -> None:
    ours = {k: tuple(v.shape) for k, v in _meta(arch, **kw).state_dict().items()}
    expected = layout(describe(arch, 400, **kw))
    assert list(ours) == list(expected)  # same keys in the same order
    assert ours == expected
    assert sum(not k.endswith("num_batches_tracked") for k in ours) == n_reference


# Parameters at 400 classes, counted on 3D-ResNets-PyTorch's own models.
PARAMETERS = [
    ("preresnet-200", {"shortcut": "B"}, 127_419_088),  # preresnet-200-kinetics.pth
    ("preresnet-18", {"shortcut": "A"}, 33_234_384),
    ("resnext-101", {"shortcut": "B"}, 48_340_816),  # the CVPR 2018 paper's "48.3 M"
    ("resnext-50", {"shortcut": "A"}, 23_908_688),
    ("wideresnet-50", {"shortcut": "B"}, 158_248_272),  # wideresnet-50-kinetics.pth (CVPR2018 branch)
    ("wideresnet-50", {"shortcut": "B", "wide_k": 1, "widen_factor": 2.0}, 158_338_832),  # master's k = 2
    ("densenet-121", {}, 11_696_528),
    ("densenet-169", {}, 19_252_624),
    ("r2plus1d-18", {"shortcut": "B"}, 33_421_164),
    ("r2plus1d-18", {"shortcut": "A"}, 33_247_340),
    ("r2plus1d-50", {"shortcut": "B"}, 47_035_382),
]


@pytest.mark.parametrize(("arch", "kw", "n"), PARAMETERS)
def test_parameter_counts(arch: str, kw: dict, n: int) -> None:
    assert sum(p.numel() for p in _meta(arch, **kw).parameters()) == n
    assert cost(describe(arch, 400, **kw), (3, 16, 112, 112))[0] == n


def test_resnext_101_costs_what_the_start_up_line_says() -> None:
    """model_cost (what train.py and train_speed.py print) at the paper's 16x112x112 clip: ResNeXt-101 has
    48.34 M parameters at 400 classes and 9.57 G multiply-adds, both as the description's shape arithmetic."""
    got = model_cost(16, 112, arch="resnext-101", n_classes=400, shortcut="B")
    params, macs, out = cost(describe("resnext-101", 400, shortcut="B"), (3, 16, 112, 112))
    assert (got.parameters, got.macs, out) == (params, macs, (400, 1, 1, 1))
    assert got.describe() == "48.34 M parameters, 9.57 G multiply-adds per clip (forward)"


def _randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights, BN affine parameters and running statistics (eval mode), so that any op the description
    and the module disagree on changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.ndim == 1:  # BN weight, bias, running mean; the classifier's bias
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
    return net.eval()


# Small widths: every family, both shortcut types, the stem options; two depths but for DenseNet, whose 169 layers
# differ from its 121 only in block lengths (the layout test covers both).
OUTPUTS = [
    ("preresnet-18", {"shortcut": "A", "widen_factor": 0.125}),
    ("preresnet-50", {"shortcut": "B", "widen_factor": 0.125, "conv1_t_size": 3, "no_max_pool": True}),
    ("resnext-50", {"shortcut": "A", "widen_factor": 0.25, "cardinality": 4}),
    ("resnext-50", {"shortcut": "B", "widen_factor": 0.25, "cardinality": 4, "conv1_t_size": 3, "no_max_pool": True}),
    ("resnext-101", {"shortcut": "B", "widen_factor": 0.25}),  # cardinality 32: one channel per group
    ("wideresnet-50", {"shortcut": "A", "widen_factor": 0.125}),
    ("wideresnet-101", {"shortcut": "B", "widen_factor": 0.125, "wide_k": 1, "conv1_t_stride": 2}),
    ("densenet-121", {"widen_factor": 0.125}),
    ("densenet-121", {"widen_factor": 0.125, "conv1_t_size": 3, "conv1_t_stride": 2, "no_max_pool": True}),
    ("r2plus1d-18", {"shortcut": "A", "widen_factor": 0.125}),
    ("r2plus1d-18", {"shortcut": "B", "widen_factor": 0.125, "conv1_t_size": 3}),
    ("r2plus1d-50", {"shortcut": "B", "widen_factor": 0.125, "no_max_pool": True}),
]


@pytest.mark.parametrize(("arch", "kw"), OUTPUTS)
def test_outputs_and_cost_are_the_descriptions(arch: str, kw: dict) -> None:
    torch.manual_seed(0)
    net = _randomised(build_model(arch, 5, **kw), seed=1)
    sd = net.state_dict()
    ops = describe(arch, 5, **kw)
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        ours, theirs = net(x), run(ops, sd, x)
    assert ours.shape == (2, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    assert theirs.std() > 0.1 * theirs.abs().max()  # outputs that vary: the comparison can see a difference
    params, macs, _ = cost(ops, (3, 16, 32, 32))
    got = model_cost(16, 32, arch=arch, n_classes=5, **kw)
    assert (got.parameters, got.macs) == (params, macs)
    # The comparison is sharp enough to see one BN statistic of the last block off by 0.5.
    last_bn = [k for k in sd if k.endswith("running_mean")][-2]
    with torch.no_grad():
        sd[last_bn] += 0.5
        assert not torch.allclose(net(x), theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("block_type", ["resnext", "r2plus1d"])
def test_type_a_shortcut_passes_gradient(block_type: str) -> None:
    """With the residual branch's last BN scaled to 0 the block is relu(shortcut(x)): for x > 0 the gradient of
    sum(out) is exactly 1 at the voxels the stride keeps and 0 elsewhere (the reference's type A, which
    concatenates out.data, gives 0 everywhere)."""
    torch.manual_seed(0)
    if block_type == "resnext":
        block, last_bn = (b := ResNeXtBottleneck(8, 32, stride=2, downsample=ZeroPadShortcut(64, 2), cardinality=4)), b.bn3
    else:
        block, last_bn = (b := BasicBlock2p1d(4, 8, stride=2, downsample=ZeroPadShortcut(8, 2))), b.bn2_t
    with torch.no_grad():
        last_bn.weight.zero_()
    c_in = 8 if block_type == "resnext" else 4
    x = (torch.rand(2, c_in, 4, 6, 6) + 0.5).requires_grad_()
    block(x).sum().backward()
    expected = torch.zeros_like(x)
    expected[:, :, ::2, ::2, ::2] = 1
    assert torch.equal(x.grad, expected)


def test_fine_tuning_module_names() -> None:
    """--ft-begin's names, in forward order: 3D-ResNets-PyTorch's --ft_begin_module names (DenseNet: inside
    `features`)."""
    names = {label: [n for n, _ in fine_tuning_modules(_meta(arch, **kw))] for label, arch, kw in
             [("resnext-50", "resnext-50", {}), ("wideresnet-50", "wideresnet-50", {}), ("preresnet-18", "preresnet-18", {}),
              ("r2plus1d-18", "r2plus1d-18", {}), ("densenet-121", "densenet-121", {}),
              ("densenet-121-no-pool", "densenet-121", {"no_max_pool": True})]}  # fmt: skip
    stages = ["layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert names["resnext-50"] == names["wideresnet-50"] == names["preresnet-18"] == ["conv1", "bn1", "relu",
                                                                                      "maxpool", *stages]
    assert names["r2plus1d-18"] == ["conv1_s", "bn1_s", "conv1_t", "bn1_t", "relu", "maxpool", *stages]
    dense = ["denseblock1", "transition1", "denseblock2", "transition2", "denseblock3", "transition3", "denseblock4",
             "norm5", "classifier"]
    assert names["densenet-121"] == ["conv1", "norm1", "relu1", "pool1", *dense]
    assert names["densenet-121-no-pool"] == ["conv1", "norm1", "relu1", *dense]


# ================================================================ arguments


def test_arguments_a_family_does_not_take_are_refused() -> None:
    cases = {
        ("resnet-50", "cardinality", 16): "cardinality=16: resnet-50 has no cardinality to set (only resnext-* do); "
                                          "leave it at 32",
        ("resnext-101", "wide_k", 4): "wide_k=4: resnext-101 has no wide k to set (only wideresnet-* do); leave it "
                                      "at 2",
        ("densenet-121", "shortcut", "B"): "shortcut='B': densenet-121 has no shortcut to set (only resnet-*, "
                                           "preresnet-*, resnext-*, wideresnet-*, r2plus1d-* do); leave it at 'A'",
        ("resnext-50", "widen_factor", 0.125): "widen_factor=0.125: too narrow for resnext-50: layer1's groups get "
                                               "128 x widen_factor // 32 channels each; use >= 0.25",
        ("densenet-121", "widen_factor", 1 / 64): "widen_factor=0.015625: too narrow for densenet-121: the growth "
                                                  "rate, 32 x widen_factor channels, must be >= 1; use >= 0.03125",
        ("resnext-50", "cardinality", 0): "cardinality=0: must be >= 1",
    }
    for (arch, name, value), message in cases.items():
        with pytest.raises(ModelArgError) as e:
            build_model(arch, 10, **{name: value})
        assert str(e.value) == message
        assert (e.value.name, e.value.value) == (name, value)
    with pytest.raises(ModelArgError, match="conv1_t_size=1: r2plus1d-18's factorised conv1 keeps no channels"):
        build_model("r2plus1d-18", 10, widen_factor=1 / 64, conv1_t_size=1)  # 3*1*1*49 // (147 + 1) = 0
    with pytest.raises(ModelArgError, match=r"arch='resnext101': unknown architecture; choose one of resnet-10, "):
        build_model("resnext101", 10)
    # The smallest widths that are allowed build.
    assert build_model("resnext-50", 3, widen_factor=0.25).layer1[0].conv2.weight.shape == (32, 1, 3, 3, 3)
    assert build_model("densenet-121", 3, widen_factor=1 / 32).features.denseblock1.denselayer1.conv2.weight.shape[0] == 1


def test_densenet_needs_15_frames_and_29_pixels_and_says_so() -> None:
    """Its three 2x2x2 average pools need 8 in each dimension after the stem: with the max pool that is 15 frames
    ((15 - 1) // 2 + 1 = 8) and 29 pixels (29 -> 15 -> 8). check_clip says so by arithmetic, model_cost by
    running the model (meta device), on both sides of each boundary."""
    small = {"arch": "densenet-121", "n_classes": 5, "widen_factor": 0.125}
    for frames, size in ((15, 29), (16, 112)):
        check_clip(frames, size, **small)
        assert model_cost(frames, size, **small).macs > 0
    for frames, size, stem in ((14, 29, "7x8x8"), (15, 28, "8x7x7")):
        with pytest.raises(ValueError) as e:
            check_clip(frames, size, **small)
        assert str(e.value) == (f"densenet-121 cannot take {frames}x{size}x{size} clips: its stem makes them {stem}, "
                                "and its three 2x2x2 average pools need 8 in each dimension; use more frames or a "
                                "larger size")
        with pytest.raises(ValueError, match=rf"^densenet-121 cannot take {frames}x{size}x{size} clips: they shrink "
                                             r"to nothing inside it \(.*\); use more frames or a larger size$"):
            model_cost(frames, size, **small)
    check_clip(8, 32, **small | {"no_max_pool": True})  # without the max pool 8 frames are enough
    check_clip(1, 1, arch="resnet-18", n_classes=5)  # the residual families keep every dimension >= 1


# ================================================================ the authors' checkpoints


def _authors_file(path: Path, net: torch.nn.Module, arch: str, legacy_densenet: bool = False) -> Path:
    """A checkpoint as 3D-ResNets-PyTorch's main.py saves it: {"epoch", "arch", "state_dict" with DataParallel's
    module. prefix, "optimizer"}; legacy_densenet: the CVPR2018 branch's DenseNet names and, as PyTorch 0.3 wrote
    them, no num_batches_tracked."""
    sd = net.state_dict()
    if legacy_densenet:
        def old(k: str) -> str:
            k = re.sub(r"^features\.(conv|norm)1\.", r"features.\g<1>0.", k)
            return re.sub(r"(denselayer\d+)\.(norm|conv)([12])\.", r"\1.\2.\3.", k)
        sd = {old(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 200, "arch": arch, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_legacy_densenet_names_are_renamed() -> None:
    names = ["features.conv0.weight", "features.norm0.running_var", "features.denseblock2.denselayer11.norm.1.bias",
             "features.denseblock2.denselayer11.conv.2.weight", "features.transition1.norm.weight", "classifier.bias",
             "features.norm5.weight", "layer1.0.conv1.weight", "conv1.weight"]  # fmt: skip
    renamed = list(rename_legacy_keys({k: torch.zeros(1) for k in names}))
    assert renamed == ["features.conv1.weight", "features.norm1.running_var",
                       "features.denseblock2.denselayer11.norm1.bias", "features.denseblock2.denselayer11.conv2.weight",
                       "features.transition1.norm.weight", "classifier.bias", "features.norm5.weight",
                       "layer1.0.conv1.weight", "conv1.weight"]  # fmt: skip


@pytest.mark.parametrize(("arch", "file_arch", "kw", "legacy"), [
    ("preresnet-50", "preresnet-50", {"shortcut": "B", "widen_factor": 0.125}, False),
    ("resnext-101", "resnext-101", {"shortcut": "B", "widen_factor": 0.25}, False),
    ("wideresnet-50", "wideresnet-50", {"shortcut": "B", "widen_factor": 0.125}, False),
    ("densenet-121", "densenet-121", {"widen_factor": 0.125}, True),  # densenet-121-kinetics.pth's layout
    ("densenet-121", "densenet-121", {"widen_factor": 0.125}, False),  # the master branch's
    ("r2plus1d-18", "resnet2p1d-18", {"shortcut": "B", "widen_factor": 0.125}, False),  # r2p1d18_K_200ep.pth's
])  # fmt: skip
def test_authors_checkpoints_load_and_give_the_same_outputs(tmp_path, arch, file_arch, kw, legacy) -> None:
    torch.manual_seed(1)
    src = _randomised(build_model(arch, 400, **kw), seed=2)
    path = _authors_file(tmp_path / "kinetics.pth", src, file_arch, legacy_densenet=legacy)
    dst = build_model(arch, 400, **kw).eval()
    report = load_weights(dst, path)
    assert report.arch == arch and report.metadata["epoch"] == 200 and not report.head_replaced
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_densenet_head_is_replaced_for_another_class_count(tmp_path, capsys) -> None:
    src = _randomised(build_model("densenet-121", 400, widen_factor=0.125), seed=2)
    path = _authors_file(tmp_path / "densenet-121-kinetics.pth", src, "densenet-121", legacy_densenet=True)
    torch.manual_seed(3)
    dst = build_model("densenet-121", 5, widen_factor=0.125)
    fresh = dst.classifier.weight.detach().clone()
    report = load_weights(dst, path)
    n = sum(not k.endswith("num_batches_tracked") for k in src.state_dict())
    assert report.head_replaced and report.n_loaded == n - 2
    assert torch.equal(dst.classifier.weight, fresh)
    assert torch.equal(dst.features.denseblock4.denselayer16.conv2.weight,
                       src.features.denseblock4.denselayer16.conv2.weight)
    assert capsys.readouterr().out == (f"load_weights: {path}: classifier has 400 classes, the model 5; kept the "
                                       f"model's new classifier, loaded the other {n - 2} tensors\n")
    with pytest.raises(CheckpointError, match="classifier.weight"):
        load_weights(build_model("densenet-121", 5, widen_factor=0.125), path, strict_head=True)


def test_checkpoint_record_describes_foreign_checkpoints_of_every_family(tmp_path) -> None:
    """evaluate.py's and infer.py's model for a checkpoint without a run record: the arch from the file (R(2+1)D's
    "resnet2p1d-18" read as r2plus1d-18), the class count from fc or DenseNet's classifier, the stem's temporal
    kernel checked on conv1, R(2+1)D's conv1_t or DenseNet's features.conv1; flags a family does not take are
    one-line errors naming the flag."""
    from engine.checkpoint import checkpoint_record

    flags = {"widen_factor": 0.125, "shortcut": "B"}
    r21d = _authors_file(tmp_path / "r2p1d.pth", build_model("r2plus1d-18", 700, shortcut="B", widen_factor=0.125,
                                                              conv1_t_size=3), "resnet2p1d-18")
    record = checkpoint_record(r21d, {**flags, "conv1_t_size": 3}, None)
    assert record.model_args["arch"] == "r2plus1d-18" and record.model_args["n_classes"] == 700
    assert record.model_name() == "r2plus1d-18-B"  # (evaluate.py's and infer.py's label)
    assert record.class_names[:2] == ("0", "1") and len(record.class_names) == 700
    with pytest.raises(CheckpointError, match=r"its conv1 spans 3 frames, the model's 7; HINT: add --conv1-t-size 3"):
        checkpoint_record(r21d, flags, None)

    dense = _authors_file(tmp_path / "densenet.pth", build_model("densenet-121", 400, widen_factor=0.125,
                                                                  conv1_t_size=5), "densenet-121", legacy_densenet=True)
    record = checkpoint_record(dense, {"widen_factor": 0.125, "conv1_t_size": 5}, None)
    assert (record.model_args["arch"], record.model_args["n_classes"]) == ("densenet-121", 400)
    assert record.model_name() == "densenet-121"  # no shortcut to name: its blocks concatenate
    with pytest.raises(CheckpointError, match="its conv1 spans 5 frames, the model's 7"):
        checkpoint_record(dense, {"widen_factor": 0.125}, None)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(dense))}: densenet-121 cannot take 8x112x112 clips: "
                                              r".* \(--sample-duration, --sample-size\)$"):
        checkpoint_record(dense, {"widen_factor": 0.125, "conv1_t_size": 5, "sample_duration": 8}, None)
    with pytest.raises(CheckpointError) as e:
        checkpoint_record(dense, {"widen_factor": 0.125, "conv1_t_size": 5, "shortcut": "B"}, None)
    assert str(e.value) == (f"{dense}: --shortcut B: densenet-121 has no shortcut to set (only resnet-*, preresnet-*, "
                            "resnext-*, wideresnet-*, r2plus1d-* do); leave it at 'A'")

    resnext = _authors_file(tmp_path / "resnext.pth", build_model("resnext-50", 400, shortcut="B", widen_factor=0.25,
                                                                   cardinality=8), "resnext-50")
    record = checkpoint_record(resnext, {"widen_factor": 0.25, "shortcut": "B", "cardinality": 8}, None)
    assert record.model_args["cardinality"] == 8
    net = build_model(**record.model_args)
    load_weights(net, resnext)


def test_canonical_arch() -> None:
    assert [canonical_arch(a) for a in ("resnet2p1d-50", "r2plus1d-50", "resnext-101", None)] == \
        ["r2plus1d-50", "r2plus1d-50", "resnext-101", None]


# ================================================================ train.py, evaluate.py, train_speed.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from videos import make_dataset  # VP9 test-pattern videos in the prepared layout

    root = tmp_path_factory.mktemp("zoo_data")
    return make_dataset(root, {"train": [{"frames": n} for n in (20, 24, 18, 30, 22, 26)],
                               "val": [{"frames": n} for n in (20, 35, 25)]}, width=48, height=32)


TRAIN = ["--sample-size", "32", "--batch-size", "3", "--lr", "0.01", "--workers", "1", "--epochs", "1"]

# Each family: a small model, its flags, the module --ft-begin starts from, a frozen and a trained key.
FAMILIES = {
    "preresnet-18": (["--shortcut", "B", "--widen-factor", "0.125"], "layer2", "layer1.1.bn1.running_var",
                     "layer2.0.conv1.weight"),
    "resnext-50": (["--shortcut", "B", "--widen-factor", "0.25", "--cardinality", "8"], "layer4",
                   "layer3.5.conv2.weight", "layer4.0.conv2.weight"),
    "wideresnet-50": (["--shortcut", "B", "--widen-factor", "0.125", "--wide-k", "1"], "layer3",
                      "layer2.0.downsample.1.running_mean", "layer3.0.conv1.weight"),
    "densenet-121": (["--widen-factor", "0.125"], "denseblock4", "features.transition3.conv.weight",
                     "features.denseblock4.denselayer1.conv1.weight"),
    "r2plus1d-18": (["--widen-factor", "0.125", "--conv1-t-size", "3"], "layer4", "conv1_t.weight",
                    "layer4.1.conv2_t.weight"),
}


def _kw(flags: list[str]) -> dict:
    """build_model keywords from the flags above."""
    names = {"--shortcut": ("shortcut", str), "--widen-factor": ("widen_factor", float),
             "--cardinality": ("cardinality", int), "--wide-k": ("wide_k", int), "--conv1-t-size": ("conv1_t_size", int)}
    return {names[f][0]: names[f][1](v) for f, v in zip(flags[::2], flags[1::2], strict=True)}


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_train_fine_tunes_an_authors_checkpoint_of_every_family(arch, data, tmp_path, capsys) -> None:
    """train.py --pretrained (a 400-class checkpoint in the authors' layout) --ft-begin: a few steps on the
    sample data; the modules before --ft-begin keep their weights and BN statistics, the later ones and the new
    3-class head train; the start-up line gives the model's parameters and multiply-adds; the checkpoint's run
    record describes the model (evaluate.py rebuilds it without flags)."""
    import train
    from engine.checkpoint import checkpoint_record

    flags, ft_begin, frozen_key, trained_key = FAMILIES[arch]
    kw = _kw(flags)
    torch.manual_seed(0)
    kinetics = _randomised(build_model(arch, 400, **kw), seed=4)
    file_arch = "resnet2p1d-18" if arch == "r2plus1d-18" else arch
    pretrained = _authors_file(tmp_path / f"{arch}-kinetics.pth", kinetics, file_arch,
                               legacy_densenet=arch.startswith("densenet"))
    out = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(out), "--arch", arch, *flags, *TRAIN, "--pretrained",
                str(pretrained), "--ft-begin", ft_begin])
    printed = capsys.readouterr().out
    params, macs, _ = cost(describe(arch, 3, **kw), (3, 16, 32, 32))
    assert f"{arch}: {params / 1e6:.2f} M parameters (" in printed
    assert f"M trained), {macs / 1e9:.2f} G multiply-adds per 16x32x32 clip (forward), 3 classes |" in printed

    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    before, after = kinetics.state_dict(), ckpt["model"]
    assert torch.equal(before[frozen_key], after[frozen_key]), frozen_key
    assert not torch.equal(before[trained_key], after[trained_key]), trained_key
    head = "classifier.weight" if arch.startswith("densenet") else "fc.weight"
    assert after[head].shape[0] == 3
    assert ckpt["model_args"] == {"arch": arch, "n_classes": 3, "shortcut": "A", "conv1_t_size": 7,
                                  "conv1_t_stride": 1, "no_max_pool": False, "widen_factor": 1.0,
                                  "cardinality": 32, "wide_k": 2} | kw
    record = checkpoint_record(out / "checkpoints" / "last.pt", {}, None)
    net = build_model(**record.model_args)
    load_weights(net, out / "checkpoints" / "last.pt")


def test_train_refuses_flags_the_family_does_not_take_and_clips_too_short(data, tmp_path, capsys) -> None:
    import train

    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(data), "--out", str(tmp_path / "a"), "--arch", "resnet-18", "--cardinality", "16"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --cardinality 16: resnet-18 has no cardinality to set (only resnext-* do); leave it at 32")
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(data), "--out", str(tmp_path / "b"), "--arch", "densenet-121", "--widen-factor",
                    "0.125", "--sample-duration", "8", "--sample-size", "32"])
    assert str(e.value.code) == ("error: densenet-121 cannot take 8x32x32 clips: its stem makes them 4x8x8, and its "
                                 "three 2x2x2 average pools need 8 in each dimension; use more frames or a larger "
                                 "size (--sample-duration, --sample-size)")
    assert not (tmp_path / "b").exists()


def test_evaluate_an_authors_densenet_checkpoint(data, tmp_path) -> None:
    """evaluate.py on densenet-121-kinetics.pth's layout (CVPR2018 names, no BN counters, a `classifier`), with
    the flags that describe it: the predictions are those of the same weights called directly."""
    import evaluate
    from pipeline import build_loader
    from pipeline.normalisation import PRESETS

    net = _randomised(build_model("densenet-121", 3, widen_factor=0.125), seed=5)
    path = _authors_file(tmp_path / "densenet-121-kinetics.pth", net, "densenet-121", legacy_densenet=True)
    evaluate.main(["--data", str(data), "--checkpoint", str(path), "--out", str(tmp_path / "eval"), "--widen-factor",
                   "0.125", "--norm", "activitynet", "--sample-size", "32", "--batch-size", "4",
                   "--workers", "1", "--backend", "dali"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["n_videos"], metrics["n_clips"]) == (3, 4)  # 20, 35, 25 frames: 1, 2, 1 windows of 16
    pred = json.loads((tmp_path / "eval" / "predictions.json").read_text())["results"]
    with build_loader(data, split="val", mode="eval", backend="dali", batch_size=4, sample_size=32, workers=1,
                      normalisation=PRESETS["activitynet"], progress=False) as loader:
        sums, counts = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3)
        for clips, _, video_idx in loader:
            with torch.no_grad():
                sums.index_add_(0, video_idx, net(clips).softmax(1).double())
            counts.index_add_(0, video_idx, torch.ones(len(video_idx)))
    want = sums / counts[:, None]
    classes = ["a", "b", "c"]
    for v in range(3):
        for t in pred[f"val{v:03d}"]:
            assert abs(t["score"] - float(want[v, classes.index(t["label"])])) < 1e-5


def test_train_speed_covers_one_depth_of_each_family(tmp_path, monkeypatch) -> None:
    """benchmarks/train_speed.py --arch zoo: a row per family, each with the parameters and multiply-adds per clip
    of its model (at these tiny widths and clips; batch 2: train-mode BN needs 2 values where the last stage is
    1x1x1)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import train_speed as bench

    out = tmp_path / "zoo.json"
    assert bench.main(["--arch", "zoo", "--widen-factor", "0.25", "--frames", "16", "--size", "32", "--batch-size",
                       "2", "--warmup", "0", "--iters", "1", "--repeats", "1", "--device", "cpu", "--n-classes", "7",
                       "--shortcut", "B", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["arch"] for r in rows] == list(bench.ZOO) == ["resnet-18", "resnet-34", "preresnet-200", "resnext-101",
                                                            "wideresnet-50", "densenet-121", "r2plus1d-18"]
    for r in rows:
        kw = {"widen_factor": 0.25} | ({} if r["arch"].startswith("densenet") else {"shortcut": "B"})
        params, macs, _ = cost(describe(r["arch"], 7, **kw), (3, 16, 32, 32))
        assert (r["params_m"], r["fwd_gmacs_per_clip"]) == (round(params / 1e6, 3), round(macs / 1e9, 3)), r["arch"]
        assert r["clips_per_s"] > 0


def test_train_speed_cost_only_counts_every_family_at_the_papers_clip(tmp_path, monkeypatch) -> None:
    """--cost-only: no timing, each model's parameters and multiply-adds per 16x112x112 clip, as RESULTS.md
    records them (--shortcut B for the families that have shortcuts)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import train_speed as bench

    out = tmp_path / "cost.json"
    assert bench.main(["--arch", "zoo", "--shortcut", "B", "--cost-only", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for r in rows:
        kw = {} if r["arch"].startswith("densenet") else {"shortcut": "B"}
        params, macs, _ = cost(describe(r["arch"], 400, **kw), (3, 16, 112, 112))
        assert (r["mode"], r["shortcut"], r["params"], r["fwd_macs_per_clip"]) == ("cost", kw.get("shortcut"), params,
                                                                                  macs), r["arch"]
    assert [(r["arch"], r["params"]) for r in rows if r["arch"] == "resnext-101"] == [("resnext-101", 48_340_816)]
