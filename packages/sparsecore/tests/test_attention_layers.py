"""Attention and transformer layers in the engine: bypassed forwards, the fast-path guard, output sizes.

``nn.MultiheadAttention`` reads its input projections and ``out_proj.weight``
without calling a forward: the engine records why on each such layer
(``forward_bypass_reason``) and never replaces their forwards.
``nn.TransformerEncoderLayer``'s eval fast path would skip the replaced
forwards of ``linear1``/``linear2``: while replaced forwards are installed,
the engine keeps it off in the encoder layers that hold them.
"""

from __future__ import annotations

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from torch import nn

IN_PROJ = ["layers.0.self_attn.in_proj_weight", "layers.1.self_attn.in_proj_weight"]
OUT_PROJ = ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
FEED_FORWARD = ["layers.0.linear1", "layers.0.linear2", "layers.1.linear1", "layers.1.linear2"]
EVERY_LAYER = [IN_PROJ[0], OUT_PROJ[0], *FEED_FORWARD[:2], IN_PROJ[1], OUT_PROJ[1], *FEED_FORWARD[2:]]
SEQ, BATCH = 6, 3

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning",
                                        "ignore:enable_nested_tensor is True:UserWarning")


def _encoder(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2)


def _inputs(batch_first=True):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SEQ, 16, generator=gen)
    padding = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    padding[1, 4:] = True
    return (x if batch_first else x.transpose(0, 1)), padding


def _copy_weights(model):
    """A fresh encoder with ``model``'s (masked) weights, running its own forwards and no hooks."""
    copied = _encoder(model.layers[0].self_attn.batch_first)
    copied.load_state_dict(model.state_dict())
    return copied


def _pre_hooks(model):
    return [len(layer._forward_pre_hooks) for layer in model.layers]


class MaskedForward:
    """A replaced Linear forward: ``F.linear(x, weight * mask, bias)``, logging each call's layer name."""

    def __init__(self, layer, calls):
        self.layer, self.calls = layer, calls

    def __call__(self, x):
        self.calls.append(self.layer.name)
        return F.linear(x, self.layer.weight * self.layer.mask, self.layer.module.bias)


class ReplaceForwards:
    """A plugin that replaces the forward of the Linear layers named in ``only`` (all when ``None``)."""

    def __init__(self, only=None):
        self.only = only
        self.calls: list[str] = []

    @sparsecore.hookimpl
    def layer_forward(self, sparsifier, layer):
        if self.only is not None and layer.name not in self.only:
            return None
        return MaskedForward(layer, self.calls)


class ForwardSparsity(sparsecore.Algorithm):
    """An algorithm whose sparsity lives only in replaced forwards (dense weights), as SWAT's does."""

    name = "forward-sparsity"
    masking_policy = sparsecore.MaskingPolicy(mask_weights=False, mask_gradients=False,
                                              mask_optimizer_state=False, reset_grown_state=False)

    def __init__(self):
        self.calls: list[str] = []

    @sparsecore.hookimpl
    def layer_forward(self, sparsifier, layer):
        return MaskedForward(layer, self.calls)


def _sparsify(model, algorithm="static", plugins=(), **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, seed=0, total_steps=100,
                                 plugins=list(plugins), **kwargs)


def _out_proj_reason(attention):
    return (f"nn.MultiheadAttention {attention!r} passes out_proj.weight to F.multi_head_attention_forward and "
            "never calls out_proj, so its forward cannot be replaced")


def _in_proj_reason(attention):
    return (f"nn.MultiheadAttention {attention!r} passes in_proj_weight to F.multi_head_attention_forward itself; "
            "no sub-module's forward computes with it, so none can be replaced")


# -- why a forward is bypassed -----------------------------------------------------------------


def test_every_attention_weight_carries_the_reason_its_forward_is_bypassed():
    sp = _sparsify(_encoder())
    assert list(sp.layers) == EVERY_LAYER
    reasons = {name: layer.forward_bypass_reason for name, layer in sp.layers.items()}
    assert reasons == {**dict.fromkeys(FEED_FORWARD),
                       IN_PROJ[0]: _in_proj_reason("layers.0.self_attn"),
                       IN_PROJ[1]: _in_proj_reason("layers.1.self_attn"),
                       OUT_PROJ[0]: _out_proj_reason("layers.0.self_attn"),
                       OUT_PROJ[1]: _out_proj_reason("layers.1.self_attn")}
    assert [name for name, layer in sp.layers.items() if layer.forward_replaceable] == FEED_FORWARD


def test_out_proj_is_bypassed_even_when_attention_is_not_a_selected_type():
    sp = _sparsify(_encoder(), layer_types=[nn.Linear])
    assert list(sp.layers) == [OUT_PROJ[0], *FEED_FORWARD[:2], OUT_PROJ[1], *FEED_FORWARD[2:]]
    assert sp.layers[OUT_PROJ[1]].forward_bypass_reason == _out_proj_reason("layers.1.self_attn")


def test_the_engine_asks_layer_forward_only_for_layers_whose_forward_runs():
    model = _encoder()
    plugin = ReplaceForwards()
    _sparsify(model, plugins=[plugin])
    modules = dict(model.named_modules())
    assert [n for n, m in modules.items() if "forward" in m.__dict__] == FEED_FORWARD


def test_a_forward_sparsity_algorithm_leaves_attention_weights_dense_with_the_reason():
    model = _encoder()
    with pytest.warns(UserWarning, match=r"forward-sparsity: layer\(s\) \[.*\] stay dense"):
        sp = _sparsify(model, algorithm=ForwardSparsity())
    assert list(sp.layers) == FEED_FORWARD
    assert [layer.index for layer in sp.layers.values()] == [0, 1, 2, 3]
    dense = sp.report().dense_layers
    assert dense[OUT_PROJ[0]] == ("forward-sparsity makes layers sparse in their forward: "
                                  + _out_proj_reason("layers.0.self_attn"))
    assert dense[IN_PROJ[1]] == ("forward-sparsity makes layers sparse in their forward: "
                                 + _in_proj_reason("layers.1.self_attn"))


# -- output sizes and FLOPs -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["static", "set"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_report_flops_after_one_forward(algorithm, batch_first):
    model = _encoder(batch_first)
    sp = _sparsify(model, algorithm=algorithm)
    assert sp.report().train_flops is None
    model(_inputs(batch_first)[0])
    report = sp.report()
    assert report.train_flops is not None and report.dense_train_flops is not None
    for name in IN_PROJ + OUT_PROJ:  # measured on the attention output: the sequence length, in either layout
        assert sp.layers[name].output_positions == SEQ
    stats = {s.name: s for s in report.layers}
    out_proj = sp.layers[OUT_PROJ[0]]
    assert stats[OUT_PROJ[0]].forward_flops == 2 * out_proj.nnz * SEQ
    assert stats[OUT_PROJ[0]].dense_forward_flops == 2 * out_proj.capacity * SEQ
    # the feed-forward Linears see (L, N, E) in a seq-first encoder: positions are L, not the batch size
    assert all(sp.layers[name].output_positions == SEQ for name in FEED_FORWARD)
    assert report.train_flops == sum(s.forward_flops + s.backward_flops for s in report.layers)


def test_unbatched_attention_counts_its_sequence_length():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Block()
    sp = _sparsify(model)
    model(torch.randn(SEQ, 16))  # unbatched (L, E): batch_first does not apply
    assert {name: layer.output_positions for name, layer in sp.layers.items()} == {
        "attn.in_proj_weight": SEQ, "attn.out_proj": SEQ}
    assert sp.report().train_flops is not None


def test_a_first_forward_in_eval_without_grad_with_padding_works_and_a_later_one_records_sizes():
    model = _encoder()
    sp = _sparsify(model)
    reference = _copy_weights(model)
    x, padding = _inputs()
    model.eval(), reference.eval()
    with torch.no_grad():  # the encoder packs the batch into a nested tensor
        y = model(x, src_key_padding_mask=padding)
        y_ref = reference(x, src_key_padding_mask=padding)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert all(layer.output_positions is None for layer in sp.layers.values())
    assert sp.report().train_flops is None
    with torch.no_grad():
        model(x)
    assert {layer.output_positions for layer in sp.layers.values()} == {SEQ}
    assert sp.report().train_flops is not None


# -- the fast-path guard ----------------------------------------------------------------------


def test_without_a_guard_the_eval_fast_path_skips_an_installed_forward():
    """What the guard is for: PyTorch's encoder fast path reads ``linear1.weight`` without calling it."""
    model = _encoder().eval()
    calls = []
    for layer in model.layers:
        layer.linear1.forward = lambda x, m=layer.linear1: (calls.append(m), nn.Linear.forward(m, x))[1]
    with torch.no_grad():
        model(_inputs()[0])
    assert calls == []
    model.layers[0].register_forward_pre_hook(lambda module, args: None)
    with torch.no_grad():
        model(_inputs()[0])
    assert calls == [model.layers[0].linear1]


@pytest.mark.parametrize("padded", [False, True])
def test_the_guard_keeps_replaced_forwards_running_in_eval_without_grad(padded):
    model = _encoder()
    plugin = ReplaceForwards()
    sp = _sparsify(model, plugins=[plugin])
    assert sp._forwards.guarded == ["layers.0", "layers.1"]
    reference = _copy_weights(model)
    x, padding = _inputs()
    kwargs = {"src_key_padding_mask": padding} if padded else {}
    model(x)  # a training forward: the engine's one-shot output-size hooks fire and go
    plugin.calls.clear()
    model.eval(), reference.eval()
    with torch.no_grad():
        y, y_ref = model(x, **kwargs), reference(x, **kwargs)
    assert sorted(plugin.calls) == sorted(FEED_FORWARD)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_the_guard_is_on_while_attached_and_off_after_remove():
    model = _encoder()
    sp = _sparsify(model, plugins=[ReplaceForwards()])
    assert _pre_hooks(model) == [1, 1]
    model(_inputs()[0])
    assert _pre_hooks(model) == [1, 1]
    sp.remove()
    assert _pre_hooks(model) == [0, 0] and sp._forwards.guarded == []
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    sp.remove()  # again: nothing left to do
    assert _pre_hooks(model) == [0, 0]


def test_only_encoder_layers_holding_a_replaced_forward_are_guarded():
    model = _encoder()
    sp = _sparsify(model, plugins=[ReplaceForwards(only={"layers.1.linear2"})])
    assert _pre_hooks(model) == [0, 1] and sp._forwards.guarded == ["layers.1"]


def test_no_replaced_forward_no_guard():
    model = _encoder()
    sp = _sparsify(model)
    assert _pre_hooks(model) == [0, 0] and sp._forwards.guarded == []


def test_a_refused_set_up_leaves_the_encoder_layers_untouched():
    model = _encoder()

    class Refuse:
        @sparsecore.hookimpl
        def on_setup(self, sparsifier):
            raise sparsecore.ConfigurationError("refused")

    with pytest.raises(sparsecore.ConfigurationError, match="refused"):
        _sparsify(model, plugins=[ReplaceForwards(), Refuse()])
    assert _pre_hooks(model) == [0, 0]
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
