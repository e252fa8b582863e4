"""3D pre-activation ResNet (He et al., "Identity Mappings in Deep Residual Networks"; 3D by Hara, Kataoka, Satoh,
CVPR 2018): each block applies BN and ReLU before each conv, and adds the shortcut to the last conv's output with
no ReLU after the sum.

Layout as in 3D-ResNets-PyTorch's CVPR2018 branch (`models/pre_act_resnet.py`, which produced the published
preresnet-200-kinetics.pth; its master branch's does not build): ResNet's stem (conv1, bn1, ReLU, max pool),
stages and widths; BasicBlock bn1, conv1, bn2, conv2; Bottleneck bn1, conv1, bn2, conv2, bn3, conv3; downsample
as ResNet's, applied to the block's input (not to its pre-activation). As in that file, no BN or ReLU follows
the last block: the average pool takes the last sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.resnet import LAYERS, STEM_PLANES, ResNet3d, conv1x1x1, conv3x3x3

ARCHS: tuple[str, ...] = tuple(f"preresnet-{depth}" for depth in LAYERS if depth != 10)  # the reference's depths


class PreActBasicBlock(nn.Module):
    """BN, ReLU, 3x3x3 conv (carries the stride), BN, ReLU, 3x3x3 conv; + shortcut."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)  # on BN outputs only: x stays intact for the shortcut
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN, ReLU, 1x1x1 conv; BN, ReLU, 3x3x3 conv (carries the stride); BN, ReLU, 1x1x1 conv to 4 x planes;
    + shortcut."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)  # on BN outputs only: x stays intact for the shortcut
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


def pre_act_resnet(
    depth: int,
    n_classes: int,
    shortcut: str = "A",
    **stem: Any,
) -> ResNet3d:
    """3D pre-activation ResNet-`depth` (18, 34, 50, 101, 152, 200); stem: ResNet3d's conv1_t_size, conv1_t_stride,
    no_max_pool, widen_factor; model.build_model checks the arguments."""
    kind, layers = LAYERS[depth]
    return ResNet3d(
        PreActBasicBlock if kind == "basic" else PreActBottleneck,
        layers,
        n_classes,
        shortcut=shortcut,
        stem_planes=STEM_PLANES,
        **stem,
    )
