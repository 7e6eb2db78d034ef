"""One prune -> redistribute -> grow cycle on hand-built layers with hand-set weights and momentum."""

from __future__ import annotations

import pytest
import sparsecore
import torch

from sm_helpers import SelectionCountRecorder, active, build, chain

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


def test_dense_growing_layer_prune_cap_changes_what_is_pruned_and_regrown():
    # "0": 9 of 10 active (10 % zeros), mean |momentum| 73/9 against 1 in "1" -> share 0.89 > 1/2, "growing":
    # prune rate capped at 0.1 -> removes ceil(0.9) = 1 (flat 8, |w| 0.05), not ceil(0.5 * 9) = 5.
    # Regrowth: "0" asks ceil(0.89 * 2) = 2 = all its free slots, capped at 0.99 * 2 = 1.98 -> grows 1, at the
    # largest |momentum| among inactive flat 8 (9) and 9 (20): flat 9. "1" removes and regrows its one weight.
    # Without the cap "0" would remove flat 8, 0, 1, 2, 3 and regrow 5 of 6 free slots, dropping flat 0
    # (the smallest |momentum|) and keeping flat 8 with its old value: active 1..9 instead of 0..7, 9.
    w0 = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 0.05, 0]
    w1 = [0.3] + [0] * 9
    m0 = [1] + [9] * 8 + [20.0]
    m1 = [1] + [0, 0.2, 0, 0, 0, 0, 0, 0.7, 0]
    recorder = SelectionCountRecorder()
    sparsifier = build(chain((5, 2), (2, 5)), density=0.5, masks={"0": range(9), "1": [0]},
                       weights={"0": w0, "1": w1}, momenta={"0": m0, "1": m1}, plugins=[recorder])
    assert sparsifier.algorithm._gather(sparsifier, sparsifier.layers, 0.5).prune_rates == {"0": 0.1, "1": 0.5}
    report = sparsifier.update_topology(0.5)
    assert recorder.pruned == {"0": 1, "1": 1}
    assert recorder.grown == {"0": 1, "1": 1}
    l0, l1 = sparsifier.layers["0"], sparsifier.layers["1"]
    assert active(l0) == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert l0.weight.detach().reshape(-1).tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 0, 0])
    assert report.layers["0"].pruned == 1 and report.layers["0"].grown == 1
    # "1" pruned its only weight (flat 0) and grew the largest |momentum| among inactive: flat 0 (1.0).
    assert active(l1) == [0]


def test_growth_capped_at_099_of_free_slots_with_residual_loop():
    # "0": 95 of 100 active, share ~1, asked for 56 with a drift correction of 50: capped at 0.99 * 10 -> 9.
    # The excess spreads to "1" (2 of 10 active), which is capped at 0.99 * 9 -> 8: no layer becomes dense.
    w0 = [float(i + 1) for i in range(95)] + [0] * 5
    recorder = SelectionCountRecorder()
    sparsifier = build(chain((10, 10), (2, 5)), density=0.5, masks={"0": range(95), "1": range(2)},
                       weights={"0": w0, "1": [0.1, 0.2] + [0] * 8},
                       momenta={"0": [10.0] * 95 + [20.0] * 5, "1": [0.001] * 10}, plugins=[recorder])
    sparsifier.algorithm.adjusted_growth = 50.0
    report = sparsifier.update_topology(0.5)
    # "0" prunes ceil(0.05 * 95) = 5 (dense growing layer: rate capped at its 5 % zeros), not ceil(0.5 * 95)
    # = 48; "1" prunes 1.
    assert recorder.pruned == {"0": 5, "1": 1}
    assert recorder.grown == {"0": 9, "1": 8}
    assert report.layers["0"].nnz == 90 + 9
    assert report.layers["1"].nnz == 1 + 8
    # "0" pruned flat 0..4 and regrew the never-active 95..99 (momentum 20), then 0..3 (momentum 10, by
    # position): flat 4 stays out. Uncapped it would prune 0..47, regrow 95..99 and 0..46, and leave out 47.
    assert active(sparsifier.layers["0"]) == [0, 1, 2, 3] + list(range(5, 100))


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


def test_random_growth_draws_from_the_sparsifier_generator_not_by_momentum():
    sparsifier = build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                       weights={"0": W0, "1": W1}, momenta={"0": M0, "1": M1}, growth="random", seed=1)
    # The same draws the plugin must make: one randperm over each layer's inactive weights after pruning,
    # from sparsifier.generator, layer "0" first.
    generator = torch.Generator()
    generator.set_state(sparsifier.generator.get_state())
    inactive0 = [0, 2, 4, 5, 6, 7, 8, 9]  # "0" pruned flat 0 and 2
    inactive1 = [0, 1, 4, 5, 6, 7, 8, 9]  # "1" pruned flat 0 and 1
    grown0 = sorted(inactive0[i] for i in torch.randperm(8, generator=generator)[:1].tolist())
    grown1 = sorted(inactive1[i] for i in torch.randperm(8, generator=generator)[:3].tolist())
    assert (grown0, grown1) == ([4], [0, 6, 8])

    report = sparsifier.update_topology(0.5)
    assert active(sparsifier.layers["0"]) == sorted([1, 3] + grown0)
    assert active(sparsifier.layers["1"]) == sorted([2, 3] + grown1)
    # momentum growth grows flat 6 in "0" and 9, 7, 1 in "1" (test_prune_redistribute_grow_exact): random
    # growth chose none of them.
    assert not set(grown0) & {6} and not set(grown1) & {1, 7, 9}
    # The plugin drew exactly these numbers from sparsifier.generator and nothing else.
    assert torch.equal(sparsifier.generator.get_state(), generator.get_state())
    assert report.layers["0"].nnz == 3 and report.layers["1"].nnz == 5
    # New weights start at 0; flat 0 of "1", pruned and regrown in the same cycle, keeps its value.
    assert sparsifier.layers["0"].weight.detach().reshape(-1).tolist() == pytest.approx([0, -0.5, 0, 0.9] + [0] * 6)
    assert sparsifier.layers["1"].weight.detach().reshape(-1).tolist() == pytest.approx([0.2, 0, -0.6, 0.8] + [0] * 6)


def test_global_magnitude_prunes_smallest_over_all_layers_and_rescales_regrowth():
    # baseline 0.35 * 20 = 7, rate 0.3 -> ceil(2.1) = 3 smallest |w| of all 7 active: 0.01, 0.02, 0.03, all in
    # layer "0" (per layer, ceil(0.3 * 4) = 2 from "0" and ceil(0.3 * 3) = 1 from "1" would be removed).
    w0 = [0.01, 0.02, 0.03, 0.9, 0, 0, 0, 0, 0, 0]
    w1 = [0.2, 0.4, 0.6, 0, 0, 0, 0, 0, 0, 0]
    m1 = [3, -3, 3, 0.5, 6, 0.1, -7, 2, 8, 0.3]
    recorder = SelectionCountRecorder()
    sparsifier = build(chain((5, 2), (2, 5)), density=0.35, masks={"0": range(4), "1": range(3)},
                       weights={"0": w0, "1": w1}, momenta={"0": M0, "1": m1}, prune="global_magnitude",
                       plugins=[recorder])
    assert sparsifier.algorithm.baseline_nonzero == pytest.approx(7.0)
    sparsifier.update_topology(0.3)
    assert recorder.pruned == {"0": 3, "1": 0}
    # Shares 0.25 / 0.75 (mean |momentum| 1 and 3): regrowth ceil(0.25 * 3) = 1 and ceil(0.75 * 3) = 3, scaled
    # by removed / expected = 3 / (7 * 0.3) = 1.43 and floored: 1 and 4 (unscaled "1" would grow 3).
    assert recorder.grown == {"0": 1, "1": 4}
    # "0" keeps flat 3 and grows flat 6 (|momentum| 5); "1" keeps 0, 1, 2 and grows 8, 6, 4, 7.
    assert active(sparsifier.layers["0"]) == [3, 6]
    assert active(sparsifier.layers["1"]) == [0, 1, 2, 4, 6, 7, 8]


def test_global_magnitude_counts_follow_the_smallest_weights():
    w0 = [0.01, 0.02, 0.03, 0.9, 0, 0, 0, 0, 0, 0]
    sparsifier = build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                       weights={"0": w0, "1": W1}, momenta={"0": M0, "1": M1}, prune="global_magnitude")
    masks = {name: layer.mask for name, layer in sparsifier.layers.items()}
    plan = sparsifier.algorithm.plan_update(sparsifier, sparsifier.layers, sparsecore.TopologyUpdate(0.5, 0, None, masks))
    # The 4 smallest over both layers: 0.01, 0.02, 0.03 (layer "0") and 0.2 (layer "1"), as selections.
    assert {name: chosen.flatten().nonzero().flatten().tolist() for name, chosen in plan.prune.items()} == {"0": [0, 1, 2],
                                                                                                  "1": [0]}


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


def test_redistribution_magnitude_shares_by_mean_absolute_weight():
    sparsifier = two_layers(redistribution="magnitude")
    shares = sparsifier.algorithm._gather(sparsifier, sparsifier.layers, 0.5).shares
    # mean |w|: 0.45 and 0.5
    assert shares == pytest.approx({"0": 0.45 / 0.95, "1": 0.5 / 0.95})


@pytest.mark.parametrize("mode, shares, grown", [
    # non-zero weights: 3 in "0", 15 in "1" (its 16 active weights include one of value 0)
    ("nonzero", {"0": 3 / 18, "1": 15 / 18}, {"0": 2, "1": 9}),  # ceil(10 / 6) = 2, ceil(50 / 6) = 9
    ("nonzeros", {"0": 3 / 18, "1": 15 / 18}, {"0": 2, "1": 9}),  # the reference's spelling
    # layer sizes: 10 and 20
    ("none", {"0": 1 / 3, "1": 2 / 3}, {"0": 4, "1": 7}),  # ceil(10 / 3) = 4, ceil(20 / 3) = 7
])
def test_redistribution_nonzero_counts_nonzero_weights_and_none_uses_layer_size(mode, shares, grown):
    # "0": Linear(5, 2), 3 of 10 active; "1": Linear(2, 10), 16 of 20 active, one of them exactly 0.
    # Removed: ceil(0.5 * 3) = 2 + ceil(0.5 * 16) = 8 = 10.
    w0 = [0.5, 0.7, 0.6] + [0] * 7
    w1 = [0.0] + [0.1 * (i + 1) for i in range(15)] + [0] * 4
    recorder = SelectionCountRecorder()
    sparsifier = build(chain((5, 2), (2, 10)), density=0.4, masks={"0": range(3), "1": range(16)},
                       weights={"0": w0, "1": w1}, momenta={"0": [100.0] * 10, "1": [0.5] * 20},
                       redistribution=mode, plugins=[recorder])
    assert sparsifier.algorithm._gather(sparsifier, sparsifier.layers, 0.5).shares == pytest.approx(shares)
    sparsifier.update_topology(0.5)
    assert recorder.pruned == {"0": 2, "1": 8}
    assert recorder.grown == grown  # momentum redistribution would give "0" 8 and "1" 2


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
