"""3D ResNeXt (Hara, Kataoka, Satoh, "Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and ImageNet?",
CVPR 2018): the bottleneck ResNet with its 3x3x3 conv split into `cardinality` groups. ResNeXt-101 was the
paper's best Kinetics model.

Layout as in 3D-ResNets-PyTorch's CVPR2018 branch (`models/resnext.py`, which produced the published
resnext-101-kinetics.pth): stem 64 channels; stages of 128, 256, 512, 1024 "planes", each block
1x1x1 conv to cardinality x (planes // 32) channels, grouped 3x3x3 conv (carries the stride), 1x1x1 conv to
2 x planes; so the default (cardinality 32) is the "32x4d" ResNeXt and the last stage gives 2048 channels.
Keys: conv1, bn1, layerS.B.{conv1,bn1,conv2,bn2,conv3,bn3}, layerS.0.downsample.{0,1} (type B), fc.

Two differences from that file, neither visible with its defaults: the stem takes ResNet's options
(conv1_t_size, conv1_t_stride, no_max_pool; its master branch has them), and fc takes the channels the last
stage gives (2 x 1024 x widen_factor). The reference sizes fc as cardinality x 32 x 2, which equals 2048 only
at cardinality 32: with any other cardinality its model fails on the first forward pass.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from model.resnet import BOTTLENECK_LAYERS, STEM_PLANES, Bottleneck, ResNet3d

ARCHS: tuple[str, ...] = tuple(f"resnext-{depth}" for depth in BOTTLENECK_LAYERS)
STAGE_PLANES: tuple[int, int, int, int] = (128, 256, 512, 1024)
GROUP_WIDTH_DIVISOR = 32  # a block's grouped conv has cardinality x (planes // 32) channels


def grouped_width(planes: int, cardinality: int) -> int:
    """Channels of a block's grouped 3x3x3 conv: cardinality groups of planes // 32 channels each."""
    return cardinality * (planes // GROUP_WIDTH_DIVISOR)


class ResNeXtBottleneck(Bottleneck):
    """ResNet's bottleneck with its 3x3x3 conv in `cardinality` groups: 1x1x1 to `grouped_width` channels,
    3x3x3 in groups (carries the stride), 1x1x1 to 2 x planes; BN after each conv, ReLU after the first two and
    after the residual sum."""

    expansion = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
    ) -> None:
        super().__init__(in_planes, planes, stride, downsample, width=grouped_width(planes, cardinality),
                         groups=cardinality)


def resnext(
    depth: int,
    n_classes: int,
    shortcut: str = "A",
    cardinality: int = 32,
    **stem: Any,
) -> ResNet3d:
    """3D ResNeXt-`depth` (50, 101, 152, 200); stem: ResNet3d's conv1_t_size, conv1_t_stride,
    no_max_pool, widen_factor; model.build_model checks the arguments."""
    return ResNet3d(
        ResNeXtBottleneck,
        BOTTLENECK_LAYERS[depth],
        n_classes,
        shortcut=shortcut,
        stage_planes=STAGE_PLANES,
        stem_planes=STEM_PLANES,
        block_args={"cardinality": cardinality},
        **stem,
    )
