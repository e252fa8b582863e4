"""R(2+1)D (Tran et al., CVPR 2018) as built by 3D-ResNets-PyTorch (`models/resnet2p1d.py`, master branch): the
3D ResNet with every 3D conv factorised into a spatial 1 x k x k conv and a temporal k x 1 x 1 conv, with BN and
ReLU between them. The intermediate width is chosen so that the pair has about as many weights as the 3D conv
it replaces (`mid_planes`).

Keys: conv1_s, bn1_s, conv1_t, bn1_t (the stem); BasicBlock: conv1_s, bn1_s, conv1_t, bn1_t, conv2_s, bn2_s,
conv2_t, bn2_t; Bottleneck: conv1, bn1, conv2_s, bn2_s, conv2_t, bn2_t, conv3, bn3; downsample.{0,1} (type B,
an unfactorised 1x1x1 conv); fc. A strided block strides in space in its first spatial conv and in time in
the temporal conv after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.resnet import LAYERS, STEM_PLANES, ResNet3d, conv1x1x1

ARCHS: tuple[str, ...] = tuple(f"r2plus1d-{depth}" for depth in LAYERS)


def mid_planes(in_planes: int, out_planes: int, t: int, k: int) -> int:
    """Width between the spatial (1 x k x k) and temporal (t x 1 x 1) convs that replace a t x k x k conv:
    floor(weights of the 3D conv / weights per intermediate channel), as the reference computes it."""
    return (in_planes * out_planes * t * k * k) // (in_planes * k * k + t * out_planes)


def conv1x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                     bias=False)


def conv3x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0),
                     bias=False)


class BasicBlock2p1d(nn.Module):
    """Two factorised 3x3x3 convs: (1x3x3, BN, ReLU, 3x1x1, BN) with ReLU after the first pair and after the sum."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        mid1 = mid_planes(in_planes, planes, 3, 3)
        self.conv1_s = conv1x3x3(in_planes, mid1, stride)
        self.bn1_s = nn.BatchNorm3d(mid1)
        self.conv1_t = conv3x1x1(mid1, planes, stride)
        self.bn1_t = nn.BatchNorm3d(planes)
        mid2 = mid_planes(planes, planes, 3, 3)
        self.conv2_s = conv1x3x3(planes, mid2)
        self.bn2_s = nn.BatchNorm3d(mid2)
        self.conv2_t = conv3x1x1(mid2, planes)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1_s(self.conv1_s(x)))
        out = self.relu(self.bn1_t(self.conv1_t(out)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.bn2_t(self.conv2_t(out))
        return self.relu(out + identity)


class Bottleneck2p1d(nn.Module):
    """1x1x1 reduce, factorised 3x3x3 (1x3x3, BN, ReLU, 3x1x1; carries the stride), 1x1x1 expand by 4; BN after
    each conv, ReLU after each BN but the last, and after the sum."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        mid = mid_planes(planes, planes, 3, 3)
        self.conv2_s = conv1x3x3(planes, mid, stride)
        self.bn2_s = nn.BatchNorm3d(mid)
        self.conv2_t = conv3x1x1(mid, planes, stride)
        self.bn2_t = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2_s(self.conv2_s(out)))
        out = self.relu(self.bn2_t(self.conv2_t(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class R2Plus1d(ResNet3d):
    """ResNet3d with the factorised stem: conv1_s (1 x 7 x 7, stride (1, 2, 2)), bn1_s, ReLU, conv1_t
    (conv1_t_size x 1 x 1, stride (conv1_t_stride, 1, 1)), bn1_t, ReLU; then the max pool as ResNet's."""

    def make_stem(self, planes: int, conv1_t_size: int, conv1_t_stride: int) -> None:
        mid = mid_planes(3, planes, conv1_t_size, 7)
        self.conv1_s = nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1_s = nn.BatchNorm3d(mid)
        self.conv1_t = nn.Conv3d(mid, planes, kernel_size=(conv1_t_size, 1, 1), stride=(conv1_t_stride, 1, 1),
                                 padding=(conv1_t_size // 2, 0, 0), bias=False)
        self.bn1_t = nn.BatchNorm3d(planes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> (N, C, T / conv1_t_stride, H / 2, W / 2), before the max pool."""
        x = self.relu(self.bn1_s(self.conv1_s(x)))
        return self.relu(self.bn1_t(self.conv1_t(x)))


def r2plus1d(
    depth: int,
    n_classes: int,
    shortcut: str = "A",
    **stem: Any,
) -> R2Plus1d:
    """R(2+1)D-`depth` (10, 18, 34, 50, 101, 152, 200); stem: ResNet3d's conv1_t_size, conv1_t_stride,
    no_max_pool, widen_factor; model.build_model checks the arguments."""
    kind, layers = LAYERS[depth]
    block = BasicBlock2p1d if kind == "basic" else Bottleneck2p1d
    return R2Plus1d(
        block,
        layers,
        n_classes,
        shortcut=shortcut,
        stem_planes=STEM_PLANES,
        **stem,
    )
