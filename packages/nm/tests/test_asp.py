"""``asp``: dense training, one magnitude pruning to N:M at the right step, fine-tuning with fixed masks."""

from __future__ import annotations

import copy

import pytest
import torch
from nm_helpers import MODELS, batches, group_counts, reference_top_n, step

import sparsecore
from sparsecore_nm import AspAlgorithm


class WeightsBeforeAsp:
    """Records every sparse weight after each optimizer step, before ``asp``'s own ``on_step`` (plugins run first)."""

    name = "weights-before-asp"

    def __init__(self):
        self.weights = {}

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step):
        self.weights[step] = {name: layer.weight.detach().clone() for name, layer in sparsifier.layers.items()}


def build(kind="linear", pattern="2:4", total_steps=10, plugins=(), **options):
    factory, in_shape = MODELS[kind]
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="asp", pattern=pattern, total_steps=total_steps,
                                       seed=0, plugins=list(plugins), **options)
    return model, optimizer, sparsifier, in_shape


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize(("pattern", "dense_fraction", "prune_step"), [("2:4", 0.3, 3), ("1:4", 0.5, 5),
                                                                        ("3:8", 0.9, 9)])
def test_prunes_once_by_magnitude_after_the_right_step_then_keeps_the_masks(kind, pattern, dense_fraction,
                                                                            prune_step):
    n, m = map(int, pattern.split(":"))
    recorder = WeightsBeforeAsp()
    model, optimizer, sparsifier, in_shape = build(kind, pattern, plugins=[recorder], dense_fraction=dense_fraction)
    assert sparsifier.algorithm.prune_step == prune_step
    masks_at = {}
    for batch in batches(in_shape, 10):
        step(model, optimizer, batch)
        masks_at[sparsifier.step] = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        phase = sparsifier.algorithm_metrics()["phase"]
        assert phase == ("dense" if sparsifier.step < prune_step else "sparse")
    for s in range(1, prune_step):
        assert all(mask.all() for mask in masks_at[s].values()), s
    for name, layer in sparsifier.layers.items():
        assert torch.equal(masks_at[prune_step][name], reference_top_n(recorder.weights[prune_step][name], n, m))
        for s in range(prune_step, 11):
            assert torch.equal(masks_at[s][name], masks_at[prune_step][name])  # fixed from then on
        assert (group_counts(layer.mask, m) == n).all()  # exactly N per group at the end
        assert not layer.weight.detach()[~layer.mask].any()
        assert not sparsifier.momentum(layer)[~layer.mask].any()
    assert [(r.reason, r.step) for r in sparsifier.history] == [("set_masks", prune_step)]
    assert sparsifier.report().density == pytest.approx(n / m)


def test_dense_fraction_zero_prunes_the_initial_weights_at_set_up():
    factory, in_shape = MODELS["conv"]
    initial = {name: module.weight.detach().clone() for name, module in factory().named_modules()
               if hasattr(module, "weight") and module.weight is not None}
    model, optimizer, sparsifier, _ = build("conv", dense_fraction=0.0, total_steps=None)
    for name, layer in sparsifier.layers.items():
        assert torch.equal(layer.mask, reference_top_n(initial[name], 2, 4))
        assert torch.equal(layer.weight.detach(), initial[name] * layer.mask)
    assert sparsifier.algorithm_metrics() == {"phase": "sparse"}


def test_without_total_steps_the_pruning_step_is_unknown():
    with pytest.raises(sparsecore.ConfigurationError, match=r"asp: dense_fraction=0.5 needs total_steps"):
        build(total_steps=None)


def test_a_pruning_step_outside_the_run_is_refused():
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"asp: dense_fraction=0.1 of total_steps=4 prunes after step 0, which must be between "
                             r"1 and 3"):
        build(total_steps=4, dense_fraction=0.1)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_a_bad_dense_fraction_is_refused_by_name(value):
    with pytest.raises(sparsecore.ConfigurationError, match=r"asp: dense_fraction must be"):
        AspAlgorithm(dense_fraction=value)


def test_resuming_after_the_pruning_keeps_the_sparse_phase():
    model, optimizer, sparsifier, in_shape = build(dense_fraction=0.3)
    data = batches(in_shape, 8)
    for batch in data[:5]:
        step(model, optimizer, batch)
    saved = copy.deepcopy((sparsifier.state_dict(), model.state_dict(), optimizer.state_dict()))
    for batch in data[5:]:
        step(model, optimizer, batch)

    model2, optimizer2, sparsifier2, _ = build(dense_fraction=0.3)
    model2.load_state_dict(saved[1])
    optimizer2.load_state_dict(saved[2])
    sparsifier2.load_state_dict(saved[0])
    assert sparsifier2.algorithm.pruned and sparsifier2.algorithm_metrics() == {"phase": "sparse"}
    for batch in data[5:]:
        step(model2, optimizer2, batch)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in model2.state_dict().items())
    assert sparsifier2.history == []  # no second pruning
