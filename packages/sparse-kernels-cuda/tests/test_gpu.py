"""GPU-only checks: compiled Triton kernels (incl. bf16), 2:4, cuSPARSE CSR. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from sparse_kernels_cuda import (
    BlockPlan,
    SemiStructuredBackend,
    TritonBlockBackend,
    block_linear,
    csr_linear,
    expand_block_mask,
    n_m_mask,
)
from sparse_kernels_cuda.formats import CsrPlan

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-3}, torch.float16: {"rtol": 5e-2, "atol": 5e-2},
       torch.bfloat16: {"rtol": 5e-2, "atol": 1e-1}}


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_block_linear(block, dtype, helpers):
    pytest.importorskip("triton", reason="triton is not installed (the 'triton' extra)")
    gen = torch.Generator().manual_seed(0)
    bm = torch.rand(1024 // block, 512 // block, generator=gen) < 0.25
    mask = expand_block_mask(bm, block).cuda()
    w = torch.randn(1024, 512, generator=gen).cuda().to(dtype)
    x = torch.randn(777, 512, generator=gen).cuda().to(dtype)
    g = torch.randn(777, 1024, generator=gen).cuda().to(dtype)
    bias = torch.randn(1024, generator=gen).cuda().to(dtype)
    plan = BlockPlan.from_mask(mask, block)
    assert TritonBlockBackend().supports(tuple(w.shape), dtype, f"block{block}", "cuda")
    y, dx, dw, db = helpers.run_backend(block_linear, x, w, bias, plan, g)
    ry, rdx, rdw, rdb = helpers.reference_linear(x.float(), w.float(), mask, bias.float(), g.float())
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    limit = 1e-5 if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else 2e-2
    assert rel(y, ry) < limit and rel(dx, rdx) < limit and rel(dw, rdw) < limit
    assert torch.count_nonzero(dw[~mask]) == 0


def test_semi_structured_backend(helpers):
    be = SemiStructuredBackend()
    if not be.is_available():
        pytest.skip("needs sm80+")
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 512, generator=gen).cuda().half()
    mask = n_m_mask(w.abs().float().cpu()).cuda()
    x = torch.randn(128, 512, generator=gen).cuda().half()
    g = torch.randn(128, 256, generator=gen).cuda().half()
    assert be.supports((256, 512), torch.float16, "2:4", "cuda")
    y, dx, dw, _ = helpers.run_backend(be.linear, x, w, None, mask, g)
    ry, rdx, rdw, _ = helpers.reference_linear(x.float(), w.float(), mask, None, g.float())
    torch.testing.assert_close(y.float(), ry, **TOL[torch.float16])
    torch.testing.assert_close(dx.float(), rdx, **TOL[torch.float16])
    torch.testing.assert_close(dw.float(), rdw, rtol=5e-2, atol=2e-1)
    assert torch.count_nonzero(dw[~mask]) == 0


def test_csr_on_cuda(helpers):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 384, generator=gen).cuda()
    mask = (torch.rand(256, 384, generator=gen) < 0.05).cuda()
    x = torch.randn(64, 384, generator=gen).cuda()
    g = torch.randn(64, 256, generator=gen).cuda()
    y, dx, dw, _ = helpers.run_backend(csr_linear, x, w, None, CsrPlan.from_mask(mask), g)
    ry, rdx, rdw, _ = helpers.reference_linear(x, w, mask, None, g)
    torch.testing.assert_close(y, ry, **TOL[torch.float32])
    torch.testing.assert_close(dx, rdx, **TOL[torch.float32])
    torch.testing.assert_close(dw, rdw, **TOL[torch.float32])


def test_opcheck_block_linear_cuda():
    pytest.importorskip("triton", reason="triton is not installed (the 'triton' extra)")
    from sparse_kernels_cuda.backends import triton_block  # noqa: F401

    mask = expand_block_mask(torch.tensor([[True, False], [True, True]]), 32).cuda()
    p = BlockPlan.from_mask(mask, 32)
    x = torch.randn(40, 64, device="cuda", requires_grad=True)
    w = torch.randn(64, 64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.sparse_kernels_cuda.block_linear.default,
                          (x, w, p.row_ptr, p.row_idx, p.col_idx, p.col_ptr, p.t_row_idx, 32))
