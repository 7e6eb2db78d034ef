"""The backend interface every kernel family implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from sparsecore import selection

__all__ = ["Backend", "detect_pattern", "interpreting", "pattern_block"]

BLOCK_SIZES = (128, 64, 32, 16)


class Backend(ABC):
    """A way to run ``F.linear(x, weight ⊙ mask, bias)`` with autograd.

    Every backend gives the same results as masked dense (up to reduction
    order) and a weight gradient that is exactly zero off the mask.

    Attributes:
        name: the name used by ``backend=`` and in reports.
    """

    name: str = ""

    @abstractmethod
    def is_available(self) -> bool:
        """Whether the backend can run in this process (libraries, devices)."""

    @abstractmethod
    def supports(self, shape: tuple[int, int], dtype: torch.dtype, pattern: str, device: torch.device | str) -> bool:
        """Whether the backend handles a weight of this shape, dtype, mask pattern and device.

        Args:
            shape: ``(out, in)`` of the weight.
            dtype: the weight's and input's dtype.
            pattern: the mask's pattern from :func:`detect_pattern`
                (``"unstructured"``, ``"2:4"`` or ``"block<B>"``).
            device: where the weight lives.
        """

    @abstractmethod
    def plan(self, mask: Tensor) -> Any:
        """Structure derived from the mask, built once per mask version."""

    @abstractmethod
    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: Any) -> Tensor:
        """``F.linear(x, weight ⊙ mask, bias)`` with autograd; ``plan`` comes from :meth:`plan`."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def detect_pattern(mask: Tensor) -> str:
    """Classify a 2-D bool mask.

    Returns:
        ``"block<B>"`` for the largest ``B`` in 128/64/32/16 such that the mask
        is made of whole ``B×B`` blocks, else ``"2:4"`` when every group of four
        inputs holds at most two active weights, else ``"unstructured"``.
    """
    from sparse_kernels_cuda.formats import is_n_m_sparse

    n_out, n_in = mask.shape
    for b in BLOCK_SIZES:
        if n_out % b or n_in % b:
            continue
        if selection.is_block_structured(mask, (b, b)):
            return f"block{b}"
    if is_n_m_sparse(mask, 2, 4):
        return "2:4"
    return "unstructured"


def pattern_block(pattern: str) -> int | None:
    """The block edge of a ``"block<B>"`` pattern, else ``None``."""
    return int(pattern[5:]) if pattern.startswith("block") else None


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
