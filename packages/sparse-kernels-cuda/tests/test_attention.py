"""The plugin in nn.TransformerEncoder: bypassed forwards run masked dense and are reported so.

``nn.MultiheadAttention`` never calls its ``out_proj``: the engine never asks
the plugin for that layer's forward (its weight stays masked, so it computes
masked dense), and the plugin warns once per layer. ``linear1``/``linear2``
run their kernels in training and, with the engine's fast-path guard, in eval
without grad too (the guard itself is tested in sparsecore's
``test_attention_layers.py``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsecore

from sparse_kernels_cuda import KernelPlugin
from sparse_kernels_cuda.plugin import LayerKernel

OUT_PROJ = ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
FEED_FORWARD = ["layers.0.linear1", "layers.0.linear2", "layers.1.linear1", "layers.1.linear2"]


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 16, generator=gen)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    return x, padding


def _sparsify(model, plugins):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.2, seed=3, plugins=plugins)
    return sp, [str(w.message) for w in caught if str(w.message).startswith("sparse-kernels-cuda: layer")]


@pytest.fixture
def count_kernel_calls(monkeypatch):
    """Counts LayerKernel calls (patched on the class: no module hook, which would change the fast path)."""
    calls = []
    original = LayerKernel.__call__

    def counting(self, input):
        calls.append(self.layer.name)
        return original(self, input)

    monkeypatch.setattr(LayerKernel, "__call__", counting)
    return calls


def test_out_proj_runs_masked_dense_with_one_warning_per_layer():
    model = _encoder()
    plugin = KernelPlugin(backend="csr")
    sp, messages = _sparsify(model, [plugin])
    assert len(messages) == 2
    for name, message in zip(OUT_PROJ, messages):
        assert message.startswith(f"sparse-kernels-cuda: layer {name!r} runs masked dense")
        assert "never calls out_proj" in message
    assert set(plugin.bypassed) == set(OUT_PROJ) and set(plugin.kernels) == set(FEED_FORWARD)
    modules = dict(model.named_modules())
    assert all("forward" not in modules[name].__dict__ for name in OUT_PROJ)
    assert plugin.bypassed == {name: sp.layers[name].forward_bypass_reason for name in OUT_PROJ}
    # what the report shows for out_proj is what attention multiplies with: the masked weight
    model(_inputs()[0])
    for name in OUT_PROJ:
        layer = sp.layers[name]
        assert torch.count_nonzero(layer.weight.detach()[~layer.mask]) == 0
        assert layer.density == pytest.approx(0.2, abs=1 / layer.capacity)
    assert plugin.summary() == {**dict.fromkeys(FEED_FORWARD, "csr"), **dict.fromkeys(OUT_PROJ, "masked-dense")}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("mode", ["train", "eval-no-grad", "eval-no-grad-padded"])
def test_every_feed_forward_layer_runs_its_kernel_and_matches_masked_dense(mode, count_kernel_calls):
    model, ref = _encoder(), _encoder()
    plugin = KernelPlugin(backend="csr")
    _sparsify(model, [plugin])
    _sparsify(ref, [])  # the same masks, every layer on its own (masked dense) forward
    x, padding = _inputs()
    model(x)  # one training call first, as in a run
    ref(x)
    count_kernel_calls.clear()
    kwargs = {"src_key_padding_mask": padding} if mode.endswith("padded") else {}
    model.train(mode == "train"), ref.train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        y, y_ref = model(x, **kwargs).detach(), ref(x, **kwargs).detach()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    assert sorted(count_kernel_calls) == sorted(FEED_FORWARD)
    # padded eval batches arrive as nested tensors: those calls run masked dense
    expected = "masked-dense" if mode.endswith("padded") else "csr"
    assert {plugin.kernels[name].last_backend for name in FEED_FORWARD} == {expected}


def _pre_hooks(model):
    return [len(layer._forward_pre_hooks) for layer in model.layers]


def test_no_kernel_and_no_guard_when_the_plugin_steps_aside():
    class DenseGradients(sparsecore.Algorithm):
        name = "dense-gradients"
        masking_policy = sparsecore.MaskingPolicy(mask_gradients=False, mask_optimizer_state=False)

    model = _encoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plugin = KernelPlugin(backend="csr")
    with pytest.warns(UserWarning, match="keep their own forward"):
        sparsecore.Sparsifier(model, opt, algorithm=DenseGradients(), density=0.2, plugins=[plugin])
    assert plugin.kernels == {} and plugin.bypassed == {}
    model(_inputs()[0])
    assert _pre_hooks(model) == [0, 0]
