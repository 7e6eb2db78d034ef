"""LeNet models for MNIST, as used in the sparse-momentum and SNIP experiments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeNet5Caffe", "LeNet300100"]


class LeNet300100(nn.Module):
    """LeNet-300-100: a 784-300-100-10 multilayer perceptron with ReLU.

    266,610 parameters with 10 classes (LeCun et al. 1998). Inputs of any shape
    with 784 elements per sample (e.g. ``(N, 1, 28, 28)``) are flattened.

    Args:
        num_classes: Number of output classes.

    Returns from ``forward``: log-probabilities of shape ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes log-probabilities for a batch of images."""
        x = x.reshape(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


class LeNet5Caffe(nn.Module):
    """LeNet-5 as in Caffe's MNIST example: conv(20,5) - pool - conv(50,5) - pool - fc500 - fc.

    The first convolution has no padding, so the feature maps are 24, 12, 8 and
    4 pixels wide; this differs from the original LeNet-5. 431,080 parameters
    with 10 classes.

    Args:
        num_classes: Number of output classes.

    Returns from ``forward``: log-probabilities of shape ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5, padding=0)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc3 = nn.Linear(50 * 4 * 4, 500)
        self.fc4 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes log-probabilities for a batch of ``(N, 1, 28, 28)`` images."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc3(x.reshape(-1, 50 * 4 * 4)))
        return F.log_softmax(self.fc4(x), dim=1)
