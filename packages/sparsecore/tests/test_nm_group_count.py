"""An algorithm's declared N:M group count (``nm_group_count``): every check of the engine holds the groups to it,
and the shared helper that thins every group to a count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import UpdatePlan, hookimpl, selection
from sparsecore.algorithms import SetAlgorithm
from sparsecore.selection import NMPattern
from sparsecore.topology import nm_group_count


def per_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Counts per group of ``m`` consecutive entries along dim 1 (computed without the engine's helper)."""
    return mask.movedim(1, -1).reshape(-1, m).sum(1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))


class Thinning(sparsecore.Algorithm):
    """Starts dense (M per group) and every update drops one more weight per group, down to N.

    To test the checks: ``declared`` overrides what :meth:`nm_group_count` answers, ``grow`` adds growth to
    the plan and ``uneven`` prunes the right number of weights but not evenly over the groups.
    """

    name = "thinning"
    patterns = ("n:m",)
    sets_initial_density = True

    def __init__(self) -> None:
        self.k: int | None = None
        self.declared = None
        self.grow: int | None = None
        self.uneven = False

    def nm_group_count(self, sparsifier, layer):
        if self.declared is not None:
            return self.declared
        return layer.pattern.m if self.k is None else self.k

    @hookimpl
    def init_masks(self, layers):
        return {name: torch.ones(layer.shape, dtype=torch.bool) for name, layer in layers.items()}

    @hookimpl
    def plan_update(self, sparsifier, layers):
        pattern = next(iter(layers.values())).pattern
        self.k = max(pattern.n, (pattern.m if self.k is None else self.k) - 1)
        prune = {name: layer.mask & ~selection.top_k_per_group(layer.weight.detach().abs(), layer.mask, self.k,
                                                                layer.pattern)
                 for name, layer in layers.items()}
        if self.uneven:  # as many weights, but the smallest of the whole layer (not one per group)
            prune = {name: selection.smallest(layer.weight.detach().abs(), layer.mask, int(prune[name].sum()))
                     for name, layer in layers.items()}
        grow = dict.fromkeys(layers, 0 if self.grow is None else self.grow)
        return UpdatePlan(prune=prune, grow=grow)


def build(algorithm, pattern="2:4", **kwargs):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, pattern=pattern, total_steps=20, seed=0,
                                 **kwargs)


def test_the_default_count_is_n():
    sp = build("static", pattern="1:4")
    layer = sp.layers["0"]
    assert sparsecore.Algorithm().nm_group_count(sp, layer) == 1
    assert nm_group_count(sp, layer) == 1
    assert (per_group(layer.mask, 4) == 1).all()


def test_a_declared_count_moves_the_groups_from_m_to_n_one_update_at_a_time():
    algo = Thinning()
    sp = build(algo, pattern="1:4")
    for layer in sp.layers.values():
        assert (per_group(layer.mask, 4) == 4).all()
    before = {name: layer.weight.detach().abs().clone() for name, layer in sp.layers.items()}
    for expected in (3, 2, 1, 1):
        report = sp.update_topology(0.1)
        for name, layer in sp.layers.items():
            assert (per_group(layer.mask, 4) == expected).all(), (name, expected)
            assert report.layers[name].grown == 0
            assert (layer.weight.detach()[~layer.mask] == 0).all()
    # what survives in every group is its largest |w| at set-up (no training in between)
    for name, layer in sp.layers.items():
        reference = selection.top_per_group(before[name], NMPattern(1, 4))
        assert torch.equal(layer.mask, reference)


def test_masks_that_do_not_hold_the_declared_count_are_refused_naming_it():
    algo = Thinning()
    algo.uneven = True  # one weight per group in all, but not one in every group
    sp = build(algo)
    before = {name: layer.mask.clone() for name, layer in sp.layers.items()}
    with pytest.raises(sparsecore.HookResultError, match=r"plan_update.*thinning.*layer '0': \d+ of 96 groups do not "
                                                         r"hold exactly 3 active weights.*nm_group_count is 3 now"):
        sp.update_topology(0.1)
    assert all(torch.equal(layer.mask, before[name]) for name, layer in sp.layers.items())


def test_growth_is_held_to_the_declared_deficit():
    algo = Thinning()
    algo.grow = 1  # one weight back where the declared count leaves no room for it
    sp = build(algo)
    with pytest.raises(sparsecore.HookResultError, match=r"plan_update.*thinning.*layer '0': regrows 1 weights, but "
                                                         r"in a 2:4 run every layer regrows exactly what it lost \(0\)"
                                                         r", so every group ends with 3"):
        sp.update_topology(0.1)


def test_set_masks_is_checked_against_the_declared_count():
    algo = Thinning()
    sp = build(algo)
    layer = sp.layers["0"]
    three = selection.top_k_per_group(layer.weight.detach().abs(), layer.mask, 3, layer.pattern)
    with pytest.raises(sparsecore.HookResultError, match=r"set_masks.*layer '0': 96 of 96 groups do not hold "
                                                         r"exactly 4"):
        algo.declared = 4
        sp.set_masks({"0": three})
    algo.declared = 3
    sp.set_masks({"0": three})
    assert (per_group(sp.layers["0"].mask, 4) == 3).all()


@pytest.mark.parametrize("bad", [0, 5, 2.0, True, None])
def test_a_declared_count_outside_one_to_m_is_refused(bad):
    algo = Thinning()
    algo.declared = bad if bad is not None else "three"  # None would mean "not declared"
    with pytest.raises(sparsecore.HookResultError, match=r"nm_group_count.*thinning.*layer '0': declared .* a 2:4 "
                                                         r"group holds an int from 1 to 4"):
        build(algo)


def test_unstructured_layers_never_ask_for_a_group_count():
    class Unstructured(SetAlgorithm):
        name = "set-unstructured"

        def nm_group_count(self, sparsifier, layer):
            raise AssertionError("asked in a run without N:M layers")

    model = mlp()
    sp = sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=Unstructured(),
                               density=0.5, total_steps=20)
    assert sum(update.grown for update in sp.update_topology(0.1).layers.values()) > 0
    with pytest.raises(ValueError, match="not N:M sparse"):
        nm_group_count(sp, sp.layers["0"])


# -- the helper -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_top_k_per_group_matches_a_sorted_reference(k):
    gen = torch.Generator().manual_seed(k)
    score = torch.randn(6, 8, 3, generator=gen)
    candidates = torch.rand(6, 8, 3, generator=gen) < 0.8
    pattern = NMPattern(1, 4)
    enough = per_group(candidates, 4) >= k
    candidates = candidates | ~enough.view(6, 3, 2).movedim(2, 1).repeat_interleave(4, 1)  # top up short groups
    chosen = selection.top_k_per_group(score, candidates, k, pattern)
    s, c, out = (t.movedim(1, -1).reshape(-1, 4) for t in (score, candidates, chosen))
    for g in range(s.shape[0]):
        order = sorted((j for j in range(4) if c[g, j]), key=lambda j: (-float(s[g, j]), j))
        assert set(torch.nonzero(out[g]).flatten().tolist()) == set(order[:k])


def test_top_k_per_group_refuses_short_groups_and_bad_counts():
    pattern = NMPattern(2, 4)
    candidates = torch.ones(2, 8, dtype=torch.bool)
    candidates[0, :3] = False
    with pytest.raises(ValueError, match=r"cannot choose 2 per group: 1 of 4 groups hold fewer candidates"):
        selection.top_k_per_group(torch.zeros(2, 8), candidates, 2, pattern)
    with pytest.raises(ValueError, match=r"k must be an int from 0 to 4"):
        selection.top_k_per_group(torch.zeros(2, 8), candidates, 5, pattern)
