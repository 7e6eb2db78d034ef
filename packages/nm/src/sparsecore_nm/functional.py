"""N:M layer functions: the masked forward with a straight-through gradient, and per-group magnitude masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsecore import selection
from sparsecore.layers import SparseLayer

#: Module types whose forward :func:`masked_forward` replaces.
FORWARD_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _StraightThroughMask(torch.autograd.Function):
    """``weight`` where ``mask``, else 0; the incoming gradient reaches every entry of ``weight`` unchanged."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, weight, weight.new_zeros(()))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def masked_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` whose gradient with respect to ``weight`` is straight-through.

    The backward passes the gradient of the masked weight to the dense weight
    as it is, pruned entries included (the STE of SR-STE).

    Args:
        weight: the dense weight.
        mask: a bool tensor of ``weight``'s shape (``True`` = active).
    """
    return _StraightThroughMask.apply(weight, mask)


def magnitude_masks(layers: Mapping[str, SparseLayer]) -> dict[str, torch.Tensor]:
    """Per layer, the N largest ``|w|`` of every group (ties to the lower index), in the layer's N:M pattern.

    Raises:
        ValueError: a layer has no N:M pattern (the sparsifier was not made with ``pattern="N:M"``).
    """
    masks = {}
    for name, layer in layers.items():
        if not isinstance(layer.pattern, selection.NMPattern):
            raise ValueError(f"layer {name!r} has no N:M pattern (pattern={layer.pattern!r}); "
                             "make the Sparsifier with pattern='N:M'")
        masks[name] = selection.top_per_group(layer.weight.detach().abs(), layer.pattern)
    return masks


def masked_forward(layer: SparseLayer) -> Callable[..., torch.Tensor]:
    """A forward for ``layer.module`` that computes with :func:`masked_weight` of ``layer.mask``.

    The mask is read at every call, so the forward always uses the current ``layer.mask``.

    Raises:
        TypeError: the module is not a Linear or Conv1d/2d/3d.
    """
    module = layer.module
    if not isinstance(module, FORWARD_TYPES):
        raise TypeError(f"{type(module).__name__} is not one of {[t.__name__ for t in FORWARD_TYPES]}")

    if isinstance(module, nn.Linear):
        def forward(input: torch.Tensor) -> torch.Tensor:
            return F.linear(input, masked_weight(module.weight, layer.mask), module.bias)
    else:
        def forward(input: torch.Tensor) -> torch.Tensor:
            return module._conv_forward(input, masked_weight(module.weight, layer.mask), module.bias)
    return forward


def prune_weights(sparsifier: Any) -> None:
    """Zero, in place, every weight outside its layer's mask.

    SR-STE keeps dense weights and masks them in the forward; after training,
    this writes the sparse model ``weight * mask`` into the weights (before
    ``sparsifier.remove()`` or an export), so the model computes the same
    function with its own forwards.
    """
    with torch.no_grad():
        for layer in sparsifier.layers.values():
            layer.weight.mul_(layer.mask)
