"""SWAT in nn.TransformerEncoder: what the report calls sparse is what the forward computes.

``nn.MultiheadAttention`` reads its input projections and ``out_proj`` weight
without calling a forward: the engine leaves those layers dense for SWAT and
reports them so. ``linear1``/``linear2`` run SWAT in training and, with the
engine's fast-path guard, in eval without grad too (the guard itself is
tested in sparsecore's ``test_attention_layers.py``).
"""

import copy
import warnings

import pytest
import sparsecore
import torch
from sparsecore_swat import SwatAlgorithm, SwatForward
from torch import nn

OUT_PROJ = ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
IN_PROJ = ["layers.0.self_attn.in_proj_weight", "layers.1.self_attn.in_proj_weight"]
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


def _swat(model, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    algorithm = SwatAlgorithm(sparsify_first_layer=True, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, seed=0)
    return sp, opt, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _masked_copy(original, sp):
    """``original`` with every sparse layer's weight multiplied by the mask the report shows, run dense."""
    ref = copy.deepcopy(original)
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for name, layer in sp.layers.items():
            modules[name].weight.mul_(layer.mask)
    return ref


@pytest.fixture
def count_swat_calls(monkeypatch):
    """Counts calls of every SwatForward (patched on the class: no module hook, which would change the fast path)."""
    calls = []
    original = SwatForward.__call__

    def counting(self, input):
        calls.append(self.module)
        return original(self, input)

    monkeypatch.setattr(SwatForward, "__call__", counting)
    return calls


@pytest.mark.slow
def test_out_proj_stays_dense_and_the_report_says_so():
    model = _encoder()
    sp, _, messages = _swat(model)
    assert list(sp.layers) == FEED_FORWARD
    assert any(all(name in m for name in OUT_PROJ + IN_PROJ) and "stay dense" in m for m in messages)
    report = sp.report()
    for name in OUT_PROJ:
        assert report.dense_layers[name].startswith("swat makes layers sparse in their forward: ")
        assert "never calls out_proj" in report.dense_layers[name]
    assert all("MultiheadAttention" in report.dense_layers[name] for name in IN_PROJ)
    modules = dict(model.named_modules())
    assert all("forward" not in modules[name].__dict__ for name in OUT_PROJ)
    assert all(isinstance(modules[name].forward, SwatForward) for name in FEED_FORWARD)
    model(_inputs()[0])  # records output sizes for the FLOP columns
    for stats in sp.report().layers:
        assert stats.nnz == pytest.approx(0.3 * stats.numel, abs=1)
        assert stats.forward_flops < stats.dense_forward_flops


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("mode", ["train", "eval-no-grad", "eval-no-grad-padded", "eval-grad"])
def test_the_forward_computes_with_the_masks_the_report_shows(mode, count_swat_calls):
    original = _encoder()
    model = copy.deepcopy(original)
    sp, _, _ = _swat(model)
    ref = _masked_copy(original, sp)
    x, padding = _inputs()
    model(x)  # one training call first, as in a run
    count_swat_calls.clear()
    kwargs = {"src_key_padding_mask": padding} if mode.endswith("padded") else {}
    for m in (model, ref, original):
        m.train(mode == "train")
    with torch.set_grad_enabled(mode in ("train", "eval-grad")):
        y, y_ref, y_dense = (m(x, **kwargs).detach() for m in (model, ref, original))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert float((y - y_dense).abs().max()) > 0.05  # the masks really change the output
    assert sorted(map(id, count_swat_calls)) == sorted(id(dict(model.named_modules())[n]) for n in FEED_FORWARD)


def test_swat_m_budgets_cover_only_the_feed_forward_layers():
    model = _encoder()
    sp, opt, _ = _swat(model, variant="momentum")
    x, _ = _inputs()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    states = sp.algorithm.states
    assert list(states) == FEED_FORWARD
    assert [states[n].weight_density for n in FEED_FORWARD] != [sp.layers[n].target_density for n in FEED_FORWARD]
    budget = sum(layer.target_density * layer.capacity for layer in sp.layers.values())
    given = sum(states[name].weight_density * layer.capacity for name, layer in sp.layers.items())
    assert budget <= given <= budget + len(FEED_FORWARD)  # SWAT-M rounds each layer's budget up


def test_a_model_with_only_attention_weights_is_refused_and_left_untouched():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Attention()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"^no layer left for swat: \['attn.in_proj_weight', 'attn.out_proj'\] are read by "
                             "MultiheadAttention directly"):
        sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True), density=0.3)
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
