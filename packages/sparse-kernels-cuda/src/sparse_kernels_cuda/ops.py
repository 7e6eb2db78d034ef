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

A sparse ``Linear`` computes in the transposed ("feature-major") layout:
``Yᵀ = (W ⊙ M) Xᵀ``, because MKL's CSR×dense product is about twice as fast
with a row-major right-hand side and result. :func:`csr_linear` returns a
contiguous ``(..., out)`` result like ``F.linear`` by default (one transposing
copy, a few percent of a training step); ``feature_major=True`` returns the
transposed view instead, which a following CSR layer consumes without a copy.

Limits: ``csr_linear`` under autocast runs masked dense (MKL has no bf16/fp16
CSR product), and double backward (``create_graph=True``) is not supported:
the backward raises a ``RuntimeError`` (:data:`DOUBLE_BACKWARD_ERROR`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_kernels_cuda._grad_pool import scatter_to_dense

__all__ = ["DOUBLE_BACKWARD_ERROR", "autocast_active", "csr_linear", "csr_mm", "csr_sddmm"]

#: Message of the error raised when a CSR backward is asked to build a graph.
DOUBLE_BACKWARD_ERROR = (
    "sparse_kernels_cuda: the CSR backend does not support double backward "
    "(create_graph=True, higher-order gradients); use the masked-dense backend for this "
    "run: KernelPlugin(backend='masked-dense') or SPARSE_KERNELS_CUDA_BACKEND=masked-dense"
)


def autocast_active(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` (``"cpu"``, ``"cuda"``) in this thread.

    ``False`` for device types autocast does not know (``"meta"``).
    """
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


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
    pattern = torch.sparse_csr_tensor(crow, col, a.new_zeros(col.numel()), (a.shape[0], b.shape[0]),
                                      check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.contiguous().t(), beta=0.0).values()


@csr_sddmm.register_fake
def _(a, b, crow, col):
    return a.new_empty(col.shape)


def _csr_mm_setup(ctx, inputs, output):
    rhs, weight, crow, col, idx, crow_t, col_t, idx_t = inputs
    ctx.save_for_backward(rhs, weight, crow, col, idx, crow_t, col_t, idx_t)


def _csr_mm_backward(ctx, grad):
    # Grad mode is on in a backward only under create_graph=True; csr_sddmm and
    # scatter_to_dense have no autograd formula, so fail here with a clear message.
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)
    rhs, weight, crow, col, idx, crow_t, col_t, idx_t = ctx.saved_tensors
    grad = grad.contiguous()
    grad_rhs = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_rhs = csr_mm(grad, weight, crow_t, col_t, idx_t, crow, col, idx)
    if ctx.needs_input_grad[1]:
        grad_weight = scatter_to_dense(csr_sddmm(grad, rhs, crow, col), idx, weight)
    return grad_rhs, grad_weight, None, None, None, None, None, None


csr_mm.register_autograd(_csr_mm_backward, setup_context=_csr_mm_setup)


def csr_linear(x: Tensor, weight: Tensor, bias: Tensor | None, plan, *, feature_major: bool = False) -> Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` through CSR, for any leading dimensions.

    Under autocast for ``x``'s device this runs ``F.linear(x, weight ⊙ mask,
    bias)`` (masked dense), so dtypes and values are exactly those of the dense
    layer under autocast. Double backward is not supported (see
    :data:`DOUBLE_BACKWARD_ERROR`).

    Args:
        x: input ``(..., in)``.
        weight: dense weight ``(out, in)``; only the positions in ``plan`` are read.
        bias: optional ``(out,)``.
        plan: a :class:`~sparse_kernels_cuda.formats.CsrPlan` of the mask.
        feature_major: return the transposed view of the ``(out, tokens)``
            product instead of a contiguous copy. Use it only when the next
            consumer is another CSR layer (directly or through elementwise
            ops), which then reads it without a copy. The values and shape are
            the same, but the result is not contiguous: ``reshape``, elementwise
            ops, matmuls and ``view`` that only splits the leading dimensions
            (e.g. ``y.view(2, -1, out)`` on a 2-D result) work; ``view`` that
            merges or splits the last dimension (``y.view(-1)``, ``y.view(2, -1)``)
            raises.

    Returns:
        ``(..., out)``, contiguous unless ``feature_major``; the gradient of
        ``weight`` is zero off the mask.
    """
    if autocast_active(x.device.type):
        return F.linear(x, weight * plan.to_mask().to(weight.dtype), bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    yt = csr_mm(x2.t(), weight, plan.crow, plan.col, plan.idx, plan.crow_t, plan.col_t, plan.idx_t)
    if bias is not None:
        yt = yt + bias.unsqueeze(1)
    y = yt.t() if feature_major else yt.t().contiguous()
    return y if x.dim() == 2 else y.reshape(*lead, y.shape[-1])
