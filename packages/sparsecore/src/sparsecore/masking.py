"""The per-step hot path: re-applying every mask with one fused call.

Multiplying by a bool mask takes a slow mixed-dtype path (about 7x a
same-dtype multiply on CPU), and one call per layer costs Python overhead on
every step. :class:`FusedMasks` keeps the masks in their weights' dtype and
applies all of them with a single ``torch._foreach_mul_``; the copies are
rebuilt only when a mask is replaced (the engine never changes a mask in place)
or the weights move.

Masks of FSDP2-sharded weights are ``DTensor``s placed like their weights, so
each rank multiplies its own shards; sharded and plain weights go to separate
``_foreach_mul_`` calls (one list may not mix them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsecore.distributed import is_dtensor
from sparsecore.layers import SparseLayer


class FusedMasks:
    """All sparse layers' masks, ready to multiply into weights or gradients in one call."""

    def __init__(self, layers: Sequence[SparseLayer]) -> None:
        self.layers = list(layers)
        self.weights: list[torch.Tensor] = [layer.weight for layer in self.layers]
        self._key: tuple | None = None
        self._masks: list[torch.Tensor] = []
        sharded = [is_dtensor(weight) for weight in self.weights]
        #: positions of the plain and of the sharded weights: one fused call each
        self._groups = [group for group in ([i for i, s in enumerate(sharded) if not s],
                                            [i for i, s in enumerate(sharded) if s]) if group]

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
        masks = self._current()
        if len(self._groups) == 1:
            torch._foreach_mul_(self.weights, masks)
            return
        for group in self._groups:
            torch._foreach_mul_([self.weights[i] for i in group], [masks[i] for i in group])

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        """Zero the gradient of every inactive weight (layers without a gradient are skipped)."""
        masks = self._current()
        for group in self._groups:
            grads, chosen = [], []
            for i in group:
                grad, mask = self.weights[i].grad, masks[i]
                if grad is not None:
                    grads.append(grad)
                    chosen.append(mask if mask.dtype == grad.dtype else mask.to(grad.dtype))
            if grads:
                torch._foreach_mul_(grads, chosen)
