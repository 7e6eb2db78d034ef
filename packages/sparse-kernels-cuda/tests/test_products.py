"""CSR products for algorithms that own a layer's forward, and SWAT composed with the plugin."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore.products import SparseProducts

from sparse_kernels_cuda import KernelPlugin
from sparse_kernels_cuda.products import CsrProducts

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _sparse(shape, density, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=dtype)
    return t * (torch.rand(shape, generator=g) < density)


def test_products_equal_the_dense_products():
    products = CsrProducts(measure=False)
    assert isinstance(products, SparseProducts)
    weight = torch.randn(48, 40, dtype=torch.float64)
    mask = torch.rand(48, 40) < 0.15
    x, grad = torch.randn(12, 40, dtype=torch.float64), torch.randn(12, 48, dtype=torch.float64)
    operand = products.weight_operand(weight, lambda: mask, torch.randn(12, 40, dtype=torch.float64), 0.15)
    assert operand is not None
    torch.testing.assert_close(products.mm_weight_t(x, operand), x @ (weight * mask).t(), rtol=0, atol=1e-12)
    torch.testing.assert_close(products.mm_weight(grad, operand), grad @ (weight * mask), rtol=0, atol=1e-12)
    x_sparse = _sparse((12, 40), 0.1, 0)
    dw = products.grad_weight(grad, x_sparse, 0.1)
    assert dw.shape == (48, 40) and dw.is_contiguous()
    torch.testing.assert_close(dw, grad.t() @ x_sparse, rtol=0, atol=1e-12)
    assert products.calls == {"sparse": 2, "dense": 0}


def test_products_step_aside_where_csr_does_not_pay_or_apply():
    products = CsrProducts(max_density=0.2, measure=False)
    weight, x = torch.randn(16, 16), torch.randn(4, 16)
    never = lambda: pytest.fail("the mask is built only when CSR runs")  # noqa: E731
    assert products.weight_operand(weight, never, x, 0.5) is None  # too dense
    assert products.weight_operand(weight.bfloat16(), never, x, 0.1) is None  # no bf16 CSR product
    assert products.grad_weight(torch.randn(4, 16), torch.randn(4, 16), 1.0) is None  # activations too dense
    assert products.calls == {"sparse": 0, "dense": 3}
    with pytest.raises(ValueError, match="max_density must be in"):
        CsrProducts(max_density=0.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        CsrProducts(repeats=0)


@pytest.mark.parametrize("sparse_faster", [True, False])
def test_measured_choice_is_made_once_per_shape_and_kept(monkeypatch, sparse_faster):
    from sparse_kernels_cuda import products as products_module

    timed = []

    def fake_seconds(fn, repeats):
        timed.append(fn)
        return (1.0 if sparse_faster else 2.0) if len(timed) % 2 else 1.5  # sparse candidate is timed first

    monkeypatch.setattr(products_module, "_seconds", fake_seconds)
    products = CsrProducts(max_density=0.3)
    weight, x = torch.randn(32, 32, dtype=torch.float64), torch.randn(8, 32, dtype=torch.float64)
    mask = torch.rand(32, 32) < 0.1
    x_sparse, grad = _sparse((8, 32), 0.1, 1), torch.randn(8, 32, dtype=torch.float64)
    built = []

    def build_mask():
        built.append(1)
        return mask

    for _ in range(3):
        operand = products.weight_operand(weight, build_mask, x, 0.1)
        assert (operand is not None) is sparse_faster
        assert (products.grad_weight(grad, x_sparse, 0.1) is not None) is sparse_faster
    assert len(built) == (4 if sparse_faster else 1)  # measured once; afterwards built only for CSR
    assert len(timed) == 4  # two candidates for each of the two products, measured once
    assert sorted(key[0] for key in products.choices) == ["grad_weight", "weight"]
    assert products.calls == ({"sparse": 6, "dense": 0} if sparse_faster else {"sparse": 0, "dense": 6})


def _mlp_conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10)).double()


def _swat_run(plugins, steps=3):
    import sparsecore_swat as swat  # a package of this repository: its absence is an error, not a skip

    model = _mlp_conv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=swat.SwatAlgorithm(), density=0.1, seed=0, plugins=plugins)
    gen = torch.Generator().manual_seed(1)
    record = []
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        record.append([out.detach().clone()] + [p.grad.clone() for p in model.parameters()])
        opt.step()
    return record, sp, model


def test_swat_runs_its_linear_products_on_the_kernels_with_unchanged_results():
    plug = KernelPlugin(backend="csr")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the plugin does something here: no "keep their own forward"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        kernels, sp, model = _swat_run([plug])
    plain, _, _ = _swat_run([])
    for step_kernels, step_plain in zip(kernels, plain, strict=True):
        for a, b in zip(step_kernels, step_plain, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # every sparse Linear layer got products, no convolution did (the first conv is dense in SWAT-U)
    assert sorted(plug.products) == ["5", "7", "9"]
    assert plug.kernels == {}  # SWAT owns every forward
    for name in ("5", "7", "9"):
        assert model[int(name)].forward.products is plug.products[name]
        assert plug.products[name].calls["sparse"] == 2 * 3  # weight operand and weight gradient, each step
    assert model[2].forward.products is None


def test_forced_non_csr_backend_offers_no_products():
    plug = KernelPlugin(backend="masked-dense")
    with pytest.warns(UserWarning, match="keep their own forward"):
        _swat_run([plug], steps=1)
    assert plug.products == {}


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_csr_pair_matches_the_plan_structures(density):
    from sparse_kernels_cuda.formats import CsrPlan
    from sparse_kernels_cuda.products import csr_pair

    weight = torch.randn(37, 23, dtype=torch.float64)
    mask = torch.rand(37, 23, generator=torch.Generator().manual_seed(3)) < density
    pair, plan = csr_pair(weight, mask), CsrPlan.from_mask(mask)
    for got, want in ((pair.w, plan.to_csr(weight)), (pair.w_t, plan.to_csr_t(weight))):
        assert torch.equal(got.crow_indices(), want.crow_indices())
        assert torch.equal(got.col_indices(), want.col_indices())
        assert torch.equal(got.values(), want.values())
    assert torch.equal(pair.w_t.to_dense(), (weight * mask).t())
