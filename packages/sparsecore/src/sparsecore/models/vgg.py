"""VGG16 variants for CIFAR-10 used in the SNIP and sparse-momentum papers."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG16", "VGG_CONFIGS"]

# An int is a 3x3 conv with that many output channels, "M" a 2x2 max pool and a
# tuple (kernel_size, channels) a conv with another kernel size.
VGG_CONFIGS: dict[str, list[int | Literal["M"] | tuple[int, int]]] = {
    "like": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "C": [
        64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M",
        512, 512, (1, 512), "M", 512, 512, (1, 512), "M",
    ],
}  # fmt: skip


class VGG16(nn.Module):
    """VGG16 for 32x32 inputs with batch norm after every conv and a 512-wide classifier.

    Variants (Lee et al. 2019, SNIP):

    * ``"D"`` (VGG16-D): thirteen 3x3 convs; classifier 512-512-512-classes.
    * ``"C"`` (VGG16-C): the last conv of blocks 3-5 is 1x1. Every conv keeps
      ``padding=1``, so each 1x1 conv grows the feature map by two pixels and
      the flattened features are 512x2x2 = 2048.
    * ``"like"`` (VGG-like): the convs of ``"D"`` with a 512-512-classes classifier.

    Batch norm replaces dropout in the classifier (placed after the ReLU).

    Args:
        config: ``"C"``, ``"D"`` or ``"like"``.
        num_classes: Number of output classes.

    Raises:
        ValueError: If ``config`` is unknown.

    Returns from ``forward``: log-probabilities of shape ``(N, num_classes)``.
    """

    def __init__(self, config: str = "D", num_classes: int = 10) -> None:
        super().__init__()
        if config not in VGG_CONFIGS:
            raise ValueError(f"VGG16 config must be one of {sorted(VGG_CONFIGS)}, got {config!r}")
        self.features = self._make_layers(VGG_CONFIGS[config])
        if config in ("C", "D"):
            self.classifier = nn.Sequential(
                nn.Linear(2048 if config == "C" else 512, 512),
                nn.ReLU(True),
                nn.BatchNorm1d(512),
                nn.Linear(512, 512),
                nn.ReLU(True),
                nn.BatchNorm1d(512),
                nn.Linear(512, num_classes),
            )
        else:
            self.classifier = nn.Sequential(
                nn.Linear(512, 512),
                nn.ReLU(True),
                nn.BatchNorm1d(512),
                nn.Linear(512, num_classes),
            )

    @staticmethod
    def _make_layers(config: list[int | Literal["M"] | tuple[int, int]]) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            kernel_size, channels = item if isinstance(item, tuple) else (3, item)
            layers += [
                nn.Conv2d(in_channels, channels, kernel_size=kernel_size, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes log-probabilities for a batch of ``(N, 3, 32, 32)`` images."""
        x = self.features(x)
        x = self.classifier(x.flatten(1))
        return F.log_softmax(x, dim=1)
