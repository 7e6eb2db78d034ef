"""CSR operators registered with ``torch.library`` (work with autograd and ``torch.compile``).

Two operators, both in the ``sparse_kernels_cuda`` namespace:

* ``csr_mm(rhs, weight, crow, col, idx, crow_t, col_t, idx_t)``: ``(W ⊙ M) @ rhs``
  where ``M`` is the CSR structure ``(crow, col)`` and the values are gathered
  from the dense ``weight`` at flat positions ``idx``. Its gradient with
  respect to ``rhs`` is the same operator on the transposed structure
  (``Wᵀ @ grad``, no transpose materialised), and with respect to ``weight``
  the sampled product ``(grad @ rhsᵀ) ⊙ M`` scattered into a dense tensor that
  is exactly zero off the mask.
* ``csr_sddmm(a, b, crow, col)``: the values of ``(a @ bᵀ)`` at the CSR
  positions (row-major order).

A sparse ``Linear`` works in the transposed ("feature-major") layout:
``Yᵀ = (W ⊙ M) Xᵀ``. MKL's CSR×dense product is fastest with a row-major
right-hand side, and ``Xᵀ`` is free when ``X`` is the transposed view another
sparse layer returned, so chains of sparse layers never copy activations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparse_kernels_cuda._grad_pool import scatter_to_dense

__all__ = ["csr_linear", "csr_mm", "csr_sddmm"]


@torch.library.custom_op("sparse_kernels_cuda::csr_mm", mutates_args=())
def csr_mm(
    rhs: Tensor,
    weight: Tensor,
    crow: Tensor,
    col: Tensor,
    idx: Tensor,
    crow_t: Tensor,
    col_t: Tensor,
    idx_t: Tensor,
) -> Tensor:
    """Multiply the masked weight, held as CSR structure + dense values, by a dense matrix.

    Args:
        rhs: dense ``(K, N)``; ``K`` is the number of CSR columns.
        weight: the dense weight the values are gathered from (any shape).
        crow: CSR row offsets (``rows + 1``).
        col: CSR column indices.
        idx: flat positions in ``weight`` of the CSR values.
        crow_t: row offsets of the transposed structure (used by the gradient).
        col_t: column indices of the transposed structure.
        idx_t: flat positions in ``weight`` of the transposed values.

    Returns:
        Dense ``(rows, N)``.
    """
    values = weight.reshape(-1).index_select(0, idx)
    a = torch.sparse_csr_tensor(crow, col, values, (crow.numel() - 1, rhs.shape[0]), check_invariants=False)
    return torch.mm(a, rhs.contiguous())


@csr_mm.register_fake
def _(rhs, weight, crow, col, idx, crow_t, col_t, idx_t):
    return rhs.new_empty((crow.shape[0] - 1, rhs.shape[1]))


@torch.library.custom_op("sparse_kernels_cuda::csr_sddmm", mutates_args=())
def csr_sddmm(a: Tensor, b: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    """Sampled dense-dense product: values of ``a @ bᵀ`` at the CSR positions.

    Args:
        a: dense ``(R, N)``.
        b: dense ``(C, N)``.
        crow: CSR row offsets (``R + 1``).
        col: CSR column indices.

    Returns:
        1-D values, one per CSR entry, in row-major order.
    """
    pattern = torch.sparse_csr_tensor(crow, col, a.new_zeros(col.numel()), (a.shape[0], b.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.contiguous().t(), beta=0.0).values()


@csr_sddmm.register_fake
def _(a, b, crow, col):
    return a.new_empty(col.shape)


def _csr_mm_setup(ctx, inputs, output):
    rhs, weight, crow, col, idx, crow_t, col_t, idx_t = inputs
    ctx.save_for_backward(rhs, weight, crow, col, idx, crow_t, col_t, idx_t)


def _csr_mm_backward(ctx, grad):
    rhs, weight, crow, col, idx, crow_t, col_t, idx_t = ctx.saved_tensors
    grad = grad.contiguous()
    grad_rhs = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_rhs = csr_mm(grad, weight, crow_t, col_t, idx_t, crow, col, idx)
    if ctx.needs_input_grad[1]:
        grad_weight = scatter_to_dense(csr_sddmm(grad, rhs, crow, col), idx, weight)
    return grad_rhs, grad_weight, None, None, None, None, None, None


csr_mm.register_autograd(_csr_mm_backward, setup_context=_csr_mm_setup)


def csr_linear(x: Tensor, weight: Tensor, bias: Tensor | None, plan) -> Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` through CSR, for any leading dimensions.

    The result of a 2-D input is a transposed view of a contiguous
    ``(out, batch)`` tensor, which the next sparse layer consumes without a copy.

    Args:
        x: input ``(..., in)``.
        weight: dense weight ``(out, in)``; only the positions in ``plan`` are read.
        bias: optional ``(out,)``.
        plan: a :class:`~sparse_kernels_cuda.formats.CsrPlan` of the mask.

    Returns:
        ``(..., out)``; the gradient of ``weight`` is zero off the mask.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    yt = csr_mm(x2.t(), weight, plan.crow, plan.col, plan.idx, plan.crow_t, plan.col_t, plan.idx_t)
    if bias is not None:
        yt = yt + bias.unsqueeze(1)
    y = yt.t()
    return y if x.dim() == 2 else y.reshape(*lead, y.shape[-1])
