"""Export: hard-prune SWAT weights to their budgets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecore_swat.functional import swat_forward_of


def hard_prune(target: Any) -> dict[str, torch.Tensor]:
    """Zero every weight outside its layer's top-K selection, for export.

    Each SWAT layer keeps exactly what its inference forward uses (the exact
    top-K at the layer's current density, ties kept; whole slices or filters
    for structured layers), so the pruned model run with plain forwards gives
    the same outputs as the SWAT model in ``eval()`` mode. Biases and
    BatchNorm are untouched.

    Args:
        target: a :class:`sparsecore.Sparsifier` running ``swat`` (its
            ``layer.mask`` is updated as well), or a model whose layers run
            SWAT forwards.

    Returns:
        Layer name to the bool mask that was applied.

    Raises:
        ValueError: ``target`` has no SWAT layer.
    """
    layers: dict[str, tuple[nn.Module, Any]] = {}
    sparsifier = None
    if isinstance(target, nn.Module):
        for name, module in target.named_modules():
            forward = swat_forward_of(module)
            if forward is not None:
                layers[name] = (module, forward.state)
    else:
        sparsifier = target
        algorithm = getattr(target, "algorithm", None)
        states = getattr(algorithm, "states", None)
        if algorithm is None or states is None:
            raise ValueError(f"hard_prune: {type(target).__name__} is neither a model nor a sparsifier running swat")
        for name, layer in target.layers.items():
            layers[name] = (layer.module, algorithm.state_for(layer))
    if not layers:
        raise ValueError("hard_prune: no layer runs SWAT in this model")
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (module, state) in layers.items():
            weight = module.weight
            assert isinstance(weight, torch.Tensor)  # a Linear or Conv layer's
            mask = state.exact_weight_mask(weight)
            weight.mul_(mask)
            masks[name] = mask
    if sparsifier is not None:
        sparsifier.set_masks(masks)
    return masks
