"""CSR products for algorithms that own a layer's forward (``sparsecore.products.SparseProducts``).

SWAT keeps dense weights and runs its own autograd function: the top-K
weights in the forward and the input gradient, the top-K input activations in
the (dense-shaped) weight gradient. The plugin answers the engine's
``layer_products`` hook with :class:`CsrProducts`, whose three products SWAT's
function calls:

* forward ``x @ (W ⊙ M)ᵀ`` as ``(W ⊙ M) · xᵀ`` (CSR of ``W ⊙ M`` times a
  row-major ``xᵀ``, the layout MKL is fastest with);
* input gradient ``g @ (W ⊙ M)`` as ``(W ⊙ M)ᵀ · gᵀ`` (the CSR of the
  transpose, built with the forward's, so no transposed product runs);
* weight gradient ``gᵀ @ x`` for a mostly-zero ``x`` as ``(CSR of xᵀ) · g``,
  transposed back to the weight's layout.

The structures are built from the mask at every forward (SWAT's selection can
change every step) with :class:`~sparse_kernels_cuda.formats.CsrPlan`. A
product steps aside (``None``: the algorithm runs its dense op) above
``max_density``, for dtypes other than float32/float64 and off CPU/CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_kernels_cuda.formats import CsrPlan

__all__ = ["CsrProducts", "CsrWeight"]

#: Densest weight or activation the products take by default (CSR pays only at high sparsity on CPU).
DEFAULT_PRODUCT_MAX_DENSITY = 0.2


@dataclass(frozen=True)
class CsrWeight:
    """``W ⊙ M`` and its transpose as CSR tensors (values copied at build time).

    Attributes:
        w: ``(out, in)`` CSR.
        w_t: ``(in, out)`` CSR.
    """

    w: Tensor
    w_t: Tensor


def _supported(t: Tensor) -> bool:
    return t.dim() == 2 and t.dtype in (torch.float32, torch.float64) and t.device.type in ("cpu", "cuda")


class CsrProducts:
    """Sparse products on ``torch.sparse`` CSR (MKL on CPU, cuSPARSE on CUDA).

    Args:
        max_density: densest weight mask or activation the products run
            sparsely (the algorithm's dense ops run above it).

    Raises:
        ValueError: ``max_density`` outside (0, 1].
    """

    def __init__(self, max_density: float = DEFAULT_PRODUCT_MAX_DENSITY) -> None:
        if not 0.0 < max_density <= 1.0:
            raise ValueError(f"sparse_kernels_cuda: max_density must be in (0, 1], got {max_density!r}")
        self.max_density = max_density
        #: products run sparsely / handed back to dense ops, by product name (for reports and tests)
        self.calls: dict[str, int] = {"sparse": 0, "dense": 0}

    def _count(self, sparse: bool) -> None:
        self.calls["sparse" if sparse else "dense"] += 1

    def weight_operand(self, weight: Tensor, mask: Tensor) -> CsrWeight | None:
        """CSR of ``weight ⊙ mask`` and of its transpose, or ``None`` (dense ops) where CSR does not pay."""
        if not _supported(weight) or mask.shape != weight.shape:
            self._count(False)
            return None
        nnz = int(mask.sum())
        if nnz > self.max_density * mask.numel():
            self._count(False)
            return None
        plan = CsrPlan.from_mask(mask)
        self._count(True)
        return CsrWeight(plan.to_csr(weight.detach()), plan.to_csr_t(weight.detach()))

    def mm_weight_t(self, x: Tensor, operand: CsrWeight) -> Tensor:
        """``x @ (W ⊙ M)ᵀ`` for ``x`` of shape ``(tokens, in)``."""
        return torch.mm(operand.w, x.t().contiguous()).t().contiguous()

    def mm_weight(self, grad: Tensor, operand: CsrWeight) -> Tensor:
        """``grad @ (W ⊙ M)`` for ``grad`` of shape ``(tokens, out)``."""
        return torch.mm(operand.w_t, grad.t().contiguous()).t().contiguous()

    def grad_weight(self, grad: Tensor, x: Tensor) -> Tensor | None:
        """``gradᵀ @ x`` (dense ``(out, in)``) through the CSR of ``xᵀ``; ``None`` when ``x`` is too dense."""
        if not _supported(x) or not _supported(grad) or x.dtype != grad.dtype:
            self._count(False)
            return None
        x_t = x.t()
        if int(torch.count_nonzero(x_t)) > self.max_density * x.numel():
            self._count(False)
            return None
        self._count(True)
        return torch.mm(x_t.to_sparse_csr(), grad.contiguous()).t().contiguous()
