"""Triton block-sparse kernels under the interpreter (``TRITON_INTERPRET=1``) on CPU.

Shapes are tiny and blocks ≥ 16 (the GPU ``tl.dot`` minimum), fp32 and fp16 only:
the interpreter has no bf16 (bf16 is tested on GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are created (they are created on first use).
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed (the 'triton' extra)")

from sparse_kernels_cuda import BlockPlan, TritonBlockBackend, block_linear, expand_block_mask  # noqa: E402
from sparse_kernels_cuda._triton_kernels import block_sdd  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests run on CPU-only machines")

TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-3}, torch.float16: {"rtol": 2e-2, "atol": 2e-2}}


def _case(gen, block, dtype, rows=3, cols=2, tokens=19):
    bm = torch.rand(rows, cols, generator=gen) < 0.5
    bm[0, 0] = True
    bm[-1, :] = False  # an empty block row: its outputs must be exactly zero (plus bias)
    mask = expand_block_mask(bm, block)
    w = torch.randn(rows * block, cols * block, generator=gen).to(dtype)
    x = torch.randn(tokens, cols * block, generator=gen).to(dtype)
    g = torch.randn(tokens, rows * block, generator=gen).to(dtype)
    return mask, w, x, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_block_linear_matches_masked_dense(gen, dtype, helpers):
    block = 16
    mask, w, x, g = _case(gen, block, dtype)
    bias = torch.randn(w.shape[0], generator=gen).to(dtype)
    plan = BlockPlan.from_mask(mask, block)
    y, dx, dw, db = helpers.run_backend(block_linear, x, w, bias, plan, g)
    ry, rdx, rdw, rdb = helpers.reference_linear(x.float(), w.float(), mask, bias.float(), g.float())
    tol = TOL[dtype]
    torch.testing.assert_close(y.float(), ry, **tol)
    torch.testing.assert_close(dx.float(), rdx, **tol)
    torch.testing.assert_close(dw.float(), rdw, **tol)
    torch.testing.assert_close(db.float(), rdb, **tol)
    assert torch.count_nonzero(dw[~mask]) == 0
    assert dw.dtype == dtype and dx.dtype == dtype


def test_block_sdd_split_reduction_matches(gen):
    block = 16
    mask, w, x, g = _case(gen, block, torch.float32, rows=2, cols=2, tokens=300)
    plan = BlockPlan.from_mask(mask, block)
    one = block_sdd(g, x, plan.row_idx, plan.col_idx, block, splits=1)
    two = block_sdd(g, x, plan.row_idx, plan.col_idx, block, splits=3)
    full = g.t() @ x
    for k in range(plan.n_blocks):
        r, c = int(plan.row_idx[k]), int(plan.col_idx[k])
        ref = full[r * block:(r + 1) * block, c * block:(c + 1) * block]
        torch.testing.assert_close(one[k], ref, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(two[k], ref, rtol=1e-4, atol=1e-3)


def test_backend_availability_under_interpreter():
    b = TritonBlockBackend()
    assert b.is_available()
    assert b.supports((32, 64), torch.float32, "block16", "cpu")
    assert b.supports((32, 64), torch.float16, "block32", "cpu")
    assert not b.supports((32, 64), torch.bfloat16, "block16", "cpu"), "no bf16 in the interpreter"
    assert not b.supports((32, 64), torch.float32, "unstructured", "cpu")
    assert not b.supports((48, 64), torch.float32, "block32", "cpu")
    with pytest.raises(ValueError, match="not block-structured"):
        b.plan(torch.eye(32, dtype=torch.bool))
