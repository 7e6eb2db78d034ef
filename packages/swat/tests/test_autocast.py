"""SWAT under CPU bfloat16 autocast: layers, every variant through the engine, and with the kernels plugin.

Tolerances. bfloat16 keeps 8 significant bits, so one rounding has relative
error at most ``u = 2**-8``. A SWAT product under autocast rounds both
operands (``2u``) and its result (``u``) and accumulates in fp32, so every
entry of an output or gradient is within ``4u`` times the same product taken
on absolute values (``|x| @ |W|.T``, ...) of the fp32 result: the classical
dot-product error bound, used per element by the layer tests. Through a
whole network, rounding also changes the inputs of later layers, and small
gradients that are sums of terms of both signs lose most of their digits:
the dense model itself moves by about 14 % in relative norm on the first
layer's gradients here. The engine tests therefore allow SWAT twice the dense
model's own deviation (at least 5 %), and compare outputs at ``rtol = 2**-6``.
"""

import copy

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from sparsecore_swat import SwatAlgorithm, install, topk
from torch import nn

U = 2.0 ** -8
BF16 = torch.bfloat16


def _autocast(enabled: bool = True):
    return torch.autocast("cpu", dtype=BF16, enabled=enabled)


def _run_layer(module, x, dy, autocast):
    """Forward and backward of ``module`` on a fresh leaf copy of ``x``; returns (y, dx)."""
    x = x.detach().clone().requires_grad_()
    with _autocast(autocast):
        y = module(x)
    y.float().backward(dy)
    return y, x.grad


def _within(actual, expected, bound, what):
    err = (actual.float() - expected).abs()
    assert bool((err <= bound).all()), (f"{what}: max error {float(err.max()):.3e} over the bf16 bound "
                                        f"(worst ratio {float((err / bound.clamp_min(1e-30)).max()):.2f})")


LAYERS = {
    "linear": (lambda: nn.Linear(24, 16), (6, 5, 24), None, 1),
    "conv2d": (lambda: nn.Conv2d(6, 8, 3, padding=1), (4, 6, 7, 7), None, 1),
    "conv2d-period-3": (lambda: nn.Conv2d(6, 8, 3, padding=1), (4, 6, 7, 7), None, 3),
    "conv2d-channel": (lambda: nn.Conv2d(6, 8, 3, stride=2), (4, 6, 9, 9), "channel", 1),
    "conv2d-filter": (lambda: nn.Conv2d(6, 8, 3, groups=2), (4, 6, 7, 7), "filter", 1),
}


@pytest.mark.parametrize("case", LAYERS)
def test_layer_matches_fp32_within_the_bf16_rounding_bound(case):
    make, shape, structure, period = LAYERS[case]
    torch.manual_seed(0)
    ref = make()
    amp = copy.deepcopy(ref)
    ref_state = install(ref, 0.3, 0.4, period=period, structure=structure)
    amp_state = install(amp, 0.3, 0.4, period=period, structure=structure)
    gen = torch.Generator().manual_seed(1)
    for call in range(2):  # the second call reuses the thresholds when period > 1
        x = torch.relu(torch.randn(shape, generator=gen))
        ref.zero_grad(), amp.zero_grad()
        with torch.no_grad():  # inference: leaves the state alone
            dy = torch.randn(ref(x).shape, generator=gen)
        y_ref, dx_ref = _run_layer(ref, x, dy, autocast=False)
        y, dx = _run_layer(amp, x, dy, autocast=True)

        assert y.dtype == BF16 and dx.dtype == torch.float32
        assert amp.weight.grad.dtype == torch.float32 and amp.bias.grad.dtype == torch.float32
        # the selections are those of the fp32 run
        assert torch.equal(amp_state.weight_threshold, ref_state.weight_threshold)
        assert torch.equal(amp_state.activation_threshold, ref_state.activation_threshold)
        w = ref.weight.detach()
        w_sel = (w * topk.weight_mask(w, ref_state.weight_threshold, structure)).abs()
        x_sel = (x * topk.above(x, ref_state.activation_threshold)).abs()
        g = dy.abs()
        if isinstance(ref, nn.Linear):
            dx_mag = g @ w_sel
            dw_mag = g.reshape(-1, g.shape[-1]).t() @ x_sel.reshape(-1, x_sel.shape[-1])
            db_mag = g.reshape(-1, g.shape[-1]).sum(0)
        else:
            conv = dict(stride=ref.stride, padding=ref.padding, dilation=ref.dilation, groups=ref.groups)
            dx_mag = torch.nn.grad.conv2d_input(x.shape, w_sel, g, **conv)
            dw_mag = torch.nn.grad.conv2d_weight(x_sel, w.shape, g, **conv)
            db_mag = g.sum(dim=(0, 2, 3))
        _within(y, y_ref.detach(), 4 * U * _output_magnitude(ref, x, w_sel), "output")
        _within(dx, dx_ref, 4 * U * dx_mag, "input gradient")
        _within(amp.weight.grad, ref.weight.grad, 4 * U * dw_mag, "weight gradient")
        _within(amp.bias.grad, ref.bias.grad, 4 * U * db_mag, "bias gradient")
    assert amp_state.calls == ref_state.calls == 2

    # inference (eval) forward: the exact top-K weights, in bf16 under autocast
    ref.eval(), amp.eval()
    with torch.no_grad():
        y_ref = ref(x)
        with _autocast():
            y = amp(x)
    assert y.dtype == BF16
    w_sel = (w * ref_state.exact_weight_mask(w)).abs()
    _within(y, y_ref, 4 * U * _output_magnitude(ref, x, w_sel), "inference output")


def _output_magnitude(module, x, w_abs):
    """The layer's product on absolute values, ``|x| * |W| + |b|``: the scale of its rounding error."""
    b = module.bias.detach().abs()
    if isinstance(module, nn.Linear):
        return x.abs() @ w_abs.t() + b
    return F.conv2d(x.abs(), w_abs, b, stride=module.stride, padding=module.padding, dilation=module.dilation,
                    groups=module.groups)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def _train(options, autocast, steps=2, plugins=()):
    """``steps`` SGD steps; returns the last output, the last gradients and the sparsifier."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = None
    if options is not None:
        sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(**options), density=0.3, seed=1,
                                   plugins=list(plugins))
    gen = torch.Generator().manual_seed(5)
    for step in range(steps):
        x, y = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        with _autocast(autocast):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        if step < steps - 1:
            opt.step()
    return out.detach(), [p.grad.clone() for p in model.parameters()], sp


def _rel(a, b):
    return float((a.float() - b).norm() / b.norm())


VARIANTS = {
    "SWAT-U": {"variant": "uniform"},
    "SWAT-U-period": {"variant": "uniform", "period": 3},
    "SWAT-ERK": {"variant": "erk"},
    "SWAT-M": {"variant": "momentum"},
    "structured-channel": {"structure": "channel"},
    "structured-filter": {"structure": "filter"},
}


@pytest.fixture(scope="module")
def dense_deviation():
    """Relative gradient change of the dense model under bf16 autocast, per parameter."""
    _, grads32, _ = _train(None, autocast=False)
    _, grads16, _ = _train(None, autocast=True)
    return [_rel(a, b) for a, b in zip(grads16, grads32)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_under_autocast_close_to_fp32(variant, dense_deviation):
    out32, grads32, sp32 = _train(VARIANTS[variant], autocast=False)
    out16, grads16, sp16 = _train(VARIANTS[variant], autocast=True)
    assert out16.dtype == BF16
    torch.testing.assert_close(out16.float(), out32, rtol=2.0 ** -6, atol=2.0 ** -6 * float(out32.abs().max()))
    for (name, p), g16, g32, dense in zip(_model().named_parameters(), grads16, grads32, dense_deviation):
        assert g16.dtype == torch.float32 and bool(g16.isfinite().all())
        assert _rel(g16, g32) <= max(2 * dense, 0.05), (name, _rel(g16, g32), dense)
    # the layers ran SWAT as in fp32, at the same budgets (SWAT-M's come from the momentum after each step)
    states16, states32 = sp16.algorithm.states, sp32.algorithm.states
    for name, state in states16.items():
        assert state.calls == states32[name].calls
        assert state.weight_density == pytest.approx(states32[name].weight_density, rel=0.02)
    assert sum(state.calls == 2 and state.weight_density < 1.0 for state in states16.values()) >= 1


def test_kernels_plugin_steps_aside_and_swat_runs_under_autocast(dense_deviation):
    import sparse_kernels_cuda as kernels  # a workspace package: installed wherever the tests run
    plugin = kernels.KernelPlugin(backend="csr")
    out16, grads16, sp = _train({"variant": "uniform"}, autocast=True, plugins=[plugin])
    out32, grads32, _ = _train({"variant": "uniform"}, autocast=False)
    assert plugin.kernels == {}  # SWAT owns the forwards; its Linear layers got products ...
    assert plugin.products
    # ... which SWAT does not call under autocast (no bf16 CSR product): its own ops run there
    assert all(p.calls == {"sparse": 0, "dense": 0} for p in plugin.products.values())
    assert all(state.calls == 2 for state in sp.algorithm.states.values())
    torch.testing.assert_close(out16.float(), out32, rtol=2.0 ** -6, atol=2.0 ** -6 * float(out32.abs().max()))
    for g16, g32, dense in zip(grads16, grads32, dense_deviation):
        assert _rel(g16, g32) <= max(2 * dense, 0.05)
