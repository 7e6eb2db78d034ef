"""The ``layer_floor`` option (a deviation, off by default): redistribution never starves a layer below a floor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparse_momentum import SparseMomentumAlgorithm
from sparse_momentum.redistribution import apply_layer_floor, apportion
from sm_helpers import active, build, chain

# The two hand-built layers of test_cycle: four active weights each (flat 0..3), shares 0.25 / 0.75 by momentum.
W0 = [0.1, -0.5, 0.3, 0.9, 0, 0, 0, 0, 0, 0]
W1 = [0.2, 0.4, -0.6, 0.8, 0, 0, 0, 0, 0, 0]
M0 = [1, -1, 1, 1, 0.1, 0.2, -5.0, 0.3, 0.4, 0.5]
M1 = [1.5, -6.5, 2, 2, 0.5, 6, 0.1, -7, 2, 8]


def two_layers(**options):
    return build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                 weights={"0": W0, "1": W1}, momenta={"0": M0, "1": M1}, **options)


def test_apportion_is_proportional_with_largest_remainders():
    assert apportion(5, {"a": 6, "b": 3, "c": 1}) == {"a": 3, "b": 2, "c": 0}  # exact 3, 1.5, 0.5: tie to b
    assert apportion(10, {"a": 6, "b": 3, "c": 1}) == {"a": 6, "b": 3, "c": 1}
    assert apportion(0, {"a": 6}) == {"a": 0}


def test_apportion_refuses_more_than_the_weights_hold():
    with pytest.raises(ValueError, match="cannot apportion 4 over weights summing to 3"):
        apportion(4, {"a": 2, "b": 1})


def test_floor_moves_regrowth_from_the_layers_that_can_spare_it():
    # "small" would end at 3 with floor 10: it asks 7; "big" can spare min(50, 100 - 20) = 50, "mid" min(5, 12 - 10).
    grow = apply_layer_floor({"small": 1, "mid": 5, "big": 50}, after={"small": 3, "mid": 12, "big": 100},
                             free={"small": 40, "mid": 40, "big": 400}, floors={"small": 10, "mid": 10, "big": 20})
    assert grow == {"small": 8, "mid": 5, "big": 43}  # 7 * 50/52 = 6.73 -> 7 from big (largest remainder), 0 from mid
    assert sum(grow.values()) == 56


def test_floor_gives_what_there_is_when_donors_cannot_cover_the_shortfall():
    grow = apply_layer_floor({"a": 0, "b": 0, "c": 3}, after={"a": 1, "b": 2, "c": 13},
                             free={"a": 9, "b": 9, "c": 9}, floors={"a": 5, "b": 5, "c": 10})
    # a needs 4, b needs 3; c spares 3 -> a gets 2 (exact 1.71), b gets 1 (exact 1.29).
    assert grow == {"a": 2, "b": 1, "c": 0}


def test_floor_is_limited_by_the_free_slots_and_leaves_layers_above_it_alone():
    assert apply_layer_floor({"a": 2, "b": 4}, after={"a": 3, "b": 9}, free={"a": 3, "b": 9},
                             floors={"a": 8, "b": 1}) == {"a": 3, "b": 3}  # a may add only 3 - 2 = 1
    assert apply_layer_floor({"a": 2, "b": 4}, after={"a": 8, "b": 9}, free={"a": 3, "b": 9},
                             floors={"a": 8, "b": 1}) == {"a": 2, "b": 4}


def test_layer_floor_in_a_cycle_keeps_the_starved_layer_at_its_floor():
    # Faithful: "0" (share 0.25) ends with 3 of its 4 initial weights, "1" with 5 (test_cycle).
    # layer_floor=1.0: "0" regrows 2 instead of 1 (flat 6 and, of the tied |momentum| 1, flat 0), "1" one less.
    sparsifier = two_layers(layer_floor=1.0)
    report = sparsifier.update_topology(0.5)
    assert active(sparsifier.layers["0"]) == [0, 1, 3, 6]
    assert active(sparsifier.layers["1"]) == [2, 3, 7, 9]
    assert {n: u.nnz for n, u in report.layers.items()} == {"0": 4, "1": 4}
    assert sparsifier.algorithm.adjustments == pytest.approx([0.0])


def test_layer_floor_below_what_redistribution_leaves_changes_nothing():
    floored, faithful = two_layers(layer_floor=0.5), two_layers()
    floored.update_topology(0.5)
    faithful.update_topology(0.5)
    for name in ("0", "1"):
        assert torch.equal(floored.layers[name].mask, faithful.layers[name].mask)


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.5", None])
def test_layer_floor_out_of_range_is_a_configuration_error(value):
    with pytest.raises(sparsecore.ConfigurationError, match=r"sparse-momentum: layer_floor must be a number in \[0, 1\]"):
        SparseMomentumAlgorithm(layer_floor=value)


def test_layer_floor_refuses_neuron_growth_and_block_sparse_runs():
    with pytest.raises(sparsecore.ConfigurationError, match="layer_floor works with growth='momentum' or 'random'"):
        SparseMomentumAlgorithm(layer_floor=0.5, growth="momentum_neuron")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(sparsecore.ConfigurationError, match="layer_floor counts single weights"):
        sparsecore.Sparsifier(model, optimizer, algorithm=SparseMomentumAlgorithm(layer_floor=0.5), density=0.25,
                              block=(2, 2), total_steps=10)


def test_layer_floor_is_off_by_default_and_shown():
    algorithm = SparseMomentumAlgorithm()
    assert algorithm.layer_floor == 0.0
    assert "layer_floor=0.0" in repr(algorithm)
