"""ResNet-50 for ImageNet, built by torchvision (imported only when requested)."""

from __future__ import annotations

from torch import nn

__all__ = ["resnet50"]


def resnet50(num_classes: int = 1000) -> nn.Module:
    """Builds an untrained torchvision ResNet-50 (He et al. 2016).

    Args:
        num_classes: Number of output classes.

    Returns:
        ``torchvision.models.resnet50(weights=None, num_classes=num_classes)``;
        its forward returns logits.

    Raises:
        ImportError: If torchvision is not installed.
    """
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except ImportError as exc:
        raise ImportError(
            "model 'resnet-50' needs torchvision, which is not installed; install it with: pip install torchvision"
        ) from exc
    return tv_resnet50(weights=None, num_classes=num_classes)
