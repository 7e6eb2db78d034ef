"""Every bad SWAT option raises sparsecore.ConfigurationError naming ``swat`` and the option."""

import re

import pytest
import sparsecore
import torch
from sparsecore_swat import SwatAlgorithm, TopKState, install
from torch import nn

BAD_ALGORITHM_OPTIONS = [
    ("variant", "random"),
    ("variant", None),
    ("variant", ["uniform"]),
    ("structure", "row"),
    ("structure", ""),
    ("activation_density", 0.0),
    ("activation_density", 1.5),
    ("activation_density", float("nan")),
    ("activation_density", "0.5"),
    ("activation_density", True),
    ("activation_density", [0.5]),
    ("period", 0),
    ("period", 1.5),
    ("period", True),
    ("period", "2"),
    ("period", float("inf")),
    ("sparsify_first_layer", "no"),
    ("sparsify_first_layer", 0),
    ("sparsify_last_layer", None),
    ("sparsify_last_layer", 1),
]


@pytest.mark.parametrize(("option", "value"), BAD_ALGORITHM_OPTIONS)
def test_bad_algorithm_option_raises_configuration_error_naming_it(option, value):
    with pytest.raises(sparsecore.ConfigurationError, match=rf"^swat: {option} must be .*, got {re.escape(repr(value))}$"):
        SwatAlgorithm(**{option: value})


@pytest.mark.parametrize(("option", "value"), [
    ("weight_density", 0.0), ("weight_density", "0.5"), ("activation_density", 2.0), ("period", 0),
    ("structure", "rows"), ("layer_kind", "rnn"),
])
def test_bad_layer_state_option_raises_configuration_error_naming_it(option, value):
    named = option.replace("weight_density", "weight density")
    with pytest.raises(sparsecore.ConfigurationError, match=rf"^swat: {named} must be"):
        TopKState(**{"weight_density": 0.5, option: value})
    if option != "layer_kind":
        with pytest.raises(sparsecore.ConfigurationError, match=rf"^swat: {named} must be"):
            install(nn.Linear(4, 4), **{"weight_density": 0.5, option: value})


def test_swat_m_density_budget_update_is_validated():
    state = TopKState(0.5)
    with pytest.raises(sparsecore.ConfigurationError, match=r"^swat: weight density must be in \(0, 1\]"):
        state.weight_density = 0.0
    assert state.weight_density == 0.5


def test_good_options_are_kept_as_given():
    algorithm = SwatAlgorithm(variant="erk", structure="channel", activation_density=0.25, period=2.0,
                              sparsify_first_layer=None, sparsify_last_layer=False)
    assert (algorithm.variant, algorithm.structure, algorithm.activation_density) == ("erk", "channel", 0.25)
    assert algorithm.period == 2 and isinstance(algorithm.period, int)
    assert algorithm.sparsify_first_layer is True and algorithm.sparsify_last_layer is False


def test_an_unsupported_layer_type_is_a_configuration_error_and_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(4, 8), nn.ConvTranspose1d(8, 8, 1), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(sparsecore.ConfigurationError, match=r"cannot run ConvTranspose1d sparsely.*\(layer '1'\)"):
        sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(sparsify_first_layer=True), density=0.5,
                              layer_types=[nn.Linear, nn.ConvTranspose1d])
    assert all("forward" not in m.__dict__ for m in model)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
