"""``torch.library.opcheck`` on the registered operators (schema, fake kernel, autograd, AOT)."""

from __future__ import annotations

import os

import pytest
import torch

from sparse_kernels_cuda import ops  # noqa: F401  (registers the CSR ops)
from sparse_kernels_cuda.formats import BlockPlan, CsrPlan, expand_block_mask


def _csr_args(gen, requires_grad):
    mask = torch.rand(12, 20, generator=gen) < 0.3
    p = CsrPlan.from_mask(mask)
    rhs = torch.randn(20, 6, generator=gen, requires_grad=requires_grad)
    w = torch.randn(12, 20, generator=gen, requires_grad=requires_grad)
    return (rhs, w, p.crow, p.col, p.idx, p.crow_t, p.col_t, p.idx_t), p


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_csr_mm(gen, requires_grad):
    args, _ = _csr_args(gen, requires_grad)
    torch.library.opcheck(torch.ops.sparse_kernels_cuda.csr_mm.default, args)


def test_opcheck_csr_sddmm(gen):
    _, p = _csr_args(gen, False)
    a = torch.randn(12, 6, generator=gen)
    b = torch.randn(20, 6, generator=gen)
    torch.library.opcheck(torch.ops.sparse_kernels_cuda.csr_sddmm.default, (a, b, p.crow, p.col))
    vals = torch.ops.sparse_kernels_cuda.csr_sddmm(a, b, p.crow, p.col)
    torch.testing.assert_close(vals, (a @ b.t()).reshape(-1)[p.idx])


def test_csr_mm_compiles(gen):
    """The op works inside ``torch.compile`` (fake kernel + autograd registration)."""
    args, p = _csr_args(gen, True)
    rhs, w = args[0], args[1]

    def f(rhs, w):
        return torch.ops.sparse_kernels_cuda.csr_mm(rhs, w, *args[2:]).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(rhs, w)
    loss.backward()
    ref_w = w.detach().clone().requires_grad_()
    mask = torch.zeros(12 * 20, dtype=torch.bool)
    mask[p.idx] = True
    ((ref_w * mask.view(12, 20)) @ rhs.detach()).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter variant; GPU variant in test_gpu.py")
def test_opcheck_block_linear_interpreted(gen):
    pytest.importorskip("triton", reason="triton is not installed (the 'triton' extra)")
    from sparse_kernels_cuda.backends import triton_block  # noqa: F401

    mask = expand_block_mask(torch.tensor([[True, False], [True, True]]), 16)
    p = BlockPlan.from_mask(mask, 16)
    x = torch.randn(5, 32, generator=gen, requires_grad=True)
    w = torch.randn(32, 32, generator=gen, requires_grad=True)
    args = (x, w, p.row_ptr, p.row_idx, p.col_idx, p.col_ptr, p.t_row_idx, 16)
    torch.library.opcheck(torch.ops.sparse_kernels_cuda.block_linear.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    assert os.environ["TRITON_INTERPRET"] == "1"
