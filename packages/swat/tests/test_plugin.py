"""End to end through ``sparsecore.Sparsifier(model, opt, algorithm="swat", ...)``."""

import io

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


def test_registered_by_name_through_the_entry_point():
    if "swat" not in sparsecore.available_algorithms():
        pytest.skip("sparsecore-swat is not installed (entry points not loaded)")
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = sparsecore.Sparsifier(model, opt, algorithm="swat", density=0.2, variant="uniform", period=2)
    assert isinstance(sp.algorithm, SwatAlgorithm) and sp.algorithm.period == 2


def test_uniform_keeps_first_layer_dense_weights_dense_and_bn_untouched():
    model = _model()
    sp, opt = _sparsifier(model)
    assert list(sp.layers) == ["3", "6"]                       # first conv is dense by default
    assert sp.policy == sparsecore.MaskingPolicy(False, False, False, False)
    assert all(isinstance(layer.module.forward, SwatForward) for layer in sp.layers.values())
    bn_before = model[1].weight.detach().clone()
    _train(model, opt, sp)
    # dense weights keep training: the weight tensor itself stays dense
    assert all(bool((layer.weight != 0).all()) for layer in sp.layers.values())
    assert not torch.equal(model[1].weight, bn_before)         # BN trains normally
    # masks report the current top-K selection
    for layer in sp.layers.values():
        assert torch.equal(layer.mask, topk.topk_mask(layer.weight, 0.2))
        assert layer.density == pytest.approx(0.2, abs=0.01)


def test_first_and_last_layer_options():
    sp, _ = _sparsifier(_model(), sparsify_first_layer=True, sparsify_last_layer=False)
    assert list(sp.layers) == ["0", "3"]


def test_erk_uses_the_engines_erk_distribution_and_sparsifies_the_first_layer():
    sp, _ = _sparsifier(_model(), variant="erk")
    assert sp.distribution == "erk" and "0" in sp.layers
    densities = {n: s.weight_density for n, s in sp.algorithm.states.items()}
    assert densities == {n: layer.target_density for n, layer in sp.layers.items()}
    assert len(set(densities.values())) == 3


def test_momentum_recomputes_layer_budgets_after_every_step():
    model = _model()
    sp, opt = _sparsifier(model, variant="momentum")
    before = {n: s.weight_density for n, s in sp.algorithm.states.items()}
    _train(model, opt, sp, steps=2)
    after = {n: s.weight_density for n, s in sp.algorithm.states.items()}
    assert after != before
    sizes = {n: layer.capacity for n, layer in sp.layers.items()}
    kept = sum(after[n] * sizes[n] for n in sizes)
    assert kept == pytest.approx(0.2 * sum(sizes.values()), abs=len(sizes) + 1)


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


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="variant"):
        SwatAlgorithm(variant="random")
    with pytest.raises(ValueError, match="structure"):
        SwatAlgorithm(structure="row")
    with pytest.raises(ValueError, match="period"):
        SwatAlgorithm(period=0)
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
