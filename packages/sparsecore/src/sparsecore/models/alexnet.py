"""AlexNet variants for CIFAR-10 used in the sparse-momentum paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AlexNet"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=2, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class AlexNet(nn.Module):
    """AlexNet with batch norm, five stride-2 convolutions and three linear layers.

    For 32x32 inputs the five stride-2 convolutions reduce the image to 1x1, so
    the classifier sees 256 features. ``config="s"`` (AlexNet-s) uses 1024-wide
    hidden linear layers, ``config="b"`` (AlexNet-b) 2048-wide ones.

    Args:
        config: ``"s"`` (small) or ``"b"`` (big).
        num_classes: Number of output classes.

    Raises:
        ValueError: If ``config`` is not ``"s"`` or ``"b"``.

    Returns from ``forward``: log-probabilities of shape ``(N, num_classes)``.
    """

    def __init__(self, config: str = "s", num_classes: int = 10) -> None:
        super().__init__()
        if config not in ("s", "b"):
            raise ValueError(f"AlexNet config must be 's' or 'b', got {config!r}")
        hidden = 1024 if config == "s" else 2048
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 96, kernel_size=11, padding=2),
            *_conv_bn_relu(96, 256, kernel_size=5, padding=2),
            *_conv_bn_relu(256, 384, kernel_size=3, padding=1),
            *_conv_bn_relu(384, 384, kernel_size=3, padding=1),
            *_conv_bn_relu(384, 256, kernel_size=3, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes log-probabilities for a batch of ``(N, 3, 32, 32)`` images."""
        x = self.features(x)
        x = self.classifier(x.flatten(1))
        return F.log_softmax(x, dim=1)
