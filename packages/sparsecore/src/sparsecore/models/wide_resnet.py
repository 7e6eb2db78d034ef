"""Wide residual networks (Zagoruyko & Komodakis 2016) for CIFAR-10."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3.

    When the block changes the channel count, the pre-activated input feeds
    both the first conv and a 1x1 projection shortcut; otherwise the shortcut
    is the raw input.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Stride of the first conv (and of the shortcut projection).
        drop_rate: Dropout probability between the two convs.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.conv_shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(pre)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-k: a 3x3 stem, three groups of wide blocks (16k, 32k, 64k channels), BN-ReLU, pool, linear.

    Each group has ``(depth - 4) / 6`` blocks; groups 2 and 3 halve the
    resolution. Convs use He-normal init (fan-out), batch norm starts at
    weight 1 / bias 0 and the linear bias at 0. The final pooling is global
    (the reference code's 8x8 average pool, which is the same on 32x32 inputs).

    Args:
        depth: Total depth; ``(depth - 4)`` must be divisible by 6.
        widen_factor: Width multiplier ``k``.
        num_classes: Number of output classes.
        drop_rate: Dropout probability inside each block (0.3 in the
            sparse-momentum experiments).

    Raises:
        ValueError: If ``depth`` is invalid.

    Returns from ``forward``: log-probabilities of shape ``(N, num_classes)``.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, drop_rate: float = 0.3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = self._make_group(blocks_per_group, channels[0], channels[1], 1, drop_rate)
        self.block2 = self._make_group(blocks_per_group, channels[1], channels[2], 2, drop_rate)
        self.block3 = self._make_group(blocks_per_group, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.num_features = channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_group(n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> nn.Sequential:
        return nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes log-probabilities for a batch of ``(N, 3, 32, 32)`` images."""
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return F.log_softmax(self.fc(out), dim=1)
