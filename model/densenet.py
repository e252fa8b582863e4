"""3D DenseNet-BC (Huang et al.; 3D by Hara, Kataoka, Satoh, CVPR 2018): dense blocks in which every layer adds
`growth_rate` channels to the concatenation of all earlier ones, with 1x1x1-conv + average-pool transitions
that halve the channels and T, H, W between blocks.

Module tree and keys as 3D-ResNets-PyTorch's `models/densenet.py` (master branch):
  features.conv1 (conv1_t_size x 7 x 7, stride (conv1_t_stride, 2, 2)), features.norm1, [max pool],
  features.denseblockB.denselayerL.{norm1, conv1 (1x1x1 to 4 x growth), norm2, conv2 (3x3x3 to growth)},
  features.transitionB.{norm, conv} (B = 1..3), features.norm5, classifier.
The CVPR2018 branch, which produced the published densenet-121/201-kinetics.pth, names some of them otherwise
(features.conv0, features.norm0, denselayerL.norm.1, ...): model.read_checkpoint renames them on loading.

Input (N, 3, T, H, W) float; output (N, n_classes) logits. With the max pool the three transitions need T >= 15
(16 frames reach the last block as 1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.resnet import init_as_the_reference

# depth -> dense layers per block; all with 64 initial channels and growth rate 32 (DenseNet-BC).
BLOCK_CONFIG: dict[int, tuple[int, int, int, int]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}
ARCHS: tuple[str, ...] = tuple(f"densenet-{depth}" for depth in BLOCK_CONFIG)
INIT_FEATURES = 64
GROWTH_RATE = 32
BN_SIZE = 4  # a dense layer's 1x1x1 conv gives BN_SIZE x growth_rate channels


class DenseLayer(nn.Module):
    """BN, ReLU, 1x1x1 conv to bn_size x growth; BN, ReLU, 3x3x3 conv to growth; output = cat(input, new).

    (N, C, T, H, W) -> (N, C + growth_rate, T, H, W)."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm3d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv3d(in_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm3d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu1 is in place on norm1's output, never on x: x is part of the concatenation
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


class DenseBlock(nn.Sequential):
    """n_layers DenseLayers (denselayer1, denselayer2, ...): C -> C + n_layers x growth_rate channels."""

    def __init__(self, n_layers: int, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_features + i * growth_rate, growth_rate, bn_size))


class Transition(nn.Sequential):
    """BN, ReLU, 1x1x1 conv to out_features, 2x2x2 average pool with stride 2 (halves T, H, W, rounding down)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm3d(in_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv3d(in_features, out_features, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool3d(kernel_size=2, stride=2))


class DenseNet3d(nn.Module):
    """features (stem, dense blocks with transitions between them, norm5), ReLU, global average pool, classifier.

    forward: (N, 3, T, H, W) float -> (N, n_classes) logits; pooled_features: -> (N, C), the classifier's input.
    """

    def __init__(
        self,
        block_config: Sequence[int],
        n_classes: int,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        init_features: int = INIT_FEATURES,
        growth_rate: int = GROWTH_RATE,
        bn_size: int = BN_SIZE,
    ) -> None:
        super().__init__()
        stem: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv3d(3, init_features, kernel_size=(conv1_t_size, 7, 7), stride=(conv1_t_stride, 2, 2),
                                padding=(conv1_t_size // 2, 3, 3), bias=False)),
            ("norm1", nn.BatchNorm3d(init_features)),
            ("relu1", nn.ReLU(inplace=True)),
        ]
        if not no_max_pool:
            stem.append(("pool1", nn.MaxPool3d(kernel_size=3, stride=2, padding=1)))
        self.features = nn.Sequential(OrderedDict(stem))
        n_features = init_features
        for i, n_layers in enumerate(block_config, start=1):
            self.features.add_module(f"denseblock{i}", DenseBlock(n_layers, n_features, growth_rate, bn_size))
            n_features += n_layers * growth_rate
            if i < len(block_config):
                self.features.add_module(f"transition{i}", Transition(n_features, n_features // 2))
                n_features //= 2
        self.features.add_module("norm5", nn.BatchNorm3d(n_features))
        self.classifier = nn.Linear(n_features, n_classes)

        init_as_the_reference(self, linear_bias=0.0)  # the reference's DenseNet zeroes the classifier's bias

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) float -> (N, C) float: norm5's output after the ReLU, averaged over T, H and W, i.e. the
        input of the classifier (C = 1024 for DenseNet-121, 1664 for 169, 1920 for 201, 2688 for 264, at
        widen_factor 1). Features for downstream work (engine/features.py)."""
        x = F.relu(self.features(x))  # features end with a BN: the ReLU comes after it, outside
        return F.adaptive_avg_pool3d(x, 1).flatten(1)  # (N, C)

    @property
    def head(self) -> nn.Linear:
        """The classifier: (N, C) pooled features -> (N, n_classes) logits."""
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W) float
        return self.classifier(self.pooled_features(x))  # (N, n_classes)


def densenet(
    depth: int,
    n_classes: int,
    conv1_t_size: int = 7,
    conv1_t_stride: int = 1,
    no_max_pool: bool = False,
    widen_factor: float = 1.0,
) -> DenseNet3d:
    """3D DenseNet-`depth` (121, 169, 201, 264); widen_factor scales the initial channels and the growth rate
    (1: the reference's 64 and 32). model.build_model checks the arguments."""
    return DenseNet3d(
        BLOCK_CONFIG[depth],
        n_classes,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
        no_max_pool=no_max_pool,
        init_features=int(INIT_FEATURES * widen_factor),
        growth_rate=int(GROWTH_RATE * widen_factor),
    )
