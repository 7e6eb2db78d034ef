"""N:M structured sparsity: the pattern object, the N:M-aware selection helpers, the engine's
``pattern="N:M"`` option and the validation of every hook answer against it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import hookimpl, selection
from sparsecore.selection import NMPattern


def reference_top_n(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group of ``m`` along dim 1 (dim 1 moved last), the ``n`` largest |w|, ties to the lower index."""
    moved = weight.abs().movedim(1, -1)
    groups = moved.reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    for g in range(groups.shape[0]):
        order = sorted(range(m), key=lambda j: (-float(groups[g, j]), j))
        mask[g, order[:n]] = True
    return mask.reshape(moved.shape).movedim(-1, 1)


def per_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Counts per group of ``m`` consecutive entries along dim 1, computed independently of NMPattern."""
    return mask.movedim(1, -1).reshape(-1, m).sum(1)


def mlp(seed: int = 0, widths=(16, 32, 24, 8)) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))


def build(model=None, algorithm="static", **kwargs):
    model = model if model is not None else mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("total_steps", 50)
    return sparsecore.Sparsifier(model, opt, algorithm=algorithm, **kwargs)


# -- the pattern object ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["2:4", " 2 : 4 ", (2, 4), [2, 4], NMPattern(2, 4)])
def test_parse_accepts_text_pairs_and_patterns(spec):
    assert NMPattern.parse(spec) == NMPattern(2, 4)
    assert str(NMPattern.parse(spec)) == "2:4" and NMPattern.parse(spec).density == 0.5


@pytest.mark.parametrize("spec", ["4:2", "0:4", "4:4", "2-4", "2:4:8", "a:b", (2.0, 4), (True, 4), 24, None])
def test_parse_refuses_anything_else_with_the_rule(spec):
    with pytest.raises(ValueError, match="0 < N < M"):
        NMPattern.parse(spec)


def test_groups_run_along_the_input_channels_at_every_output_channel_and_kernel_position():
    pattern = NMPattern(1, 4)
    w = torch.arange(2 * 8 * 3 * 3).reshape(2, 8, 3, 3)
    groups = pattern.grouped(w)
    assert groups.shape == (2 * 2 * 3 * 3, 4)
    # the first group is input channels 0..3 of output channel 0 at kernel position (0, 0)
    assert groups[0].tolist() == [w[0, c, 0, 0].item() for c in range(4)]
    # then channels 4..7 at the same position; then channels 0..3 at kernel position (0, 1)
    assert groups[1].tolist() == [w[0, c, 0, 0].item() for c in range(4, 8)]
    assert groups[2].tolist() == [w[0, c, 0, 1].item() for c in range(4)]
    assert torch.equal(pattern.ungrouped(groups, w.shape), w)


def test_linear_groups_are_row_major_runs_of_m():
    w = torch.arange(3 * 8).reshape(3, 8)
    assert torch.equal(NMPattern(2, 4).grouped(w), w.reshape(-1, 4))


def test_check_shape_names_the_dimension():
    with pytest.raises(ValueError, match=r"input dimension \(dim 1, size 6\) does not divide into groups of 4"):
        NMPattern(2, 4).check_shape((8, 6))


# -- N:M-aware selection helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 16), (4, 16, 3, 3), (4, 16, 5)])
@pytest.mark.parametrize(("n", "m"), [(2, 4), (3, 8), (5, 16)])  # 16: groups ranked by sorting, not pairwise
def test_largest_over_everything_is_the_top_n_of_every_group(shape, n, m):
    torch.manual_seed(0)
    w = torch.randn(shape)
    w.view(-1)[:4] = 1.0  # ties: the lower index wins
    w.view(-1)[-40::3] = -0.5
    pattern = NMPattern(n, m)
    everything = torch.ones(shape, dtype=torch.bool)
    chosen = selection.largest(w.abs(), everything, pattern.active_count(shape), pattern)
    assert torch.equal(chosen, reference_top_n(w, n, m))
    assert torch.equal(selection.top_per_group(w.abs(), pattern), chosen)
    assert torch.equal(selection.top_per_group(-w.abs(), pattern, largest=False), chosen)


@pytest.mark.parametrize("m", [4, 8, 16])
@pytest.mark.parametrize("largest", [True, False])
def test_per_group_choice_among_some_candidates_matches_a_sorted_reference(m, largest):
    gen = torch.Generator().manual_seed(m)
    score = torch.randint(0, 3, (5, 2 * m), generator=gen).float()  # many ties
    candidates = torch.rand(5, 2 * m, generator=gen) < 0.6
    counts = per_group(candidates, m)
    quotas = torch.minimum(counts, torch.randint(0, m, counts.shape, generator=gen))
    expected = torch.zeros(5 * 2, m, dtype=torch.bool)
    for g, (row, cand) in enumerate(zip(score.reshape(-1, m).tolist(), candidates.reshape(-1, m).tolist())):
        order = sorted((j for j in range(m) if cand[j]), key=lambda j: ((-row[j] if largest else row[j]), j))
        expected[g, order[: int(quotas[g])]] = True
    chosen = selection._pick_per_group(score, candidates, quotas, largest, NMPattern(1, m))
    assert torch.equal(chosen, expected.reshape(5, 2 * m))


def test_smallest_of_active_weights_thins_over_the_whole_layer():
    torch.manual_seed(1)
    w = torch.randn(8, 16)
    pattern = NMPattern(2, 4)
    mask = reference_top_n(w, 2, 4)
    chosen = selection.smallest(w.abs(), mask, 11, pattern)
    assert torch.equal(chosen, selection.smallest(w.abs(), mask, 11))  # the 11 smallest active, any groups
    assert int(chosen.sum()) == 11 and not (chosen & ~mask).any()


@pytest.mark.parametrize("how", ["largest", "smallest", "random"])
def test_growth_after_pruning_gives_every_group_back_exactly_what_it_lost(how):
    torch.manual_seed(2)
    w = torch.randn(4, 8, 3, 3)
    pattern = NMPattern(3, 4)
    mask = reference_top_n(w, 3, 4)
    pruned = selection.smallest(w.abs(), mask, 40, pattern)
    after = mask & ~pruned
    score = torch.randn(w.shape)
    if how == "random":
        grown = selection.random_choice(~after, 40, torch.Generator().manual_seed(0), pattern)
    else:
        grown = getattr(selection, how)(score, ~after, 40, pattern)
    assert not (grown & after).any()
    assert torch.equal(per_group(grown, 4), per_group(pruned, 4))
    assert (per_group(after | grown, 4) == 3).all()
    if how == "largest":  # within each group, the best-scored free slots
        free_scores = torch.where(~after, score, torch.tensor(float("-inf")))
        expected = torch.zeros_like(grown)
        g_exp, g_free = pattern.grouped(expected), pattern.grouped(free_scores)
        for g, k in enumerate(per_group(pruned, 4).tolist()):
            g_exp[g, torch.argsort(g_free[g], descending=True, stable=True)[:k]] = True
        assert torch.equal(grown, pattern.ungrouped(g_exp, w.shape))


def test_random_choice_per_group_is_uniform_within_the_group():
    pattern = NMPattern(1, 4)
    candidates = torch.ones(1, 4, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(4)
    for _ in range(2000):
        hits += selection.random_choice(candidates, 1, gen, pattern).view(-1).float()
    assert hits.sum() == 2000 and (hits > 400).all() and (hits < 600).all()


def test_a_count_that_neither_refills_nor_prunes_is_refused():
    pattern = NMPattern(2, 4)
    free = torch.ones(2, 8, dtype=torch.bool)  # every group has 4 candidates: only n = 2 * 4 refills
    with pytest.raises(ValueError, match=r"cannot choose 5 entries in a 2:4 pattern.*exactly n=8"):
        selection.largest(torch.randn(2, 8), free, 5, pattern)


def test_random_mask_holds_exactly_n_per_group_and_refuses_other_counts():
    pattern = NMPattern(2, 8)
    gen = torch.Generator().manual_seed(0)
    mask = selection.random_mask(torch.Size((3, 16, 2, 2)), 2 * 3 * 2 * 4, gen, torch.device("cpu"), pattern)
    assert (per_group(mask, 8) == 2).all()
    with pytest.raises(ValueError, match=r"a 2:8 mask of shape \(3, 16\) holds exactly 12 active entries, not 13"):
        selection.random_mask(torch.Size((3, 16)), 13, gen, torch.device("cpu"), pattern)


def test_global_helpers_refill_per_group_or_thin_across_tensors():
    torch.manual_seed(3)
    pattern = NMPattern(2, 4)
    scores = {"a": torch.randn(4, 8), "b": torch.randn(2, 4, 3)}
    masks = {k: reference_top_n(v, 2, 4) for k, v in scores.items()}
    magnitudes = {k: v.abs() for k, v in scores.items()}
    thin = selection.global_smallest(magnitudes, masks, 9, pattern)
    unstructured = selection.global_smallest(magnitudes, masks, 9)
    assert sum(int(v.sum()) for v in thin.values()) == 9
    assert all(torch.equal(thin[k], unstructured[k]) for k in scores)
    after = {k: masks[k] & ~thin[k] for k in masks}
    grown = selection.global_largest(scores, {k: ~v for k, v in after.items()}, 9, pattern)
    for k in scores:
        assert (per_group(after[k] | grown[k], 4) == 2).all()


def test_global_thinning_at_one_in_four_prunes_anywhere():
    torch.manual_seed(4)
    pattern = NMPattern(1, 4)
    scores = {"a": torch.randn(4, 8), "b": torch.randn(2, 4, 3)}
    masks = {k: reference_top_n(v, 1, 4) for k, v in scores.items()}
    thin = selection.global_smallest(scores, masks, 5, pattern)
    assert all(torch.equal(thin[k], v) for k, v in selection.global_smallest(scores, masks, 5).items())
    with pytest.raises(ValueError, match=r"tensor 'a': cannot choose 5 entries in a 1:4 pattern"):
        selection.global_smallest(scores, {k: torch.ones_like(v) for k, v in masks.items()}, 5, pattern)


# -- the engine: options and errors ----------------------------------------------------------------------------


def test_pattern_run_gives_every_layer_the_pattern_and_density_n_over_m():
    sp = build(pattern="1:4")
    assert sp.pattern == NMPattern(1, 4) and sp.density == 0.25 and sp.block is None
    for layer in sp.layers.values():
        assert layer.pattern == NMPattern(1, 4) and layer.target_density == 0.25
        assert (per_group(layer.mask, 4) == 1).all()
        assert torch.equal(layer.weight.detach() != 0, layer.mask)


def test_conv_layers_group_input_channels_at_each_kernel_position():
    sp = build(convnet(), pattern="2:4")
    for layer in sp.layers.values():
        assert (per_group(layer.mask, 4) == 2).all()
    assert sp.layers["0"].mask.shape == (8, 8, 3, 3)


def test_unstructured_and_block_runs_give_layers_their_pattern_too():
    assert all(layer.pattern is None for layer in build().layers.values())
    sp = build(mlp(widths=(16, 32, 24, 8)), block=(4, 4), density=0.5)
    assert sp.pattern == (4, 4) and all(layer.pattern == (4, 4) for layer in sp.layers.values())


def test_a_layer_whose_input_dimension_does_not_divide_is_named_with_the_way_out():
    model = mlp(widths=(16, 30, 8))
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"layer '2'.*dim 1, size 30.*groups of 4.*exclude=\['2'\]"):
        build(model, pattern="2:4")
    sp = build(mlp(widths=(16, 30, 8)), pattern="2:4", exclude=["2"])
    assert list(sp.layers) == ["0"]


@pytest.mark.parametrize("density", [0.5, None])
def test_density_may_be_left_out_or_equal_n_over_m(density):
    assert build(pattern="2:4", density=density).density == 0.5


def test_a_density_other_than_n_over_m_is_refused():
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"pattern='2:4' keeps exactly 2 of every 4 weights, so the density is 0.5; got density=0.3"):
        build(pattern="2:4", density=0.3)


@pytest.mark.parametrize("distribution", ["erk", {"0": 0.5, "2": 0.5, "4": 0.5}])
def test_a_distribution_is_refused(distribution):
    with pytest.raises(sparsecore.ConfigurationError, match=r"per-layer distribution .* cannot apply"):
        build(pattern="2:4", distribution=distribution)


def test_uniform_distribution_is_accepted():
    assert build(pattern="2:4", distribution="uniform").distribution == "uniform"


def test_block_and_pattern_exclude_each_other():
    with pytest.raises(sparsecore.ConfigurationError, match=r"block=\(4, 4\) and pattern='2:4' exclude each other"):
        build(pattern="2:4", block=(4, 4))


@pytest.mark.parametrize("spec", ["4:2", "2/4", 3])
def test_a_malformed_pattern_is_refused(spec):
    with pytest.raises(sparsecore.ConfigurationError, match=r"pattern: .*0 < N < M"):
        build(pattern=spec)


class UnstructuredOnly:
    name = "unstructured-only"
    patterns = ("unstructured",)


class NMOnly(sparsecore.Algorithm):
    name = "nm-only"
    patterns = ("n:m",)
    engine_defaults = {"pattern": "1:4", "distribution": "erk"}


def test_an_algorithm_without_n_m_is_refused_by_name():
    with pytest.raises(sparsecore.ConfigurationError,
                       match=r"algorithm 'unstructured-only' does not support N:M runs.*drop pattern="):
        build(algorithm=UnstructuredOnly(), pattern="2:4")


def test_an_nm_only_algorithm_gets_its_default_pattern_and_its_default_distribution_is_ignored():
    sp = build(algorithm=NMOnly())
    assert sp.pattern == NMPattern(1, 4) and {layer.target_density for layer in sp.layers.values()} == {0.25}
    assert build(algorithm=NMOnly(), pattern="2:4").pattern == NMPattern(2, 4)


def test_an_nm_only_algorithm_refuses_unstructured_and_block_runs():
    class NoDefault(sparsecore.Algorithm):
        name = "nm-no-default"
        patterns = ("n:m",)

    with pytest.raises(sparsecore.ConfigurationError, match=r"'nm-no-default' does not support unstructured runs"):
        build(algorithm=NoDefault())
    with pytest.raises(sparsecore.ConfigurationError, match=r"'nm-only' does not support block-sparse runs"):
        build(algorithm=NMOnly(), block=(4, 4))


def test_transposed_convolutions_are_refused_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ConvTranspose2d(8, 4, 3))
    with pytest.raises(sparsecore.ConfigurationError, match=r"layer '1' \(conv_transpose2d\).*exclude=\['1'\]"):
        build(model, pattern="2:4", layer_types=[nn.Conv2d, nn.ConvTranspose2d])


# -- every answer is checked against the pattern ---------------------------------------------------------------


class FirstEntries:
    """init_masks: the first half of every row (not 2:4 once a row holds more than one group)."""

    name = "first-entries"

    @hookimpl
    def init_masks(self, layers):
        out = {}
        for name, layer in layers.items():
            mask = torch.zeros(layer.shape, dtype=torch.bool)
            mask[:, : layer.shape[1] // 2] = True
            out[name] = mask
        return out


def test_init_masks_not_in_the_pattern_are_refused_naming_the_plugin():
    with pytest.raises(sparsecore.HookResultError,
                       match=r"init_masks.*first-entries.*layer '0': 128 of 128 groups do not hold exactly 2"):
        build(plugins=[FirstEntries()], pattern="2:4")


class DenseStart:
    name = "dense-start"
    sets_initial_density = True

    @hookimpl
    def init_masks(self, layers):
        return {name: torch.ones(layer.shape, dtype=torch.bool) for name, layer in layers.items()}


def test_a_whole_dense_initial_mask_is_accepted_and_reported_dense():
    sp = build(plugins=[DenseStart()], pattern="2:4")
    assert all(layer.density == 1.0 and layer.target_density == 0.5 for layer in sp.layers.values())


class PruneLastGrowFirst:
    """Prunes one active weight of the last group and grows the first free slot of the layer (group 0)."""

    name = "prune-last-grow-first"

    @hookimpl
    def select_prune(self, layer, n):
        order = torch.arange(layer.capacity, dtype=torch.float32).view(layer.shape)
        return selection.largest(order, layer.mask, n)

    @hookimpl
    def select_grow(self, layer, n):
        order = torch.arange(layer.capacity, dtype=torch.float32).view(layer.shape)
        return selection.smallest(order, ~layer.mask, n)


def test_growth_into_other_groups_than_the_pruned_ones_is_refused_naming_the_plugin():
    sp = build(algorithm="set", plugins=[PruneLastGrowFirst()], pattern="2:4")
    before = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    with pytest.raises(sparsecore.HookResultError,
                       match=r"select_grow.*prune-last-grow-first.*layer '0': 2 of 128 groups do not hold exactly 2"):
        sp.update_topology(0.01)
    assert all(torch.equal(layer.mask, before[name]) for name, layer in sp.layers.items())


class MoveAllToFirstLayer:
    name = "move-all"

    @hookimpl
    def redistribute(self, layers, removed):
        total = sum(removed.values())
        return {name: (total if i == 0 else 0) for i, name in enumerate(layers)}


def test_redistribution_between_nm_layers_is_refused():
    sp = build(algorithm="set", plugins=[MoveAllToFirstLayer()], pattern="2:4")
    with pytest.raises(sparsecore.HookResultError,
                       match=r"redistribute.*move-all.*layer '0': regrows \d+ weights, but in a 2:4 run every layer "
                             r"regrows exactly what it lost \(\d+\)"):
        sp.update_topology(0.3)


class PlannedGrowIntoFirstGroup:
    name = "planned"

    @hookimpl
    def plan_update(self, layers):
        prune, grow = {}, {}
        for name, layer in layers.items():
            order = torch.arange(layer.capacity, dtype=torch.float32).view(layer.shape)
            prune[name] = selection.largest(order, layer.mask, 1)
            grow[name] = selection.smallest(order, ~(layer.mask & ~prune[name]), 1)
        return sparsecore.UpdatePlan(prune=prune, grow=grow)


def test_a_planned_growth_selection_is_checked_against_the_pattern():
    sp = build(algorithm="set", plugins=[PlannedGrowIntoFirstGroup()], pattern="2:4")
    with pytest.raises(sparsecore.HookResultError, match=r"plan_update.*planned.*do not hold exactly 2"):
        sp.update_topology(0.1)


def test_set_masks_outside_the_pattern_is_refused():
    sp = build(pattern="2:4")
    bad = sp.layers["0"].mask.clone()
    bad[0, 0] = ~bad[0, 0]
    with pytest.raises(sparsecore.HookResultError, match=r"set_masks.*layer '0': 1 of 128 groups"):
        sp.set_masks({"0": bad})


def test_set_update_keeps_counts_and_the_new_weights_start_at_zero():
    sp = build(algorithm="set", pattern="2:4", prune_rate=0.5)
    old = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    report = sp.update_topology(0.5)
    for name, layer in sp.layers.items():
        assert (per_group(layer.mask, 4) == 2).all()
        grown = layer.mask & ~old[name]
        assert report.layers[name].grown == int(grown.sum()) > 0
        assert (layer.weight.detach()[grown] == 0).all()
        assert (layer.weight.detach()[~layer.mask] == 0).all()


# -- checkpoints -----------------------------------------------------------------------------------------------


def test_state_dict_records_the_pattern_and_refuses_another():
    sp = build(algorithm="set", pattern="2:4")
    state = sp.state_dict()
    assert state["pattern"] == "2:4"
    sp.remove()
    other = build(algorithm="set", pattern="2:4", seed=5)
    other.load_state_dict(state)
    assert all(torch.equal(other.layers[n].mask, state["masks"][n]) for n in state["masks"])
    other.remove()
    with pytest.raises(sparsecore.CheckpointError, match=r"checkpoint has pattern='2:4', this run uses pattern=None"):
        build(algorithm="set", density=0.5).load_state_dict(state)
