"""SWAT in nn.TransformerEncoder: what the report calls sparse is what the forward computes.

``nn.MultiheadAttention`` never calls its ``out_proj`` (it reads the weight):
that layer cannot run SWAT and stays dense, reported so (the engine leaves
such layers out for algorithms whose sparsity lives in the forward; SWAT
keeps any layer the engine flags ``forward_replaceable=False`` dense itself).
``linear1``/``linear2`` run SWAT in training and, with the fast-path guard,
in eval without grad too.
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


def _swat(model, exclude=None, plugins=(), **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    algorithm = SwatAlgorithm(sparsify_first_layer=True, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, seed=0, exclude=exclude,
                                   plugins=list(plugins))
    return sp, opt, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _masked_copy(original, sp):
    """``original`` with every sparse layer's weight multiplied by the mask the report shows, run dense."""
    ref = copy.deepcopy(original)
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for name, layer in sp.layers.items():
            modules[name].weight.mul_(layer.mask)
    return ref


def _pre_hooks(model):
    return [len(layer._forward_pre_hooks) for layer in model.layers]


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


def test_out_proj_stays_dense_and_the_report_says_so():
    model = _encoder()
    sp, _, messages = _swat(model)
    assert list(sp.layers) == FEED_FORWARD
    assert any(all(name in m for name in OUT_PROJ) and "stay dense" in m for m in messages)
    report = sp.report()
    assert all("MultiheadAttention" in report.dense_layers[name] for name in OUT_PROJ)
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
    original = _encoder()
    model = copy.deepcopy(original)
    sp, _, _ = _swat(model)
    x, _ = _inputs()
    model(x)  # the engine's one-shot output-size hooks fire and go; the guard goes on
    assert sp.algorithm.fast_path_guard.guarded == ["layers.0", "layers.1"]
    model.eval()
    count_swat_calls.clear()
    with torch.no_grad():
        guarded = model(x)
    assert len(count_swat_calls) == 4
    sp.algorithm.fast_path_guard.remove()
    assert _pre_hooks(model) == [0, 0]  # nothing else keeps the fast path off
    count_swat_calls.clear()
    with torch.no_grad():
        bypassed = model(x)
        dense = original.eval()(x)
    assert count_swat_calls == []  # PyTorch's fast path read linear1/linear2 directly ...
    torch.testing.assert_close(bypassed, dense)  # ... and computed the dense layers
    assert float((guarded - dense).abs().max()) > 0.05


def test_the_guard_is_on_only_while_the_run_is_attached():
    model = _encoder()
    sp, _, _ = _swat(model)
    x, _ = _inputs()
    assert _pre_hooks(model) == [0, 0]  # set-up leaves the encoder layers alone
    model(x)
    assert _pre_hooks(model) == [1, 1]
    sp.remove()
    model.eval()
    with torch.no_grad():
        model(x)  # the first call after remove() finds no SWAT forward and takes the guard off
    assert _pre_hooks(model) == [0, 0] and sp.algorithm.fast_path_guard.guarded == []


def test_a_refused_set_up_leaves_the_encoder_layers_untouched():
    model = _encoder()

    class Refuse:
        @sparsecore.hookimpl
        def on_setup(self, sparsifier):
            raise sparsecore.ConfigurationError("refused")

    with pytest.raises(sparsecore.ConfigurationError, match="refused"):
        _swat(model, plugins=[Refuse()])
    assert _pre_hooks(model) == [0, 0]
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_fast_path_guard_guards_only_encoder_layers_holding_an_installed_forward():
    model = _encoder()
    linear2 = model.layers[1].linear2
    replaced = nn.Linear.forward.__get__(linear2)
    guard = FastPathGuard(model)
    guard.watch(linear2, replaced)
    guard.ensure()
    assert _pre_hooks(model) == [0, 0]  # the forward is not installed yet
    linear2.forward = replaced
    guard.ensure()
    assert guard.guarded == ["layers.1"] and _pre_hooks(model) == [0, 1]
    guard.ensure()
    assert _pre_hooks(model) == [0, 1]  # once
    del linear2.forward
    model.eval()(_inputs()[0])
    assert _pre_hooks(model) == [0, 0]


class _EngineFlag:
    """Sets ``forward_replaceable = False`` on layers before SWAT chooses masks, as an engine may do."""

    def __init__(self, *names):
        self.names = names

    @sparsecore.hookimpl
    def init_masks(self, sparsifier, layers):
        for name in self.names:
            layers[name].forward_replaceable = False
        # returns None: the algorithm chooses the masks


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _flagged(model, names, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True, **options),
                               density=0.3, seed=0, plugins=[_EngineFlag(*names)])
    return sp, opt


def test_a_layer_flagged_not_replaceable_stays_dense_with_a_warning_and_density_one():
    model = _mlp()
    with pytest.warns(UserWarning, match=r"swat: layer '2' stays dense \(density 1 in the report\): "
                                         r"the engine reports that its module's forward is never called"):
        sp, _ = _flagged(model, ["2"])
    assert sp.algorithm.dense_layers == {"2": "the engine reports that its module's forward is never called"}
    assert "forward" not in model[2].__dict__ and isinstance(model[0].forward, SwatForward)
    model(torch.randn(4, 8))
    stats = {s.name: s for s in sp.report().layers}
    assert stats["2"].density == 1.0 and stats["2"].forward_flops == stats["2"].dense_forward_flops
    assert stats["0"].density == pytest.approx(0.3, abs=0.01)
    ref = _masked_copy(_mlp(), sp)  # what the report shows is what the forward computes
    x = torch.randn(5, 8)
    torch.testing.assert_close(model(x), ref(x))


def test_swat_m_budgets_leave_a_dense_layer_out():
    model = _mlp()
    with pytest.warns(UserWarning, match="swat: layer '2' stays dense"):
        sp, opt = _flagged(model, ["2"], variant="momentum")
    x = torch.randn(16, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    sp.epoch_end(0)
    states = sp.algorithm.states
    assert states["2"].weight_density == 1.0 and bool(sp.layers["2"].mask.all())
    swat = {name: layer for name, layer in sp.layers.items() if name != "2"}
    assert [states[n].weight_density for n in swat] != [layer.target_density for layer in swat.values()]
    budget = sum(layer.target_density * layer.capacity for layer in swat.values())
    given = sum(states[name].weight_density * layer.capacity for name, layer in swat.items())
    assert budget <= given <= budget + len(swat)  # SWAT-M rounds each layer's budget up


def test_no_replaceable_layer_is_refused_and_the_model_left_untouched():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match=r"^swat: no sparse layer can run SWAT \('0': .*'2': "):
        sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True), density=0.3,
                              plugins=[_EngineFlag("0", "2", "4")])
    assert all("forward" not in m.__dict__ for m in model)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
