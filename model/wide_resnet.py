"""3D Wide ResNet (Hara, Kataoka, Satoh, CVPR 2018; after Zagoruyko and Komodakis' wide residual networks): the
bottleneck ResNet with every stage k times wider and a block expansion of 2 instead of 4.

Layout as in 3D-ResNets-PyTorch's CVPR2018 branch (`models/wide_resnet.py`, which produced the published
wideresnet-50-kinetics.pth): stem 64 channels; stages of 64k, 128k, 256k, 512k planes, each block 1x1x1 conv
to planes, 3x3x3 conv (carries the stride), 1x1x1 conv to 2 x planes. Keys as ResNet's bottleneck networks.

Its master branch widens the stem too (conv1 has 64k channels): that is this model with wide_k=1 and
widen_factor=k (widen_factor scales the stem and the stages, wide_k the stages only), so a checkpoint trained
with master's `--model wideresnet --wide_resnet_k 2` loads with `--wide-k 1 --widen-factor 2`.
"""

from __future__ import annotations

from typing import Any

from model.resnet import BOTTLENECK_LAYERS, STAGE_PLANES, STEM_PLANES, Bottleneck, ResNet3d

ARCHS: tuple[str, ...] = tuple(f"wideresnet-{depth}" for depth in BOTTLENECK_LAYERS)


class WideBottleneck(Bottleneck):
    """ResNet's bottleneck with an output of 2 x planes (the stage width carries the factor k)."""

    expansion = 2


def wide_resnet(
    depth: int,
    n_classes: int,
    shortcut: str = "A",
    wide_k: int = 2,
    **stem: Any,
) -> ResNet3d:
    """3D Wide ResNet-`depth` (50, 101, 152, 200) with stages `wide_k` times wider than ResNet's; stem: ResNet3d's conv1_t_size, conv1_t_stride,
    no_max_pool, widen_factor; model.build_model checks the arguments."""
    return ResNet3d(
        WideBottleneck,
        BOTTLENECK_LAYERS[depth],
        n_classes,
        shortcut=shortcut,
        stage_planes=tuple(p * wide_k for p in STAGE_PLANES),
        stem_planes=STEM_PLANES,
        **stem,
    )
