"""Masked dense: the reference every backend is checked against, and the fallback."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend

__all__ = ["MaskedDenseBackend"]


class MaskedDenseBackend(Backend):
    """``F.linear(x, weight * mask, bias)``: always available, any shape, dtype and device.

    Args:
        premasked: the weight is already zero off the mask and the engine masks
            the gradient itself (sparsecore's default policy). Then the
            multiply is skipped and the layer runs exactly like the module's
            own forward, which is what masked-dense sparse training costs.
    """

    name = "masked-dense"

    def __init__(self, premasked: bool = False) -> None:
        self.premasked = premasked

    def is_available(self) -> bool:
        """Always ``True``."""
        return True

    def supports(self, shape, dtype, pattern, device) -> bool:
        """Always ``True``."""
        return True

    def plan(self, mask: Tensor) -> Tensor:
        """The mask itself."""
        return mask

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: Tensor) -> Tensor:
        """Dense ``F.linear`` on the masked weight."""
        w = weight if self.premasked else weight * plan.to(weight.dtype)
        return F.linear(x, w, bias)
