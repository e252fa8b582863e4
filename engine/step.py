"""One training step, and the input layout and precision every forward pass uses: train.py runs these,
evaluate.py and infer.py run the forward pass, and benchmarks/train_speed.py times the same code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last_3d (faster conv3d on GPUs with cuDNN) or the default layout, for clips and weights alike."""
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def to_device(clips: torch.Tensor, labels: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch on the model's device: clips (N, 3, T, H, W) float32 in the model's memory format, labels
    (N,) int64. Asynchronous from pinned host memory (non_blocking): no CPU-GPU sync here."""
    clips = clips.to(device, non_blocking=True, memory_format=memory_format(channels_last))
    return clips, labels.to(device, non_blocking=True)


def forward(net: nn.Module, clips: torch.Tensor, amp: bool) -> torch.Tensor:
    """(N, K) float32 logits of clips (N, 3, T, H, W); amp: under bf16 autocast (no loss scaling needed)."""
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(clips)
    return logits.float()


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, clips: torch.Tensor, labels: torch.Tensor,
               amp: bool, inject_nan: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch already on the model's device; (mean loss (), logits (N, K)), both detached, no
    CPU-GPU sync. inject_nan (a testing hook, train.py --inject-nan-step) makes this step's loss inf."""
    logits = forward(net, clips, amp)
    loss = F.cross_entropy(logits, labels)
    if inject_nan:
        loss = loss * math.inf
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()
