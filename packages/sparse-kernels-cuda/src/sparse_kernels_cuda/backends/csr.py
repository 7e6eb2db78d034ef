"""``torch.sparse`` CSR backend (MKL on CPU, cuSPARSE on CUDA) for unstructured masks."""

from __future__ import annotations

import torch
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend
from sparse_kernels_cuda.formats import CsrPlan
from sparse_kernels_cuda.ops import csr_linear

__all__ = ["CsrBackend"]


class CsrBackend(Backend):
    """Sparse Linear through CSR: forward and input gradient as CSR×dense, weight gradient sampled on the mask.

    Both ``W`` and ``Wᵀ`` structures are built once per mask version; values
    are gathered from the dense weight at each call. Pays only at high
    sparsity (≈ 80 % and above on CPU); the dispatcher measures before using it.
    Under autocast it runs masked dense; double backward raises (see
    :func:`~sparse_kernels_cuda.ops.csr_linear`).

    Args:
        feature_major: return the transposed ``(out, tokens)`` view instead of a
            contiguous result (saves one copy per layer when every consumer is
            another CSR layer; ``view`` of the last dimension then fails).
    """

    name = "csr"

    def __init__(self, feature_major: bool = False) -> None:
        self.feature_major = feature_major

    def is_available(self) -> bool:
        """``True`` where ``torch.sparse`` CSR matmul exists (every supported torch)."""
        return hasattr(torch, "sparse_csr_tensor") and hasattr(torch.sparse, "sampled_addmm")

    def supports(self, shape, dtype, pattern, device) -> bool:
        """2-D weights in fp32/fp64 on CPU, fp32/fp64 on CUDA; any mask pattern."""
        return (len(shape) == 2 and dtype in (torch.float32, torch.float64)
                and torch.device(device).type in ("cpu", "cuda"))

    def plan(self, mask: Tensor) -> CsrPlan:
        """CSR structures of ``W`` and ``Wᵀ``."""
        return CsrPlan.from_mask(mask)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: CsrPlan) -> Tensor:
        """``F.linear(x, weight ⊙ mask, bias)`` through CSR."""
        return csr_linear(x, weight, bias, plan, feature_major=self.feature_major)
