"""3D ResNets of Hara, Kataoka, Satoh, "Learning Spatio-Temporal Features with 3D Residual Networks for Action
Recognition" (ICCV 2017 workshops), in torchvision's video-ResNet vocabulary. ResNet-18 and -34 are the paper's
Table 1; 10, 50, 101, 152 and 200 layers follow the authors' later code (3D-ResNets-PyTorch).

The module tree (and so every `state_dict()` key and shape) matches 3D-ResNets-PyTorch's
`models/resnet.py` (`generate_model`) for the same settings, so its published checkpoints load
without renaming. One deliberate difference: the type-A shortcut lets gradients flow; the reference
concatenates `out.data`, which detaches the shortcut from the graph.

ResNet3d is also the skeleton of the other residual families (model/resnext.py, wide_resnet.py,
resnet2p1d.py): they pass their own block, stage widths and stem.

Input (N, 3, T, H, W) float; output (N, n_classes) logits. The paper's setting is T=16, H=W=112.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Blocks per stage of the bottleneck networks, shared by ResNet, ResNeXt and Wide ResNet of the same depth.
BOTTLENECK_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
# depth -> (block type, blocks per stage); BasicBlock up to 34, Bottleneck from 50. R(2+1)D uses the same table.
LAYERS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    **{depth: ("bottleneck", layers) for depth, layers in BOTTLENECK_LAYERS.items()},
}
ARCHS: tuple[str, ...] = tuple(f"resnet-{depth}" for depth in LAYERS)
STAGE_PLANES: tuple[int, int, int, int] = (64, 128, 256, 512)
STEM_PLANES = 64  # conv1's output channels (before widen_factor)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_as_the_reference(model: nn.Module, linear_bias: float | None = None) -> None:
    """3D-ResNets-PyTorch's initialisation, in module order: Kaiming fan-out (ReLU) for every Conv3d, BatchNorm3d
    to identity (weight 1, bias 0), and Linear biases set to `linear_bias` when given (DenseNet's classifier: 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and linear_bias is not None:
            nn.init.constant_(m.bias, linear_bias)


def zero_pad_shortcut(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
    """Type-A shortcut: subsample by `stride` in T, H and W, then append zero channels up to `planes`.

    (N, C, T, H, W) -> (N, planes, ceil(T/stride), ceil(H/stride), ceil(W/stride)), same dtype.
    Keeps x[:, :, ::stride, ::stride, ::stride] exactly (a 1x1x1 average pool is a pure subsample)
    and stays in the autograd graph, unlike the reference's `torch.cat([out.data, zeros])`.
    """
    out = F.avg_pool3d(x, kernel_size=1, stride=stride)
    # F.pad pads the last dimensions first: (W, W, H, H, T, T, C_front, C_back).
    return F.pad(out, (0, 0, 0, 0, 0, 0, 0, planes - out.shape[1]))


class ZeroPadShortcut(nn.Module):
    """Parameter-free type-A shortcut as a module (no state_dict entries, like the reference's partial)."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return zero_pad_shortcut(x, self.planes, self.stride)

    def extra_repr(self) -> str:
        return f"planes={self.planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3x3 convs with BN; ReLU after the first conv and after the residual sum."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1x1 reduce, 3x3x3 (carries the stride), 1x1x1 expand by 4; BN after each, ReLU after the sum.

    width, groups: the inner 3x3x3 conv's channels (default planes) and groups (ResNeXt's bottleneck passes its
    grouped width and cardinality; the rest is this block)."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        width: int | None = None, groups: int = 1,
    ) -> None:
        super().__init__()
        width = planes if width is None else width
        self.conv1 = conv1x1x1(in_planes, width)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = conv1x1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet3d(nn.Module):
    """Stem (conv1, bn1, relu, maxpool), four stages (layer1..layer4), global average pool, fc.

    forward: (N, 3, T, H, W) float -> (N, n_classes) logits, fc of pooled_features (N, C). Stages 2-4 halve T, H
    and W; the stem halves H and W (and T when conv1_t_stride=2), the max pool halves all three unless no_max_pool.

    The other residual families reuse it: `block` is any module class taking (in_planes, planes, stride,
    downsample, **block_args) with a class attribute `expansion` (output channels = planes x expansion);
    `stage_planes` and `stem_planes` are the widths before `widen_factor`; a subclass may replace the stem
    (make_stem and stem, as R(2+1)D does).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: Sequence[int],
        n_classes: int,
        shortcut: str = "A",
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        widen_factor: float = 1.0,
        *,
        stage_planes: Sequence[int] = STAGE_PLANES,
        stem_planes: int = STEM_PLANES,
        block_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        planes = [int(p * widen_factor) for p in stage_planes]
        self.in_planes = int(stem_planes * widen_factor)  # channels entering the next stage; _make_layer updates it
        self.shortcut = shortcut
        self.no_max_pool = no_max_pool
        self.block_args = dict(block_args or {})

        self.make_stem(self.in_planes, conv1_t_size, conv1_t_stride)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(planes[3] * block.expansion, n_classes)

        init_as_the_reference(self)  # fc left at Linear's default

    def make_stem(self, planes: int, conv1_t_size: int, conv1_t_stride: int) -> None:
        """conv1 (conv1_t_size x 7 x 7, stride (conv1_t_stride, 2, 2)) and bn1, registered before the stages
        so that the state_dict's key order is the reference's."""
        self.conv1 = nn.Conv3d(
            3,
            planes,
            kernel_size=(conv1_t_size, 7, 7),
            stride=(conv1_t_stride, 2, 2),
            padding=(conv1_t_size // 2, 3, 3),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(planes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> (N, C, T / conv1_t_stride, H / 2, W / 2), before the max pool."""
        return self.relu(self.bn1(self.conv1(x)))

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.in_planes != out_planes:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    conv1x1x1(self.in_planes, out_planes, stride), nn.BatchNorm3d(out_planes)
                )
        layers: list[nn.Module] = [block(self.in_planes, planes, stride, downsample, **self.block_args)]
        self.in_planes = out_planes
        layers += [block(self.in_planes, planes, **self.block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) float -> (N, C) float: the last stage's output averaged over T, H and W, i.e. the input
        of fc (C = 512 x widen_factor for the BasicBlock depths, 2048 x widen_factor for the Bottleneck ones; the
        families' own: head.in_features). Features for downstream work (engine/features.py)."""
        x = self.stem(x)
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)  # (N, C)

    @property
    def head(self) -> nn.Linear:
        """The classifier, fc: (N, C) pooled features -> (N, n_classes) logits."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W) float
        return self.fc(self.pooled_features(x))  # (N, n_classes)


def resnet(
    depth: int,
    n_classes: int,
    shortcut: str = "A",
    **stem: Any,
) -> ResNet3d:
    """3D ResNet-`depth` (10, 18, 34, 50, 101, 152, 200); stem: ResNet3d's conv1_t_size, conv1_t_stride,
    no_max_pool, widen_factor; model.build_model checks the arguments."""
    kind, layers = LAYERS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    return ResNet3d(
        block,
        layers,
        n_classes,
        shortcut=shortcut,
        **stem,
    )
