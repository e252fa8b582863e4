"""3D CNNs for action recognition and checkpoint loading: the 3D ResNets of Hara, Kataoka, Satoh (ICCV 2017
workshops) and the rest of their model zoo (CVPR 2018 and later): ResNeXt, Wide ResNet, DenseNet, R(2+1)D.

Usage: `net = build_model("resnet-18", n_classes=400)` gives the paper's Table 1 network (type-A
shortcuts); `build_model("resnext-101", 400, shortcut="B")` the CVPR 2018 paper's best Kinetics model;
`report = load_weights(net, path)` loads our checkpoints or 3D-ResNets-PyTorch's. Every model has
`net.pooled_features(clips)` ((N, C): the classifier's input, features for downstream work) and `net.head` (the
classifier, so `net(clips) == net.head(net.pooled_features(clips))`).
"""

from model.checkpoint import CheckpointError, LoadReport, load_weights, read_checkpoint, unwrap_model
from model.resnet import BasicBlock, Bottleneck, ResNet3d, ZeroPadShortcut, zero_pad_shortcut
from model.zoo import (
    ARCHS,
    ARCHS_HELP,
    FAMILIES,
    ModelArgError,
    ModelCost,
    build_model,
    canonical_arch,
    check_clip,
    check_model_args,
    describe_args,
    fine_tuning_modules,
    model_cost,
    takes,
)

__all__ = [
    "ARCHS",
    "ARCHS_HELP",
    "FAMILIES",
    "BasicBlock",
    "Bottleneck",
    "CheckpointError",
    "LoadReport",
    "ModelArgError",
    "ModelCost",
    "ResNet3d",
    "ZeroPadShortcut",
    "build_model",
    "canonical_arch",
    "check_clip",
    "check_model_args",
    "describe_args",
    "fine_tuning_modules",
    "load_weights",
    "model_cost",
    "read_checkpoint",
    "takes",
    "unwrap_model",
    "zero_pad_shortcut",
]
