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
change every step) by :func:`csr_pair`. A
product steps aside (``None``: the algorithm runs its dense op) above
``max_density``, for dtypes other than float32/float64, off CPU/CUDA, and,
by default, where timing once per shape finds the dense op faster (on CPU
CSR pays only at high sparsity).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["CsrProducts", "CsrWeight", "csr_pair"]

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


def csr_pair(weight: Tensor, mask: Tensor) -> CsrWeight:
    """CSR tensors of ``weight ⊙ mask`` and of its transpose, built for a mask used once.

    One ``nonzero`` over the mask; the transposed order comes from a stable
    sort of the column indices (no transposed copy of the mask), values are
    gathered once and permuted.
    """
    n_out, n_in = mask.shape
    index_dtype = torch.int32 if mask.numel() < 2**31 else torch.int64
    idx = mask.reshape(-1).nonzero().squeeze(1)
    rows = torch.div(idx, n_in, rounding_mode="floor")
    cols = (idx - rows * n_in).to(index_dtype)
    values = weight.reshape(-1).index_select(0, idx)
    crow = torch.zeros(n_out + 1, dtype=index_dtype, device=mask.device)
    torch.cumsum(torch.bincount(rows, minlength=n_out), 0, out=crow[1:])
    cols_sorted, order = torch.sort(cols, stable=True)
    crow_t = torch.zeros(n_in + 1, dtype=index_dtype, device=mask.device)
    torch.cumsum(torch.bincount(cols_sorted, minlength=n_in), 0, out=crow_t[1:])
    w = torch.sparse_csr_tensor(crow, cols, values, (n_out, n_in), check_invariants=False)
    w_t = torch.sparse_csr_tensor(crow_t, rows.index_select(0, order).to(index_dtype), values.index_select(0, order),
                                  (n_in, n_out), check_invariants=False)
    return CsrWeight(w, w_t)


def _supported(t: Tensor) -> bool:
    return t.dim() == 2 and t.dtype in (torch.float32, torch.float64) and t.device.type in ("cpu", "cuda")


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (synchronising CUDA)."""
    best = math.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


class CsrProducts:
    """Sparse products on ``torch.sparse`` CSR (MKL on CPU, cuSPARSE on CUDA).

    With ``measure=True`` (the default) the first call of each kind of
    product for a shape and density (to two decimals) times the CSR path
    against the dense op it replaces and keeps the faster, so the products
    never slow a layer down (their results differ from the dense ops only in
    reduction order). ``measure=False`` always takes CSR within ``max_density``.

    Args:
        max_density: densest weight mask or activation the products run
            sparsely (the algorithm's dense ops run above it).
        measure: choose CSR or the dense op by timing both once per shape.
        repeats: timed calls per candidate when measuring.

    Raises:
        ValueError: ``max_density`` outside (0, 1] or ``repeats`` below 1.
    """

    def __init__(self, max_density: float = DEFAULT_PRODUCT_MAX_DENSITY, measure: bool = True,
                 repeats: int = 2) -> None:
        if not 0.0 < max_density <= 1.0:
            raise ValueError(f"sparse_kernels_cuda: max_density must be in (0, 1], got {max_density!r}")
        if repeats < 1:
            raise ValueError(f"sparse_kernels_cuda: repeats must be >= 1, got {repeats!r}")
        self.max_density = max_density
        self.measure = measure
        self.repeats = repeats
        #: calls that ran on CSR / handed back to the dense op (for reports and tests)
        self.calls: dict[str, int] = {"sparse": 0, "dense": 0}
        #: measured choices: (product, shapes, density) -> whether CSR was faster
        self.choices: dict[tuple[Any, ...], bool] = {}

    def _decide(self, key: tuple[Any, ...], sparse: Callable[[], object], dense: Callable[[], object]) -> bool:
        if not self.measure:
            return True
        choice = self.choices.get(key)
        if choice is None:
            choice = _seconds(sparse, self.repeats) < _seconds(dense, self.repeats)
            self.choices[key] = choice
        return choice

    def _count(self, sparse: bool) -> None:
        self.calls["sparse" if sparse else "dense"] += 1

    def weight_operand(self, weight: Tensor, mask: Callable[[], Tensor], x: Tensor,
                       density: float) -> CsrWeight | None:
        """CSR of ``weight ⊙ mask()`` and of its transpose, or ``None`` (dense ops) where CSR does not pay.

        ``mask`` is called only when CSR runs; ``density`` is the fraction of
        the weight it keeps and ``x`` the input the operand will multiply
        (both guide the choice).
        """
        if not _supported(weight) or x.dim() != 2 or density > self.max_density:
            self._count(False)
            return None
        w = weight.detach()
        key = ("weight", tuple(w.shape), x.shape[0], round(density, 2), w.dtype, w.device.type)
        if self.measure and key not in self.choices:
            selected = mask()
            grad = x.new_ones(x.shape[0], w.shape[0])

            def sparse() -> None:
                operand = self._build(w, selected)
                self.mm_weight_t(x, operand)
                self.mm_weight(grad, operand)

            def dense() -> None:
                used = w * selected
                torch.mm(x, used.t())
                torch.mm(grad, used)

            self._decide(key, sparse, dense)
        if self.measure and not self.choices[key]:
            self._count(False)
            return None
        self._count(True)
        return self._build(w, mask())

    @staticmethod
    def _build(weight: Tensor, mask: Tensor) -> CsrWeight:
        return csr_pair(weight, mask)

    def mm_weight_t(self, x: Tensor, operand: CsrWeight) -> Tensor:
        """``x @ (W ⊙ M)ᵀ`` for ``x`` of shape ``(tokens, in)``."""
        return torch.mm(operand.w, x.t().contiguous()).t().contiguous()

    def mm_weight(self, grad: Tensor, operand: CsrWeight) -> Tensor:
        """``grad @ (W ⊙ M)`` for ``grad`` of shape ``(tokens, out)``."""
        return torch.mm(operand.w_t, grad.t().contiguous()).t().contiguous()

    def grad_weight(self, grad: Tensor, x: Tensor, density: float) -> Tensor | None:
        """``gradᵀ @ x`` (dense ``(out, in)``) through the CSR of ``xᵀ``; ``None`` where CSR does not pay.

        ``density`` is the largest fraction of ``x`` that is non-zero (guides the choice).
        """
        if not _supported(x) or not _supported(grad) or x.dtype != grad.dtype or density > self.max_density:
            self._count(False)
            return None

        def sparse() -> Tensor:
            return torch.mm(x.t().to_sparse_csr(), grad.contiguous()).t().contiguous()

        key = ("grad_weight", tuple(x.shape), grad.shape[1], round(density, 2), x.dtype, x.device.type)
        if not self._decide(key, sparse, lambda: grad.t() @ x):
            self._count(False)
            return None
        self._count(True)
        return sparse()
