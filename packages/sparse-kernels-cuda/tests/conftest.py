"""Shared helpers for the sparse-kernels-cuda tests."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU-only machines; the variable
    # must be set before ``triton.language`` is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

# fp32 tolerances from the kernels reference (reduction order differs from dense BLAS).
FP32 = {"rtol": 1e-4, "atol": 1e-3}


def reference_linear(x, weight, mask, bias, grad_out):
    """Masked-dense autograd on fp32/fp64 copies: returns (y, dx, dw, dbias)."""
    x = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    y = F.linear(x, w * mask.to(w.dtype), b)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, (None if b is None else b.grad)


def run_backend(linear, x, weight, bias, plan, grad_out):
    """Forward + backward of ``linear``: returns (y, dx, dw, dbias)."""
    x = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    y = linear(x, w, b, plan)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, (None if b is None else b.grad)


class Helpers:
    """Reference and runner, handed to tests through the ``helpers`` fixture."""

    FP32 = FP32
    reference_linear = staticmethod(reference_linear)
    run_backend = staticmethod(run_backend)


@pytest.fixture
def helpers():
    """Masked-dense reference helpers and tolerances."""
    return Helpers


@pytest.fixture
def gen():
    """A seeded generator."""
    return torch.Generator().manual_seed(1234)


def pytest_configure(config):
    """Silence torch's one-time 'CSR is beta' warning in this package's tests."""
    config.addinivalue_line("filterwarnings", "ignore:Sparse CSR tensor support is in beta:UserWarning")
