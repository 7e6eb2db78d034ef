"""The plugin inside sparsecore's engine: registration, identical results, fallbacks."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import sparsecore

from sparse_kernels_cuda import KernelPlugin
from sparse_kernels_cuda.plugin import LayerKernel
from sparse_kernels_cuda import plugin as plugin_module


def test_registers_by_name():
    seen = {}
    plugin_module.sparsecore_register_plugins(lambda name, factory: seen.__setitem__(name, factory))
    assert seen == {"sparse-kernels-cuda": KernelPlugin}
    assert isinstance(seen["sparse-kernels-cuda"](), KernelPlugin)


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10))


def _train(plugins, steps=6, update_at=3):
    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.1, seed=3, plugins=plugins,
                               total_steps=1000)
    gen = torch.Generator().manual_seed(7)
    losses = []
    for i in range(steps):
        x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if i == update_at:
            sp.update_topology(0.3)
    return losses, model, sp


def test_forced_csr_gives_the_same_training_as_masked_dense():
    plug = KernelPlugin(backend="csr")
    losses, model, sp = _train([plug])
    ref_losses, ref_model, _ = _train([])
    assert set(plug.summary().values()) == {"csr"}
    assert len(plug.summary()) == len(sp.layers)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-4)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
    for layer in sp.layers.values():
        assert torch.count_nonzero(layer.weight.detach()[~layer.mask]) == 0


def test_activated_by_name_with_auto_dispatch():
    losses, _, sp = _train(["sparse-kernels-cuda"], steps=3, update_at=1)
    ref_losses, _, _ = _train([], steps=3, update_at=1)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-4)
    kernels = [layer.module.__dict__.get("forward") for layer in sp.layers.values()]
    assert all(isinstance(k, LayerKernel) for k in kernels)
    assert all(k.last_backend in ("csr", "masked-dense") for k in kernels)


def test_topology_update_rebuilds_formats():
    plug = KernelPlugin(backend="csr")
    _, _, sp = _train([plug], steps=2, update_at=10)
    name, layer = next(iter(sp.layers.items()))
    kernel = plug.kernels[name]
    old = kernel.plan("csr")
    sp.update_topology(0.5)
    new = kernel.plan("csr")
    assert new is not old
    assert torch.equal(new.to_csr(torch.ones_like(layer.weight)).to_dense().bool(), layer.mask)


def test_conv_layers_keep_their_forward():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plug = KernelPlugin(backend="csr")
    sparsecore.Sparsifier(model, opt, algorithm="static", density=0.2, plugins=[plug])
    assert "forward" not in model[0].__dict__
    assert list(plug.kernels) == ["2"]
    model(torch.randn(2, 3, 8, 8)).sum().backward()


def test_dense_gradient_policy_keeps_module_forward():
    class DenseGrads(sparsecore.Algorithm):
        name = "dense-grads"
        masking_policy = sparsecore.MaskingPolicy(mask_gradients=False, mask_optimizer_state=False)

    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plug = KernelPlugin(backend="csr")
    with pytest.warns(UserWarning, match="keep their own forward"):
        sparsecore.Sparsifier(model, opt, algorithm=DenseGrads(), density=0.2, plugins=[plug])
    assert plug.kernels == {}


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("SPARSE_KERNELS_CUDA_BACKEND", "masked-dense")
    assert KernelPlugin().backend == "masked-dense"
    assert KernelPlugin(backend="csr").backend == "csr"


def _pair(plugins):
    """The reproducer's model: two 256×256 Linear layers under SET at 5 % density."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.05, total_steps=10, seed=3, plugins=plugins)
    return model, sp


def test_deterministic_algorithms_use_masked_dense_unless_forced():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        auto = KernelPlugin(backend="auto")
        model, _ = _pair([auto])
        model(torch.randn(8, 256)).sum().backward()
        assert set(auto.summary().values()) == {"masked-dense"}
        assert auto._dispatcher.timings == {} and auto._dispatcher.decisions == {}
        forced = KernelPlugin(backend="csr")
        model, _ = _pair([forced])
        model(torch.randn(8, 256)).sum().backward()
        assert set(forced.summary().values()) == {"csr"}
    finally:
        torch.use_deterministic_algorithms(before)


def test_first_layer_is_timed_without_input_gradient():
    plug = KernelPlugin(backend="auto", repeats=1)
    model, _ = _pair([plug])
    model(torch.randn(8, 256)).sum().backward()
    assert sorted(k.input_grad for k in plug._dispatcher.decisions) == [False, True]
    assert all(k.grad for k in plug._dispatcher.decisions)


def test_double_backward_through_csr_raises_and_masked_dense_supports_it():
    from sparse_kernels_cuda.ops import DOUBLE_BACKWARD_ERROR

    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    model, _ = _pair([KernelPlugin(backend="csr")])
    loss = model(x).square().mean()
    with pytest.raises(RuntimeError, match=re.escape(DOUBLE_BACKWARD_ERROR)):
        torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    model, _ = _pair([KernelPlugin(backend="masked-dense")])
    grads = torch.autograd.grad(model(x).square().mean(), list(model.parameters()), create_graph=True)
    sum(g.square().sum() for g in grads).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("feature_major", [False, True])
def test_csr_layer_outputs_are_contiguous_unless_feature_major(feature_major):
    plug = KernelPlugin(backend="csr", feature_major=feature_major)
    model, _ = _pair([plug])
    y = model(torch.randn(8, 256))
    assert set(plug.summary().values()) == {"csr"}
    assert y.is_contiguous() is not feature_major
    if feature_major:
        assert y.t().is_contiguous()
    else:
        assert y.view(2, -1).shape == (2, 4 * 256)
