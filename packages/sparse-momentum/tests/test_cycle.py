"""One prune -> redistribute -> grow cycle on hand-built layers with hand-set weights and momentum."""

from __future__ import annotations

import math

import pytest
import torch

from sm_helpers import active, build, chain

# Two 10-weight layers ("0": Linear(5, 2), "1": Linear(2, 5)), four active weights each (flat 0..3).
W0 = [0.1, -0.5, 0.3, 0.9, 0, 0, 0, 0, 0, 0]
W1 = [0.2, 0.4, -0.6, 0.8, 0, 0, 0, 0, 0, 0]
# Mean |momentum| over active weights: 1 in layer "0", 3 in layer "1" -> shares 0.25 / 0.75.
M0 = [1, -1, 1, 1, 0.1, 0.2, -5.0, 0.3, 0.4, 0.5]
M1 = [1.5, -6.5, 2, 2, 0.5, 6, 0.1, -7, 2, 8]


def two_layers(**options):
    return build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                 weights={"0": W0, "1": W1}, momenta={"0": M0, "1": M1}, **options)


def test_prune_redistribute_grow_exact():
    sparsifier = two_layers()
    report = sparsifier.update_topology(0.5)
    l0, l1 = sparsifier.layers["0"], sparsifier.layers["1"]
    # prune ceil(0.5 * 4) = 2 smallest |w| per layer: "0" loses 0 and 2, "1" loses 0 and 1;
    # regrowth ceil(0.25 * 4) = 1 in "0", ceil(0.75 * 4) = 3 in "1";
    # growth at the largest |momentum| among inactive weights: "0" -> 6; "1" -> 9, 7, 1.
    assert active(l0) == [1, 3, 6]
    assert active(l1) == [1, 2, 3, 7, 9]
    assert sparsifier.nnz == 8  # the baseline 0.4 * 20
    assert {n: (u.pruned, u.grown, u.nnz) for n, u in report.layers.items()} == {"0": (2, 1, 3), "1": (1, 2, 5)}


def test_grown_weights_start_at_zero_and_regrown_pruned_weight_keeps_value():
    sparsifier = two_layers()
    sparsifier.update_topology(0.5)
    w0 = sparsifier.layers["0"].weight.detach().reshape(-1)
    w1 = sparsifier.layers["1"].weight.detach().reshape(-1)
    assert w0.tolist() == pytest.approx([0, -0.5, 0, 0.9, 0, 0, 0, 0, 0, 0])
    # flat 1 of layer "1" was pruned and regrown in the same cycle: it keeps 0.4 (the reference's quirk).
    assert w1.tolist() == pytest.approx([0, 0.4, -0.6, 0.8, 0, 0, 0, 0, 0, 0])


def test_momentum_is_not_reset_for_grown_or_pruned_weights():
    sparsifier = two_layers()
    sparsifier.update_topology(0.5)
    buf = sparsifier.optimizer.state[sparsifier.layers["1"].weight]["momentum_buffer"].reshape(-1)
    assert buf.tolist() == pytest.approx(M1)


def test_drift_correction_zero_when_total_is_kept():
    sparsifier = two_layers()
    sparsifier.update_topology(0.5)
    algo = sparsifier.algorithm
    assert algo.baseline_nonzero == pytest.approx(8.0)
    assert algo.adjustments == pytest.approx([0.0])
    assert algo.adjusted_growth == pytest.approx(0.0)


def test_larger_mean_momentum_gets_more_regrowth():
    # Same weights, momenta swapped between the layers: the regrowth counts swap (3 in "0", 1 in "1").
    sparsifier = build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                       weights={"0": W0, "1": W1}, momenta={"0": M1, "1": M0})
    report = sparsifier.update_topology(0.5)
    assert report.layers["0"].nnz == 2 + 3
    assert report.layers["1"].nnz == 2 + 1


def test_dense_growing_layer_prune_cap_and_growth_cap():
    # "0": 9 of 10 active (10 % zeros) with share 0.9 > 1/2 -> prune rate capped at 0.1 -> removes 1, not 5.
    # "1": 1 of 10 active, removes ceil(0.5) = 1. Regrowth: "0" asks ceil(0.9 * 2) = 2 = all its free slots,
    # capped at 0.99 * 2 = 1.98 -> grows 1; "1" gets ceil(0.1 * 2) = 1 plus the spread residual (< 1) -> 1.
    w0 = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 0.05, 0]
    w1 = [0.3] + [0] * 9
    m0 = [9] * 9 + [4.0]
    m1 = [1] + [0, 0.2, 0, 0, 0, 0, 0, 0.7, 0]
    sparsifier = build(chain((5, 2), (2, 5)), density=0.5, masks={"0": range(9), "1": [0]},
                       weights={"0": w0, "1": w1}, momenta={"0": m0, "1": m1})
    report = sparsifier.update_topology(0.5)
    assert report.layers["0"].nnz == 9 and report.layers["1"].nnz == 1
    l0, l1 = sparsifier.layers["0"], sparsifier.layers["1"]
    # "0" pruned flat 8 (|w| 0.05) and grew flat 8 back (momentum 9 > 4): same mask, weight kept.
    assert active(l0) == list(range(9))
    # "1" pruned its only weight (flat 0) and grew the largest |momentum| among inactive: flat 0 (1.0).
    assert active(l1) == [0]


def test_growth_capped_at_099_of_free_slots_with_residual_loop():
    # "0": 95 of 100 active, share ~1, asked for 56 with a drift correction of 50: capped at 0.99 * 10 -> 9.
    # The excess spreads to "1" (2 of 10 active), which is capped at 0.99 * 9 -> 8: no layer becomes dense.
    w0 = [float(i + 1) for i in range(95)] + [0] * 5
    sparsifier = build(chain((10, 10), (2, 5)), density=0.5, masks={"0": range(95), "1": range(2)},
                       weights={"0": w0, "1": [0.1, 0.2] + [0] * 8},
                       momenta={"0": [10.0] * 100, "1": [0.001] * 10})
    sparsifier.algorithm.adjusted_growth = 50.0
    report = sparsifier.update_topology(0.5)
    # "0" prunes ceil(0.05 * 95) = 5 (dense growing layer: rate capped at its 5 % zeros), "1" prunes 1.
    assert report.layers["0"].nnz == 90 + 9
    assert report.layers["1"].nnz == 1 + 8


def test_empty_layer_has_share_zero_and_drift_is_corrected():
    # Layer "1" has no active weight (NaN mean momentum in the reference): it regrows nothing.
    w0 = [0.1, 0.2, 0.3, 0.4, 0.5, 0, 0, 0, 0, 0]
    m0 = [1, 1, 1, 1, 1, 0.9, 0.8, 0.7, 0.6, 0.5]
    sparsifier = build(chain((5, 2), (2, 5)), density=0.5, masks={"0": range(5), "1": []},
                       weights={"0": w0, "1": [0] * 10}, momenta={"0": m0, "1": [3.0] * 10})
    report = sparsifier.update_topology(0.5)
    # "0" removes ceil(2.5) = 3 (flat 0, 1, 2) and regrows ceil(1.0 * 3) = 3 by momentum: flat 0, 1, 2 again.
    assert report.layers["0"].nnz == 5 and report.layers["1"].nnz == 0
    assert active(sparsifier.layers["0"]) == [0, 1, 2, 3, 4]
    algo = sparsifier.algorithm
    # baseline 10, total 5: adjustments [5], adjusted_growth = 0.25 * 0 + 0.75 * 5 + mean([5]) = 8.75.
    assert algo.adjustments == [5.0]
    assert algo.adjusted_growth == 8.75
    # Next cycle: "0" removes ceil(0.5 * 5) = 3 and asks ceil(1.0 * (3 + 8.75)) = 12, capped at 0.99 * 8;
    # the residual 4.08 is spread evenly and ends in "1" (the only uncapped layer) -> "1" grows 4.
    report = sparsifier.update_topology(0.5)
    assert report.layers["0"].nnz == 2 + 7
    assert report.layers["1"].nnz == 4
    assert active(sparsifier.layers["1"]) == [0, 1, 2, 3]
    assert algo.adjustments == [5.0, -3.0]
    assert algo.adjusted_growth == pytest.approx(0.25 * 8.75 + 0.75 * -3.0 + 1.0)


def test_adam_uses_normalised_momentum():
    model = chain((5, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = build(model, density=0.5, masks={"0": range(5)}, weights={"0": [1, 2, 3, 4, 5, 0, 0, 0, 0, 0]},
                       momenta={"0": None}, optimizer=optimizer)
    weight = sparsifier.layers["0"].weight
    # exp_avg is largest at flat 5, but exp_avg / (sqrt(exp_avg_sq) + 1e-8) is largest at 8 and 9.
    exp_avg = torch.tensor([1, 1, 1, 1, 1, 0.9, 0.2, 0.3, 0.4, 0.5]).view(2, 5)
    exp_avg_sq = torch.tensor([1, 1, 1, 1, 1, 81, 1, 1, 0.01, 0.04]).view(2, 5)
    optimizer.state[weight].update({"step": torch.tensor(1.0), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq})
    sparsifier.update_topology(0.5)
    # removes flat 0, 1, 2 (smallest |w|); regrows 3 at the largest |m / sqrt(v)| among inactive:
    # 8 (4.0), 9 (2.5), then the pruned 0, 1, 2 (1.0, tie broken by position) -> 0.
    assert active(sparsifier.layers["0"]) == [0, 3, 4, 8, 9]


def test_random_growth_exact_count_on_inactive():
    sparsifier = two_layers(growth="random")
    before = {n: l.mask.clone() for n, l in sparsifier.layers.items()}
    report = sparsifier.update_topology(0.5)
    assert report.layers["0"].nnz == 3 and report.layers["1"].nnz == 5
    for name, layer in sparsifier.layers.items():
        grown = layer.mask & ~before[name]
        assert bool((layer.weight.detach()[grown] == 0).all())


def test_global_magnitude_prunes_smallest_over_all_layers():
    # baseline 8, rate 0.5 -> the 4 smallest |w| of all 8 active: 0.1, 0.2, 0.3 and 0.4.
    sparsifier = two_layers(prune="global_magnitude")
    sparsifier.update_topology(0.5)
    # Regrowth 1 in "0" (flat 6) and 3 in "1" (9, 7, 1), scaled by removed/expected = 4/4 = 1.
    assert active(sparsifier.layers["0"]) == [1, 3, 6]
    assert active(sparsifier.layers["1"]) == [1, 2, 3, 7, 9]


def test_global_magnitude_counts_follow_the_smallest_weights():
    w0 = [0.01, 0.02, 0.03, 0.9, 0, 0, 0, 0, 0, 0]
    sparsifier = build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                       weights={"0": w0, "1": W1}, momenta={"0": M0, "1": M1}, prune="global_magnitude")
    counts = sparsifier.algorithm.prune_counts(sparsifier, sparsifier.layers, 0.5)
    # The 4 smallest over both layers: 0.01, 0.02, 0.03 (layer "0") and 0.2 (layer "1").
    assert counts == {"0": 3, "1": 1}


def test_redistribution_none_shares_by_layer_size():
    # Layer "0" (10 weights) and "1" (20 weights): shares 1/3 and 2/3 whatever the momentum.
    model = chain((5, 2), (2, 10))
    w1 = [0.1 * (i + 1) for i in range(10)] + [0] * 10
    sparsifier = build(model, density=0.4, masks={"0": range(4), "1": range(10)},
                       weights={"0": W0, "1": w1}, momenta={"0": [100.0] * 10, "1": [0.5] * 20},
                       redistribution="none")
    report = sparsifier.update_topology(0.5)
    # removed 2 + 5 = 7; regrowth ceil(7 / 3) = 3 and ceil(14 / 3) = 5 (momentum would give "0" all 7).
    assert report.layers["0"].nnz == 2 + 3 and report.layers["1"].nnz == 5 + 5


def test_redistribution_magnitude_and_nonzero():
    sparsifier = two_layers(redistribution="magnitude")
    shares = sparsifier.algorithm._gather(sparsifier, sparsifier.layers, 0.5).shares
    # mean |w|: 0.45 and 0.5
    assert shares == pytest.approx({"0": 0.45 / 0.95, "1": 0.5 / 0.95})
    sparsifier = two_layers(redistribution="nonzeros")
    shares = sparsifier.algorithm._gather(sparsifier, sparsifier.layers, 0.5).shares
    assert shares == pytest.approx({"0": 0.5, "1": 0.5})


def test_momentum_neuron_growth_follows_reference():
    # One output neuron with 40 inputs, 20 active: removes 10, budget 10 -> grows the inactive weights
    # strictly above the 10th largest score (11): the 9 weights of momentum 12..20 (flat 31..39).
    model = chain((40, 1))
    w = [float(i + 1) for i in range(20)] + [0] * 20
    m = [0.5] * 20 + [float(i + 1) for i in range(20)]
    sparsifier = build(model, density=0.5, masks={"0": range(20)}, weights={"0": w}, momenta={"0": m},
                       growth="momentum_neuron")
    report = sparsifier.update_topology(0.5)
    assert report.layers["0"].nnz == 10 + 9
    assert active(sparsifier.layers["0"]) == list(range(10, 20)) + list(range(31, 40))
    # Drift: baseline 20 - 19 = 1 -> adjusted_growth = 0.75 + 1.
    assert sparsifier.algorithm.adjusted_growth == pytest.approx(1.75)
