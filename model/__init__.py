"""3D ResNets (Hara, Kataoka, Satoh, ICCV 2017 workshops) and checkpoint loading.

Usage: `net = build_model("resnet-18", n_classes=400)` gives the paper's Table 1 network (type-A
shortcuts); `report = load_weights(net, path)` loads our checkpoints or 3D-ResNets-PyTorch's.
"""

from model.checkpoint import CheckpointError, LoadReport, load_weights, read_checkpoint, unwrap_model
from model.resnet import (
    ARCHS,
    BasicBlock,
    Bottleneck,
    ResNet3d,
    ZeroPadShortcut,
    build_model,
    zero_pad_shortcut,
)

__all__ = [
    "ARCHS",
    "BasicBlock",
    "Bottleneck",
    "CheckpointError",
    "LoadReport",
    "ResNet3d",
    "ZeroPadShortcut",
    "build_model",
    "load_weights",
    "read_checkpoint",
    "unwrap_model",
    "zero_pad_shortcut",
]
