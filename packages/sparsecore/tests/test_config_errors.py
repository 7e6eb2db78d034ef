"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore

from core_helpers import mlp


def build(model=None, **kw):
    model = model or mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, **kw)


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), "half"])
def test_density_outside_unit_interval(density):
    with pytest.raises(sparsecore.ConfigurationError, match="density"):
        build(algorithm="static", density=density)


def test_density_one_is_dense():
    sp = build(algorithm="static", density=1.0)
    assert all(layer.density == 1.0 for layer in sp.layers.values())


def test_unknown_algorithm_lists_available():
    with pytest.raises(sparsecore.UnknownAlgorithmError) as info:
        build(algorithm="rigl-typo")
    message = str(info.value)
    assert "rigl-typo" in message and "set" in message and "static" in message


def test_model_without_prunable_layers():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU())
    with pytest.raises(sparsecore.NoPrunableLayersError, match="no prunable layer"):
        build(model=model, algorithm="static")


def test_unknown_algorithm_option():
    with pytest.raises(sparsecore.ConfigurationError, match="does not accept option.*'prune_rat'"):
        build(algorithm="set", prune_rat=0.3)


def test_bad_option_value_names_the_option():
    with pytest.raises(sparsecore.ConfigurationError, match="prune_rate"):
        build(algorithm="set", prune_rate=2.0)


def test_decaying_schedule_without_total_steps():
    with pytest.raises(sparsecore.ConfigurationError, match="total_steps"):
        build(algorithm="set")


def test_unknown_distribution_and_bad_mapping():
    with pytest.raises(sparsecore.ConfigurationError, match="unknown distribution"):
        build(algorithm="static", distribution="gaussian")
    with pytest.raises(sparsecore.ConfigurationError, match="missing"):
        build(algorithm="static", distribution={"0": 0.5})
    with pytest.raises(sparsecore.ConfigurationError, match="layer '2'"):
        build(algorithm="static", distribution={"0": 0.5, "2": 1.2, "4": 0.5})


def test_pattern_matching_nothing():
    with pytest.raises(sparsecore.ConfigurationError, match="matches no prunable layer"):
        build(algorithm="static", exclude=["encoder.*"])


def test_weight_not_in_optimizer():
    model = mlp()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match="not in the optimizer"):
        sparsecore.Sparsifier(model, opt, algorithm="static", density=0.5)


def test_plugin_name_that_is_not_registered():
    with pytest.raises(sparsecore.UnknownAlgorithmError, match="unknown plugin 'nope'"):
        build(algorithm="static", plugins=["nope"])


def test_algorithm_name_passed_as_plugin_gets_a_hint():
    with pytest.raises(sparsecore.UnknownAlgorithmError, match="is an algorithm"):
        build(algorithm="static", plugins=["set"])


def test_update_rate_outside_range():
    sp = build(algorithm="static", density=0.5)
    with pytest.raises(sparsecore.ConfigurationError, match="prune rate"):
        sp.update_topology(1.5)


def test_total_steps_must_be_positive_int():
    with pytest.raises(sparsecore.ConfigurationError, match="total_steps"):
        build(algorithm="static", total_steps=0)
