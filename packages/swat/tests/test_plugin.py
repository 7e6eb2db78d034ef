"""End to end through ``sparsecore.Sparsifier(model, opt, algorithm="swat", ...)``."""

import copy
import io
import math

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from sparsecore_swat import SwatAlgorithm, SwatForward, hard_prune, topk
from sparsecore_swat.plugin import sparsecore_register_algorithms
from torch import nn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def _train(model, opt, sparsifier, steps=3):
    for _ in range(steps):
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    sparsifier.epoch_end(0)


def _sparsifier(model, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(**options), density=0.2)
    return sp, opt


def test_registers_swat():
    seen = {}
    sparsecore_register_algorithms(lambda name, factory: seen.update({name: factory}))
    assert seen == {"swat": SwatAlgorithm}


@pytest.fixture
def autoload_on(monkeypatch):
    """Entry-point loading on for one test, whatever the environment says; the registry reloads as it was after."""
    monkeypatch.setenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", "0")
    sparsecore.registry.reset()
    yield
    monkeypatch.undo()
    sparsecore.registry.reset()


def test_registered_by_name_through_the_entry_point(autoload_on):
    assert "swat" in sparsecore.available_algorithms()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = sparsecore.Sparsifier(model, opt, algorithm="swat", density=0.2, variant="uniform", period=2)
    assert isinstance(sp.algorithm, SwatAlgorithm) and sp.algorithm.period == 2


def test_uniform_keeps_first_layer_dense_and_weights_dense():
    model = _model()
    sp, opt = _sparsifier(model)
    assert list(sp.layers) == ["3", "6"]                       # first conv is dense by default
    assert sp.policy == sparsecore.MaskingPolicy(False, False, False, False)
    assert all(isinstance(layer.module.forward, SwatForward) for layer in sp.layers.values())
    _train(model, opt, sp)
    # dense weights keep training: the weight tensor itself stays dense
    assert all(bool((layer.weight != 0).all()) for layer in sp.layers.values())
    # masks report the current top-K selection
    for layer in sp.layers.values():
        assert torch.equal(layer.mask, topk.topk_mask(layer.weight, 0.2))
        assert layer.density == pytest.approx(0.2, abs=0.01)


def test_batchnorm_and_biases_follow_the_dense_computation():
    model = _model()                                           # SWAT-U: the first conv, before BN, is dense
    dense_model = copy.deepcopy(model)
    sp, opt = _sparsifier(model)
    dense_opt = torch.optim.SGD(dense_model.parameters(), lr=0.05, momentum=0.9)
    bn = model[1]
    # A plain BatchNorm fed the same input and upstream gradient as the one in the SWAT model.
    replica = copy.deepcopy(bn)
    replica_opt = torch.optim.SGD(replica.parameters(), lr=0.05, momentum=0.9)
    seen: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, inputs, output):
            seen[name + ".input"] = inputs[0].detach().clone()
            output.register_hook(lambda g: seen.__setitem__(name + ".grad_output", g.detach().clone()))
        return hook

    for name, module in [("bn", bn)] + [(n, layer.module) for n, layer in sp.layers.items()]:
        module.register_forward_hook(capture(name))
    biases_before = {name: layer.module.bias.detach().clone() for name, layer in sp.layers.items()}
    for step in range(4):
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
        for m, o in ((model, opt), (dense_model, dense_opt)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
        if step == 0:
            # same init, same data, BN's input is still the dense one: identical running statistics
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                assert torch.equal(getattr(bn, buffer), getattr(dense_model[1], buffer))
        replica_opt.zero_grad()
        replica(seen["bn.input"]).backward(seen["bn.grad_output"])
        replica_opt.step()
        # BN: dense gradients, dense update, dense statistics; nothing masked
        assert torch.equal(bn.weight.grad, replica.weight.grad) and torch.equal(bn.bias.grad, replica.bias.grad)
        for key, value in replica.state_dict().items():
            assert torch.equal(bn.state_dict()[key], value), key
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            assert int((tensor == 0).sum()) == 0
        # biases of the SWAT layers: db = sum(dy), no entry masked
        for name, layer in sp.layers.items():
            dy = seen[name + ".grad_output"]
            reduce = (0,) if layer.kind == "linear" else (0,) + tuple(range(2, dy.dim()))
            assert torch.allclose(layer.module.bias.grad, dy.sum(dim=reduce))
    for name, layer in sp.layers.items():
        bias = layer.module.bias.detach()
        assert int((bias == 0).sum()) == 0
        assert int((bias != biases_before[name]).sum()) == bias.numel()   # every bias entry trained


@pytest.mark.parametrize("variant, sparse_first, layers", [
    ("uniform", False, ["3", "6"]),                            # SWAT-U: first conv dense
    ("erk", True, ["0", "3", "6"]),                            # SWAT-ERK and SWAT-M: first conv sparse
    ("momentum", True, ["0", "3", "6"]),
])
def test_first_layer_default_per_variant(variant, sparse_first, layers):
    assert SwatAlgorithm(variant=variant).sparsify_first_layer is sparse_first
    sp, _ = _sparsifier(_model(), variant=variant)
    assert list(sp.layers) == layers


def test_first_and_last_layer_options():
    sp, _ = _sparsifier(_model(), sparsify_first_layer=True, sparsify_last_layer=False)
    assert list(sp.layers) == ["0", "3"]


class _TopologyRecorder:
    """A plugin that records every ``on_topology_update`` report."""

    def __init__(self) -> None:
        self.reports = []

    @sparsecore.hookimpl
    def on_topology_update(self, report) -> None:
        """Record the report."""
        self.reports.append(report)


def test_epoch_end_mask_refresh_is_not_a_recorded_topology_update():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    recorder = _TopologyRecorder()
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(), density=0.2, plugins=[recorder])
    initial = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    for epoch in range(3):
        for _ in range(3):
            x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sp.epoch_end(epoch)
        # the refresh happened: masks describe the current top-K selection ...
        for layer in sp.layers.values():
            assert torch.equal(layer.mask, topk.topk_mask(layer.weight, 0.2))
        # ... but nothing was recorded and no topology-update hook fired
        assert sp.history == [] and recorder.reports == []
    assert any(not torch.equal(layer.mask, initial[name]) for name, layer in sp.layers.items())


def test_erk_uses_the_engines_erk_distribution_and_sparsifies_the_first_layer():
    sp, _ = _sparsifier(_model(), variant="erk")
    assert sp.distribution == "erk" and "0" in sp.layers
    densities = {n: s.weight_density for n, s in sp.algorithm.states.items()}
    assert densities == {n: layer.target_density for n, layer in sp.layers.items()}
    assert len(set(densities.values())) == 3


def test_momentum_recomputes_layer_budgets_after_every_step():
    model = _model()
    # First conv dense here: the remaining layers (1,152 and 2,560 weights) can never overflow a budget of
    # 0.2 * 3,712 = 742.4 weights, so the expected counts below need no overflow loop.
    sp, opt = _sparsifier(model, variant="momentum", sparsify_first_layer=False)
    states = sp.algorithm.states
    sizes = {n: layer.capacity for n, layer in sp.layers.items()}
    target = 0.2 * sum(sizes.values())
    per_step = []
    for step in range(3):
        density_before = {n: s.weight_density for n, s in states.items()}
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        # independently: mean |momentum| over the weights the step's selection held (|W| >= k-th largest, at
        # the density in force before this step), normalised into shares of the overall budget
        means = {}
        for name, layer in sp.layers.items():
            magnitude = layer.weight.detach().abs().flatten()
            k = math.ceil(round(density_before[name] * sizes[name], 9))
            selected = magnitude >= magnitude.sort(descending=True).values[k - 1]
            means[name] = float(opt.state[layer.weight]["momentum_buffer"].abs().flatten()[selected].mean())
        shares = {name: m / sum(means.values()) for name, m in means.items()}
        counts = {name: math.ceil(shares[name] * target) for name in sizes}
        assert all(counts[name] < 0.99 * sizes[name] for name in sizes)   # no overflow, as argued above
        for name, state in states.items():
            assert state.weight_density == pytest.approx(counts[name] / sizes[name], rel=1e-12)
            assert topk.keep_count(sizes[name], state.weight_density) == counts[name]
            assert abs(counts[name] - shares[name] * target) < 1         # proportional to its share
        assert target <= sum(counts.values()) < target + len(sizes)      # overall budget, within a weight per layer
        per_step.append({n: s.weight_density for n, s in states.items()})
    # recomputed after each step: new momenta give new densities every time
    assert per_step[0] != per_step[1] != per_step[2]
    assert per_step[0] != {n: 0.2 for n in sizes}


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.0, weight_decay=1e-4),
    lambda p: torch.optim.RMSprop(p, lr=0.01),
], ids=["sgd-default", "sgd-momentum-0", "rmsprop"])
def test_momentum_variant_refuses_an_optimizer_with_zero_momentum_at_setup(make_opt):
    model = _model()
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"swat: variant='momentum'.*momentum=0.*SGD with momentum > 0 or an Adam-family"):
        sparsecore.Sparsifier(model, make_opt(model.parameters()), algorithm=SwatAlgorithm(variant="momentum"),
                              density=0.2)
    # refused before the engine touched the model
    assert not any(isinstance(m.__dict__.get("forward"), SwatForward) for m in model.modules())


def test_momentum_variant_refuses_an_optimizer_without_momentum_at_its_first_step():
    model = _model()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)       # no momentum option, no momentum state
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(variant="momentum"), density=0.2)
    F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 10, (4,))).backward()
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"swat: variant='momentum'.*after optimizer step 1 no sparse layer has a momentum "
                             r"buffer \(Adagrad keeps none\).*SGD with momentum > 0 or an Adam-family"):
        opt.step()
    assert sp.step == 1


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-3),
], ids=["sgd-momentum", "adam", "adamw"])
def test_momentum_variant_runs_with_momentum_optimizers(make_opt):
    model = _model()
    opt = make_opt(model.parameters())
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(variant="momentum"), density=0.2)
    _train(model, opt, sp, steps=2)
    assert any(s.weight_density != 0.2 for s in sp.algorithm.states.values())


def test_zero_momentum_is_fine_for_the_other_variants():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(variant="erk"), density=0.2)
    _train(model, opt, sp, steps=2)
    assert sp.step == 2


def test_structured_channel_through_the_engine():
    model = _model()
    sp, opt = _sparsifier(model, structure="channel", sparsify_last_layer=False)
    _train(model, opt, sp)
    mask = sp.layers["3"].mask.flatten(2)
    assert bool((mask.all(-1) | ~mask.any(-1)).all())


def test_state_dict_round_trips_with_weights_only():
    model = _model()
    sp, opt = _sparsifier(model, period=3)
    _train(model, opt, sp, steps=2)
    buffer = io.BytesIO()
    torch.save(sp.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model2 = _model()
    sp2, _ = _sparsifier(model2, period=3)
    sp2.load_state_dict(state)
    for name, s in sp.algorithm.states.items():
        s2 = sp2.algorithm.states[name]
        assert s2.calls == s.calls == 2
        assert torch.equal(s2.weight_threshold, s.weight_threshold)


def test_hard_prune_matches_the_inference_forward():
    model = _model()
    sp, opt = _sparsifier(model)
    _train(model, opt, sp)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    masks = hard_prune(sp)
    sp.remove()
    assert not any(isinstance(layer.module.__dict__.get("forward"), SwatForward) for layer in sp.layers.values())
    for name, layer in sp.layers.items():
        assert torch.equal(layer.weight != 0, masks[name])
        assert layer.density == pytest.approx(0.2, abs=0.01)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_hard_prune_without_swat_layers_names_the_problem():
    with pytest.raises(ValueError, match="no layer runs SWAT"):
        hard_prune(nn.Linear(2, 2))


def test_report_counts_swat_training_flops():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(activation_density=0.5), density=0.25)
    model(torch.randn(2, 1, 8, 8))
    stats = {s.name: s for s in sp.report().layers}
    # conv "3": 16x8x3x3 = 1,152 weights, 4x4 = 16 output positions; linear "6": 2,560 weights, 1 position.
    conv, linear = stats["3"], stats["6"]
    assert conv.forward_flops == 2 * 288 * 16
    assert conv.backward_flops == 2 * 288 * 16 + 2 * 576 * 16
    assert linear.forward_flops == 2 * 640
    assert linear.backward_flops == 2 * 640 + 2 * 1280
    assert "0" not in stats  # SWAT-U keeps the first layer dense
