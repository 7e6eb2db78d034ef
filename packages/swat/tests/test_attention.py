"""SWAT in nn.TransformerEncoder: what the report calls sparse is what the forward computes.

``nn.MultiheadAttention`` never calls its ``out_proj`` (it reads the weight),
so SWAT keeps that layer dense and says so; ``linear1``/``linear2`` run SWAT
in training and, with the fast-path guard, in eval without grad too.
"""

import copy
import warnings

import pytest
import sparsecore
import torch
from sparsecore_swat import SwatAlgorithm, SwatForward
from sparsecore_swat.bypass import FastPathGuard, bypassed_forwards
from torch import nn

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


def _swat(model, exclude=None, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    algorithm = SwatAlgorithm(sparsify_first_layer=True, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, seed=0, exclude=exclude)
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


def test_bypassed_forwards_finds_every_out_proj():
    model = _encoder()
    modules = dict(model.named_modules())
    reasons = bypassed_forwards(model)
    assert set(reasons) == {id(modules[name]) for name in OUT_PROJ}
    assert "never calls out_proj" in reasons[id(modules[OUT_PROJ[1]])]
    assert "'layers.1.self_attn'" in reasons[id(modules[OUT_PROJ[1]])]


def test_out_proj_stays_dense_with_a_warning_and_the_report_shows_density_one():
    model = _encoder()
    sp, _, messages = _swat(model)
    assert list(sp.layers) == [OUT_PROJ[0], *FEED_FORWARD[:2], OUT_PROJ[1], *FEED_FORWARD[2:]]
    swat_warnings = [m for m in messages if m.startswith("swat: layer")]
    assert len(swat_warnings) == 2
    for name, message in zip(OUT_PROJ, swat_warnings):
        assert f"swat: layer {name!r} stays dense" in message and "never calls out_proj" in message
    assert set(sp.algorithm.dense_layers) == set(OUT_PROJ)
    modules = dict(model.named_modules())
    assert all("forward" not in modules[name].__dict__ for name in OUT_PROJ)
    assert all(isinstance(modules[name].forward, SwatForward) for name in FEED_FORWARD)
    model(_inputs()[0])  # records output sizes for the FLOP columns
    stats = {s.name: s for s in sp.report().layers}
    for name in OUT_PROJ:
        assert stats[name].density == 1.0 and stats[name].nnz == stats[name].numel
        assert sp.algorithm.states[name].dense
    for name in FEED_FORWARD:
        assert stats[name].nnz == pytest.approx(0.3 * stats[name].numel, abs=1)
        assert stats[name].forward_flops < stats[name].dense_forward_flops


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("mode", ["train", "eval-no-grad", "eval-no-grad-padded", "eval-grad"])
def test_the_forward_computes_with_the_masks_the_report_shows(mode, count_swat_calls):
    original = _encoder()
    model = copy.deepcopy(original)
    sp, _, _ = _swat(model)
    ref = _masked_copy(original, sp)
    x, padding = _inputs()
    model(x)  # first forward in training, where the engine's output-size hooks see plain tensors
    count_swat_calls.clear()
    kwargs = {"src_key_padding_mask": padding} if mode.endswith("padded") else {}
    for m in (model, ref, original):
        m.train(mode == "train")
    with torch.set_grad_enabled(mode in ("train", "eval-grad")):
        y, y_ref, y_dense = (m(x, **kwargs).detach() for m in (model, ref, original))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert float((y - y_dense).abs().max()) > 0.05  # the masks really change the output
    assert sorted(map(id, count_swat_calls)) == sorted(id(dict(model.named_modules())[n]) for n in FEED_FORWARD)


def test_without_the_guard_the_eval_fast_path_skips_the_swat_forwards(count_swat_calls):
    # out_proj excluded: nothing but the guard keeps a hook inside the encoder layers
    original = _encoder()
    model = copy.deepcopy(original)
    sp, _, messages = _swat(model, exclude="*out_proj")
    assert not any(m.startswith("swat: layer") for m in messages)
    x, _ = _inputs()
    model(x)  # the engine's one-shot output-size hooks fire and go
    assert sp.algorithm.fast_path_guard.guarded == ["layers.0", "layers.1"]
    model.eval()
    count_swat_calls.clear()
    with torch.no_grad():
        guarded = model(x)
    assert len(count_swat_calls) == 4
    sp.algorithm.fast_path_guard.remove()
    count_swat_calls.clear()
    with torch.no_grad():
        bypassed = model(x)
        dense = original.eval()(x)
    assert count_swat_calls == []  # PyTorch's fast path read linear1/linear2 directly ...
    torch.testing.assert_close(bypassed, dense)  # ... and computed the dense layers
    assert float((guarded - dense).abs().max()) > 0.05


def test_remove_takes_the_guards_off():
    model = _encoder()
    sp, _, _ = _swat(model)
    assert all(len(layer._forward_pre_hooks) == 1 for layer in model.layers)
    sp.remove()
    assert all(len(layer._forward_pre_hooks) == 0 for layer in model.layers)
    assert sp.algorithm.fast_path_guard.guarded == []


def test_fast_path_guard_only_guards_encoder_layers_holding_replaced_modules():
    model = _encoder()
    guard = FastPathGuard()
    assert guard.install(model, [model.layers[1].linear2]) == ["layers.1"]
    assert [len(layer._forward_pre_hooks) for layer in model.layers] == [0, 1]
    guard.remove()
    assert [len(layer._forward_pre_hooks) for layer in model.layers] == [0, 0]


def test_swat_m_budgets_leave_the_dense_out_proj_out():
    model = _encoder()
    sp, opt, _ = _swat(model, variant="momentum")
    x, _ = _inputs()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    sp.epoch_end(0)
    states = sp.algorithm.states
    assert all(states[name].weight_density == 1.0 and bool(sp.layers[name].mask.all()) for name in OUT_PROJ)
    changed = [states[name].weight_density for name in FEED_FORWARD]
    assert changed != [sp.layers[name].target_density for name in FEED_FORWARD]  # budgets were recomputed
    swat = {name: sp.layers[name] for name in FEED_FORWARD}
    budget = sum(layer.target_density * layer.capacity for layer in swat.values())
    given = sum(states[name].weight_density * layer.capacity for name, layer in swat.items())
    assert budget <= given <= budget + len(swat)  # SWAT-M rounds each layer's budget up


def test_a_model_with_no_replaceable_layer_is_refused_untouched():
    model = nn.MultiheadAttention(16, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match=r"swat: no sparse layer can run SWAT.*'out_proj'"):
        sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True), density=0.3)
    assert "forward" not in model.out_proj.__dict__
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


class _EngineFlag:
    """Sets ``forward_replaceable = False`` on one layer before SWAT chooses masks, as a newer engine does."""

    def __init__(self, name):
        self.name = name

    @sparsecore.hookimpl
    def init_masks(self, sparsifier, layers):
        layers[self.name].forward_replaceable = False
        # returns None: the algorithm chooses the masks


def test_the_engines_forward_replaceable_flag_keeps_a_layer_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"swat: layer '2' stays dense .*forward is never called"):
        sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True), density=0.3,
                                   plugins=[_EngineFlag("2")])
    assert sp.algorithm.dense_layers == {"2": "the engine reports that its module's forward is never called"}
    assert "forward" not in model[2].__dict__ and isinstance(model[0].forward, SwatForward)
    assert bool(sp.layers["2"].mask.all()) and sp.layers["0"].density < 0.5
