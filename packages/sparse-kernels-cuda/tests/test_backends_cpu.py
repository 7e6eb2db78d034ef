"""CPU backends (CSR, masked dense) against masked-dense autograd."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from sparse_kernels_cuda import CsrBackend, MaskedDenseBackend, clear_grad_pool, csr_linear
from sparse_kernels_cuda.formats import CsrPlan
from sparse_kernels_cuda.ops import DOUBLE_BACKWARD_ERROR

FP32 = {"rtol": 1e-4, "atol": 1e-3}
BACKENDS = [CsrBackend(), MaskedDenseBackend()]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("density", [0.03, 0.3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_masked_dense(backend, density, with_bias, gen, helpers):
    out_f, in_f, batch = 96, 1040, 24
    w = torch.randn(out_f, in_f, generator=gen)
    mask = torch.rand(out_f, in_f, generator=gen) < density
    bias = torch.randn(out_f, generator=gen) if with_bias else None
    x = torch.randn(batch, in_f, generator=gen)
    g = torch.randn(batch, out_f, generator=gen)
    y, dx, dw, db = helpers.run_backend(backend.linear, x, w, bias, backend.plan(mask), g)
    ry, rdx, rdw, rdb = helpers.reference_linear(x, w, mask, bias, g)
    torch.testing.assert_close(y, ry, **FP32)
    torch.testing.assert_close(dx, rdx, **FP32)
    torch.testing.assert_close(dw, rdw, **FP32)
    assert torch.count_nonzero(dw[~mask]) == 0, "pruned positions of the weight gradient must be exactly zero"
    if with_bias:
        torch.testing.assert_close(db, rdb, **FP32)


def test_csr_fp64_and_3d_input(gen, helpers):
    w = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    mask = torch.rand(20, 12, generator=gen) < 0.25
    x = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 5, 20, generator=gen, dtype=torch.float64)
    plan = CsrPlan.from_mask(mask)
    y, dx, dw, _ = helpers.run_backend(csr_linear, x, w, None, plan, g)
    ry, rdx, rdw, _ = helpers.reference_linear(x, w, mask, None, g)
    assert y.shape == (3, 5, 20)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(dx, rdx)
    torch.testing.assert_close(dw, rdw)


def test_csr_chain_keeps_feature_major_layout(gen):
    """With ``feature_major=True`` a layer returns a transposed view the next one consumes without a copy."""
    m1 = torch.rand(32, 16, generator=gen) < 0.3
    m2 = torch.rand(8, 32, generator=gen) < 0.3
    w1 = torch.randn(32, 16, generator=gen, requires_grad=True)
    w2 = torch.randn(8, 32, generator=gen, requires_grad=True)
    x = torch.randn(10, 16, generator=gen)
    h = csr_linear(x, w1, None, CsrPlan.from_mask(m1), feature_major=True)
    assert h.shape == (10, 32) and h.t().is_contiguous() and not h.is_contiguous()
    # Documented: views of the leading dimension work, views of the last one raise; reshape always works.
    assert h.view(2, 5, 32).shape == (2, 5, 32)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        h.view(2, -1)
    assert torch.equal(h.reshape(2, -1), h.detach().contiguous().view(2, -1))
    y = csr_linear(torch.relu(h), w2, None, CsrPlan.from_mask(m2), feature_major=True)
    y.sum().backward()
    r1 = w1.detach().clone().requires_grad_()
    r2 = w2.detach().clone().requires_grad_()
    ref = torch.relu(x @ (r1 * m1).t()) @ (r2 * m2).t()
    ref.sum().backward()
    torch.testing.assert_close(y, ref, **FP32)
    torch.testing.assert_close(w1.grad, r1.grad, **FP32)
    torch.testing.assert_close(w2.grad, r2.grad, **FP32)


@pytest.mark.parametrize("lead", [(10,), (2, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_csr_output_is_contiguous_like_f_linear(gen, lead, with_bias):
    mask = torch.rand(32, 16, generator=gen) < 0.3
    w = torch.randn(32, 16, generator=gen)
    bias = torch.randn(32, generator=gen) if with_bias else None
    x = torch.randn(*lead, 16, generator=gen)
    y = csr_linear(x, w, bias, CsrPlan.from_mask(mask))
    ref = F.linear(x, w * mask, bias)
    assert y.shape == ref.shape and y.is_contiguous() and y.stride() == ref.stride()
    torch.testing.assert_close(y.view(2, -1), ref.view(2, -1), **FP32)


def test_csr_linear_under_autocast_is_masked_dense(gen):
    """MKL has no bf16 CSR product: under autocast csr_linear is F.linear on the masked weight."""
    mask = torch.rand(24, 40, generator=gen) < 0.2
    plan = CsrPlan.from_mask(mask)
    assert torch.equal(plan.to_mask(), mask)
    w = torch.randn(24, 40, generator=gen, requires_grad=True)
    bias = torch.randn(24, generator=gen)
    x = torch.randn(3, 6, 40, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = csr_linear(x, w, bias, plan)
        ref = F.linear(x, w * mask, bias)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(y, ref)
    y.float().sum().backward()
    assert torch.count_nonzero(w.grad[~mask]) == 0


def test_csr_double_backward_raises(gen):
    mask = torch.rand(8, 6, generator=gen) < 0.5
    w = torch.randn(8, 6, generator=gen, requires_grad=True)
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    y = csr_linear(x, w, None, CsrPlan.from_mask(mask))
    with pytest.raises(RuntimeError, match=re.escape(DOUBLE_BACKWARD_ERROR)):
        torch.autograd.grad(y.pow(2).sum(), (x, w), create_graph=True)
    # A first-order backward of the same graph still works.
    y.pow(2).sum().backward()
    assert w.grad is not None and torch.count_nonzero(w.grad[~mask]) == 0


def test_csr_grad_accumulates_and_pool_never_overwrites_held_grads(gen):
    clear_grad_pool()
    w = torch.randn(24, 40, generator=gen, requires_grad=True)
    mask = torch.rand(24, 40, generator=gen) < 0.2
    plan = CsrPlan.from_mask(mask)
    x = torch.randn(6, 40, generator=gen)
    csr_linear(x, w, None, plan).sum().backward()
    first = w.grad
    kept = first.clone()
    csr_linear(x, w, None, plan).sum().backward()  # accumulates into .grad
    torch.testing.assert_close(w.grad, 2 * kept)
    held = w.grad
    held_copy = held.clone()
    w.grad = None
    csr_linear(2 * x, w, None, plan).sum().backward()  # ``held`` is still referenced: must not be reused
    torch.testing.assert_close(held, held_copy, rtol=0, atol=0)
    torch.testing.assert_close(w.grad, 2 * kept)
    assert w.grad.data_ptr() != held.data_ptr()
    del held, held_copy
    w.grad = None
    csr_linear(x, w, None, plan).sum().backward()
    torch.testing.assert_close(w.grad, kept)


def test_csr_backend_supports():
    b = CsrBackend()
    assert b.is_available()
    assert b.supports((8, 8), torch.float32, "unstructured", "cpu")
    assert b.supports((8, 8), torch.float64, "block16", torch.device("cpu"))
    assert not b.supports((8, 8), torch.bfloat16, "unstructured", "cpu")
    assert MaskedDenseBackend().supports((8, 8), torch.bfloat16, "2:4", "cpu")


def test_premasked_masked_dense_is_plain_linear(gen):
    w = torch.randn(5, 7, generator=gen)
    x = torch.randn(3, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) < 0.5
    y = MaskedDenseBackend(premasked=True).linear(x, w, None, mask)
    torch.testing.assert_close(y, x @ w.t())
