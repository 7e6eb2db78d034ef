"""Models, data and reference computations shared by the sparsecore-nm tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def reference_top_n(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group of ``m`` along dim 1, the ``n`` largest |w| (ties to the lower index), by plain Python sorting."""
    moved = weight.detach().abs().movedim(1, -1)
    groups = moved.reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    for g, row in enumerate(groups.tolist()):
        order = sorted(range(m), key=lambda j: (-row[j], j))
        mask[g, order[:n]] = True
    return mask.reshape(moved.shape).movedim(-1, 1)


def group_counts(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Active entries per group of ``m`` consecutive entries along dim 1."""
    return mask.movedim(1, -1).reshape(-1, m).sum(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


MODELS = {"linear": (mlp, (16,)), "conv": (convnet, (8, 6, 6))}


def batches(in_shape: tuple[int, ...], count: int, seed: int = 1, size: int = 6):
    """``count`` random ``(x, y)`` batches with 4 classes."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((size, *in_shape), generator=gen), torch.randint(0, 4, (size,), generator=gen))
            for _ in range(count)]


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    x, y = batch
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
