"""Sparse momentum inside a training loop: schedule, masking policy, name lookup, checkpoints."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sparsecore
from sm_helpers import active, chain
from sparse_momentum import SparseMomentum


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make(algorithm="sparse-momentum", steps_per_epoch=3, epochs=3, density=0.25, seed=0, **options):
    model = mlp(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, density=density,
                                 total_steps=steps_per_epoch * epochs, seed=seed, **options)


def train(sparsifier, steps_per_epoch=3, epochs=3, seed=0, check=None):
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            x = torch.randn(8, 12, generator=gen)
            y = torch.randint(0, 3, (8,), generator=gen)
            sparsifier.optimizer.zero_grad()
            F.cross_entropy(sparsifier.model(x), y).backward()
            sparsifier.optimizer.step()
            if check is not None:
                check(sparsifier)
        sparsifier.epoch_end(epoch)


def test_reachable_by_name_with_options():
    assert "sparse-momentum" in sparsecore.available_algorithms()
    sparsifier = make(prune_rate=0.3, redistribution="none")
    assert isinstance(sparsifier.algorithm, SparseMomentum)
    assert sparsifier.algorithm_name == "sparse-momentum"
    assert (sparsifier.algorithm.prune_rate, sparsifier.algorithm.redistribution) == (0.3, "none")
    assert sparsifier.policy == sparsecore.MaskingPolicy(mask_weights=True, mask_gradients=False,
                                                         mask_optimizer_state=False, reset_grown_state=False)


def test_redistribution_none_as_the_command_line_writes_it():
    from sparsecore.train import parse_options

    options = parse_options(["redistribution=none"])  # the harness reads "none" as None
    assert options == {"redistribution": None}
    sparsifier = make(**options)
    assert sparsifier.algorithm.redistribution == "none"


def test_cosine_prune_rate_with_non_default_eta_min():
    algo = make(steps_per_epoch=25, epochs=4, eta_min=0.1).algorithm  # T_max = 100
    assert algo.rate(0) == 0.5
    assert algo.rate(25) == pytest.approx(0.1 + 0.4 * (1 + math.sqrt(0.5)) / 2, abs=1e-15)
    assert algo.rate(50) == pytest.approx(0.3, abs=1e-15)
    assert algo.rate(75) == pytest.approx(0.1 + 0.4 * (1 - math.sqrt(0.5)) / 2, abs=1e-15)
    assert algo.rate(100) == pytest.approx(0.1, abs=1e-15)
    assert algo.rate(150) == pytest.approx(0.1, abs=1e-15)


def test_linear_decay_goes_to_eta_min_and_to_zero_like_the_reference_with_eta_min_0():
    algo = make(steps_per_epoch=25, epochs=4, decay="linear", eta_min=0.1).algorithm
    assert [algo.rate(t) for t in (0, 25, 50, 100)] == pytest.approx([0.5, 0.4, 0.3, 0.1], abs=1e-15)
    # The reference's LinearDecay(prune_rate, T_max) subtracts prune_rate / T_max per step: 0 at T_max.
    algo = make(steps_per_epoch=25, epochs=4, decay="linear", eta_min=0.0).algorithm
    assert [algo.rate(t) for t in (0, 25, 50, 100)] == pytest.approx([0.5, 0.375, 0.25, 0.0], abs=1e-15)


def test_cosine_prune_rate_values():
    algo = make(steps_per_epoch=25, epochs=4).algorithm  # T_max = 100
    assert algo.rate(0) == 0.5
    assert algo.rate(50) == pytest.approx(0.2525, abs=1e-15)
    assert algo.rate(25) == pytest.approx(0.005 + 0.495 * (1 + math.sqrt(0.5)) / 2, abs=1e-15)
    assert algo.rate(100) == pytest.approx(0.005, abs=1e-15)


def test_updates_after_every_epoch_but_the_last_with_scheduled_rate():
    sparsifier = make(steps_per_epoch=3, epochs=3)
    train(sparsifier, 3, 3)
    updates = [r for r in sparsifier.history if r.reason == "update"]
    assert [(r.step, r.epoch) for r in updates] == [(3, 0), (6, 1)]
    assert [r.rate for r in updates] == [sparsifier.algorithm.rate(3), sparsifier.algorithm.rate(6)]
    assert updates[0].rate == pytest.approx(0.005 + 0.495 * (1 + math.cos(math.pi / 3)) / 2)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_no_update_after_final_epoch_of_two(decay):
    sparsifier = make(steps_per_epoch=4, epochs=2, decay=decay)
    train(sparsifier, 4, 2)
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [4]


def test_update_every_k_steps_none_at_the_final_step():
    # total_steps = 8, k = 4: step 4 updates, step 8 (the run's last) does not; none at epoch ends either.
    sparsifier = make(steps_per_epoch=4, epochs=2, update_every=4)
    train(sparsifier, 4, 2)
    assert sparsifier.step == 8
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [4]


def test_update_every_k_steps():
    sparsifier = make(steps_per_epoch=3, epochs=3, update_every=4)
    train(sparsifier, 3, 3)
    # steps 4 and 8 of 9; none at epoch ends
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [4, 8]


def test_weights_masked_but_gradients_and_momentum_dense():
    seen = {"grad": 0, "momentum": 0}

    def check(sparsifier):
        for layer in sparsifier.layers.values():
            assert bool((layer.weight.detach()[~layer.mask] == 0).all())
            seen["grad"] += int((layer.weight.grad[~layer.mask] != 0).sum())
            seen["momentum"] += int((sparsifier.momentum(layer)[~layer.mask] != 0).sum())

    sparsifier = make()
    train(sparsifier, check=check)
    assert seen["grad"] > 0 and seen["momentum"] > 0


def test_biases_never_masked():
    sparsifier = make()
    train(sparsifier)
    assert list(sparsifier.layers) == ["0", "2", "4"]
    for module in sparsifier.model:
        if isinstance(module, nn.Linear):
            assert bool((module.bias.detach() != 0).all())


def test_total_stays_at_baseline_during_training():
    sparsifier = make(steps_per_epoch=2, epochs=8)
    baseline = sparsifier.algorithm.baseline_nonzero
    assert baseline == 0.25 * (12 * 16 + 16 * 8 + 8 * 3)
    train(sparsifier, 2, 8)
    updates = [r for r in sparsifier.history if r.reason == "update"]
    assert len(updates) == 7
    for report in updates:
        assert abs(sum(u.nnz for u in report.layers.values()) - baseline) <= len(report.layers)


def test_checkpoint_round_trip_restores_plugin_state():
    sparsifier = make(steps_per_epoch=3, epochs=4)
    train(sparsifier, 3, 2)
    sparsifier.algorithm.adjusted_growth = 1.25  # a non-trivial drift state
    sparsifier.algorithm.adjustments.append(-2.0)
    buffer = io.BytesIO()
    torch.save(sparsifier.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["plugins"]["sparse-momentum"]["adjusted_growth"] == 1.25

    restored = make(steps_per_epoch=3, epochs=4, seed=1)
    restored.load_state_dict(state)
    assert restored.algorithm.state_dict() == sparsifier.algorithm.state_dict()
    for name, layer in restored.layers.items():
        assert torch.equal(layer.mask, sparsifier.layers[name].mask)
    assert restored.step == 6


def test_bernoulli_init_matches_reference_draw():
    sparsifier = make(density=0.25, seed=7, init="bernoulli")
    gen = torch.Generator().manual_seed(7)
    for layer in sparsifier.layers.values():
        expected = torch.rand(layer.shape, generator=gen) < 0.25
        assert torch.equal(layer.mask, expected)


def test_exact_init_is_the_default():
    sparsifier = make(density=0.25)
    assert [layer.nnz for layer in sparsifier.layers.values()] == [48, 32, 6]


@pytest.mark.parametrize("options, match", [
    ({"redistribution": "variance"}, "redistribution"),
    ({"growth": "global_momentum"}, "growth"),
    ({"prune": "SET"}, "prune"),
    ({"init": "linear"}, "init"),
    ({"prune_rate": 0.0}, "prune_rate"),
    ({"update_every": 0}, "update_every"),
])
def test_bad_options(options, match):
    with pytest.raises(sparsecore.ConfigurationError, match=match):
        make(**options)


def test_optimizer_without_momentum_is_rejected():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match="momentum 0"):
        sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.5, total_steps=10)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_total_steps_is_required_whatever_the_decay(decay):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(sparsecore.ConfigurationError) as caught:
        sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.5, decay=decay)
    assert str(caught.value) == (
        "sparse-momentum needs total_steps (steps_per_epoch * epochs): it skips the topology update after the "
        "final epoch, which it can only recognise from total_steps, and its prune-rate schedule runs over "
        "total_steps; pass total_steps= to the Sparsifier")


def test_plugin_object_reused_starts_with_fresh_drift_state():
    algo = SparseMomentum()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = sparsecore.Sparsifier(model, optimizer, algorithm=algo, density=0.5, total_steps=10)
    algo.adjusted_growth, algo.adjustments, algo.last_update_step = 3.0, [3.0], 4
    first.remove()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsecore.Sparsifier(model, optimizer, algorithm=algo, density=0.25, total_steps=10)
    assert algo.state_dict() == {"baseline_nonzero": 86.0, "adjusted_growth": 0.0, "adjustments": [],
                                 "last_update_step": None}


def test_adam_training_loop_grows_at_largest_normalised_momentum():
    # One Linear(5, 2) layer, active flat 0..4 with weights 1..5, trained two Adam steps on the loss
    # sum(W * G_t), so the gradient is G_t everywhere (inactive weights included). Then the step-2 update
    # (update_every=2, constant rate 0.4) prunes ceil(0.4 * 5) = 2 (flat 0, 1) and regrows 2.
    # exp_avg = 0.09 g1 + 0.1 g2, exp_avg_sq = 0.000999 g1^2 + 0.001 g2^2; growth scores
    # |exp_avg| / (sqrt(exp_avg_sq) + 1e-8) at the inactive weights:
    #   flat 5: g = (10, -5) -> 0.40 / 0.353 = 1.13      flat 6: g = (1, 1) -> 0.19 / 0.0447 = 4.25
    #   flat 7: g = (2, 1)   -> 0.28 / 0.0707 = 3.96     flat 8: g = (1, 2) -> 0.29 / 0.0707 = 4.10
    #   flat 9: g = 0        -> 0                         flat 0, 1 (pruned): g = (1, -1) -> 0.22
    # -> grows flat 6 and 8. By |exp_avg| alone it would grow 5 (0.40) and 8 (0.29).
    model = chain((5, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.5, total_steps=4,
                                       seed=0, update_every=2, decay="constant", prune_rate=0.4)
    layer = sparsifier.layers["0"]
    sparsifier.set_masks({"0": torch.tensor([True] * 5 + [False] * 5).view(2, 5)})
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2, 3, 4, 5, 0, 0, 0, 0, 0]).view(2, 5))
    gradients = [[1, 1, 1, 1, 1, 10, 1, 2, 1, 0], [-1, -1, -1, -1, -1, -5, 1, 1, 2, 0]]
    for gradient in gradients:
        optimizer.zero_grad()
        (layer.weight * torch.tensor(gradient, dtype=torch.float32).view(2, 5)).sum().backward()
        optimizer.step()
    updates = [r for r in sparsifier.history if r.reason == "update"]
    assert [r.step for r in updates] == [2]
    assert active(layer) == [2, 3, 4, 6, 8]
    # the grown weights start at 0; the kept ones moved by Adam's two steps of lr 0.01 each
    assert layer.weight.detach().reshape(-1).tolist() == pytest.approx([0, 0, 2.99, 3.99, 4.99, 0, 0, 0, 0, 0],
                                                                       abs=0.01)
