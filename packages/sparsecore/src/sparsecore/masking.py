"""The per-step hot path: re-applying every mask with one fused call.

Multiplying by a bool mask takes a slow mixed-dtype path (about 7x a
same-dtype multiply on CPU), and one call per layer costs Python overhead on
every step. :class:`FusedMasks` keeps the masks in their weights' dtype and
applies all of them with a single ``torch._foreach_mul_``; the copies are
rebuilt only when a mask is replaced (the engine never changes a mask in place)
or the weights move.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsecore.layers import SparseLayer


class FusedMasks:
    """All sparse layers' masks, ready to multiply into weights or gradients in one call."""

    def __init__(self, layers: Sequence[SparseLayer]) -> None:
        self.layers = list(layers)
        self.weights: list[torch.Tensor] = [layer.weight for layer in self.layers]
        self._key: tuple | None = None
        self._masks: list[torch.Tensor] = []

    def invalidate(self) -> None:
        """Forget the cached copies (called whenever the engine replaces masks)."""
        self._key = None

    def _current(self) -> list[torch.Tensor]:
        first = self.weights[0]
        key = (first.dtype, first.device)
        if key != self._key:
            self._masks = [layer.mask.to(device=layer.weight.device, dtype=layer.weight.dtype)
                           for layer in self.layers]
            self._key = key
        return self._masks

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        """Zero every inactive weight."""
        torch._foreach_mul_(self.weights, self._current())

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        """Zero the gradient of every inactive weight (layers without a gradient are skipped)."""
        masks = self._current()
        grads, chosen = [], []
        for weight, mask in zip(self.weights, masks, strict=True):
            if weight.grad is not None:
                grads.append(weight.grad)
                chosen.append(mask if mask.dtype == weight.grad.dtype else mask.to(weight.grad.dtype))
        if grads:
            torch._foreach_mul_(grads, chosen)
