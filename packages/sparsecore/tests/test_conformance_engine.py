"""The two engine contracts the conformance suite relies on, enforced on every run.

* ``redistribute`` keeps the budget: the regrowth it answers sums to what the
  update removed, unless the plugin that answered declares ``keeps_budget = False``.
  A ``plan_update`` that fixes the growth is the algorithm's own plan and exempt.
* ``init_masks`` answers at the target density: every layer holds exactly
  ``layer.active_count(layer.target_density)`` weights, unless the plugin that
  answered declares ``sets_initial_density = True``.
"""

from __future__ import annotations

import pytest
import torch

import sparsecore
from sparsecore import HookResultError, UpdatePlan, hookimpl, selection
from sparsecore.testing import make_sparsifier, make_tiny_model


class MoveToFirst:
    """Regrows the whole removed total plus ``extra`` in the first layer, nothing elsewhere."""

    name = "move-to-first"

    def __init__(self, extra: int = 0) -> None:
        self.extra = extra

    @hookimpl
    def redistribute(self, layers, removed):
        total = sum(removed.values()) + self.extra
        return {name: (total if i == 0 else 0) for i, name in enumerate(layers)}


class LeakyRedistribution(MoveToFirst):
    """Regrows more than it removed, on purpose."""

    name = "leaky-redistribution"
    keeps_budget = False


def _masks(sparsifier):
    return {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}


def test_algorithm_declares_both_contracts_by_default() -> None:
    assert sparsecore.Algorithm.keeps_budget is True
    assert sparsecore.Algorithm.sets_initial_density is False


# -- redistribute keeps the budget ------------------------------------------------
def test_a_redistribution_moving_weights_between_layers_keeps_the_budget() -> None:
    sp = make_sparsifier("static", density=0.25, plugins=[MoveToFirst()])
    before = {name: layer.nnz for name, layer in sp.layers.items()}
    assert before == {"0": 128, "2": 192, "4": 24}
    sp.update_topology(0.5)  # removes 64 + 96 + 12 = 172, all regrown in layer "0"
    assert {name: layer.nnz for name, layer in sp.layers.items()} == {"0": 128 - 64 + 172, "2": 96, "4": 12}
    sp.remove()


@pytest.mark.parametrize("extra", [-5, 3])
def test_a_redistribution_changing_the_total_is_refused_with_the_numbers(extra: int) -> None:
    sp = make_sparsifier("static", density=0.25, plugins=[MoveToFirst(extra)])
    before = _masks(sp)
    with pytest.raises(HookResultError) as info:
        sp.update_topology(0.5)
    message = str(info.value)
    assert info.value.hook == "redistribute" and info.value.plugin == "move-to-first"
    assert f"regrows {172 + extra} weights in all" in message
    assert "the update removed 172 ({'0': 64, '2': 96, '4': 12})" in message
    assert "keeps_budget = False" in message
    assert all(torch.equal(layer.mask, before[name]) for name, layer in sp.layers.items())
    assert sp.history == []
    sp.remove()


def test_a_plugin_declaring_keeps_budget_false_may_regrow_another_total() -> None:
    sp = make_sparsifier("static", density=0.25, plugins=[LeakyRedistribution(10)])
    sp.update_topology(0.5)
    assert {name: layer.nnz for name, layer in sp.layers.items()} == {"0": 128 - 64 + 182, "2": 96, "4": 12}
    sp.remove()


class ShrinkingAlgorithm(sparsecore.Algorithm):
    """An algorithm that regrows half of what it removes, declared."""

    name = "shrinking"
    keeps_budget = False

    @hookimpl
    def redistribute(self, removed):
        return {name: n // 2 for name, n in removed.items()}


def test_the_declaration_of_the_plugin_that_answered_counts() -> None:
    sp = make_sparsifier(ShrinkingAlgorithm(), density=0.25)
    sp.update_topology(0.5)
    assert {name: layer.nnz for name, layer in sp.layers.items()} == {"0": 96, "2": 144, "4": 18}
    sp.remove()
    # the algorithm's declaration does not cover an extra plugin answering for it
    sp = make_sparsifier(ShrinkingAlgorithm(), density=0.25, plugins=[MoveToFirst(-1)])
    with pytest.raises(HookResultError, match=r"hook 'redistribute' of plugin 'move-to-first': regrows 171 weights"):
        sp.update_topology(0.5)
    sp.remove()


class PlannedShrink:
    """Whole-model plan: prune the default counts, regrow 1 weight per layer."""

    name = "planned-shrink"

    @hookimpl
    def plan_update(self, layers, update):
        return UpdatePlan(prune={name: int(update.rate * layer.nnz) for name, layer in layers.items()},
                          grow={name: 1 for name in layers})


def test_growth_fixed_by_plan_update_is_the_algorithms_own_plan_and_not_checked() -> None:
    sp = make_sparsifier("static", density=0.25, plugins=[PlannedShrink()])
    sp.update_topology(0.5)
    assert {name: layer.nnz for name, layer in sp.layers.items()} == {"0": 65, "2": 97, "4": 13}
    sp.remove()


def test_a_budget_keeping_redistribution_is_accepted_in_block_runs() -> None:
    sp = make_sparsifier("set", density=0.25, block=(4, 4), plugins=[MoveToFirst()], update_every=2)
    before = sp.nnz
    sp.update_topology(0.5)
    assert sp.nnz == before and sp.layers["0"].nnz > sp.layers["0"].active_count(0.25)
    sp.remove()


# -- init_masks answers at the target density ----------------------------------------
class FirstEntries:
    """Initial masks: the first ``k`` entries of every layer, ``k`` off the target by ``offset``."""

    name = "first-entries"

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @hookimpl
    def init_masks(self, layers):
        masks = {}
        for name, layer in layers.items():
            mask = torch.zeros(layer.capacity, dtype=torch.bool)
            mask[: layer.active_count(layer.target_density) + self.offset] = True
            masks[name] = mask.view(layer.shape)
        return masks


class DeclaredDense(sparsecore.Algorithm):
    """Starts dense, declared."""

    name = "declared-dense"
    sets_initial_density = True

    @hookimpl
    def init_masks(self, layers):
        return {name: torch.ones(layer.shape, dtype=torch.bool) for name, layer in layers.items()}


class UndeclaredDense(DeclaredDense):
    name = "undeclared-dense"
    sets_initial_density = False


def test_initial_masks_at_the_target_counts_are_accepted() -> None:
    sp = make_sparsifier("static", density=0.25, plugins=[FirstEntries(0)])
    assert {name: layer.nnz for name, layer in sp.layers.items()} == {"0": 128, "2": 192, "4": 24}
    sp.remove()


@pytest.mark.parametrize("offset", [-1, 1])
def test_initial_masks_off_the_target_are_refused_with_the_numbers_and_nothing_changes(offset: int) -> None:
    model = make_tiny_model()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(HookResultError) as info:
        sparsecore.Sparsifier(model, optimizer, algorithm="static", density=0.25, plugins=[FirstEntries(offset)])
    assert info.value.hook == "init_masks" and info.value.plugin == "first-entries"
    message = str(info.value)
    assert f"layer '0': {128 + offset} active weights, but its target density 0.25 means exactly 128" in message
    assert "sets_initial_density = True" in message
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert sparsecore.sparsifier.attached_sparsifier(model) is None  # the run was refused: nothing attached


def test_an_algorithm_declaring_sets_initial_density_may_start_dense() -> None:
    sp = make_sparsifier(DeclaredDense(), density=0.25)
    assert all(layer.density == 1.0 and layer.target_density == 0.25 for layer in sp.layers.values())
    sp.remove()
    with pytest.raises(HookResultError, match=r"hook 'init_masks' of plugin 'undeclared-dense': layer '0': 512 "
                                              r"active weights, but its target density 0.25 means exactly 128"):
        make_sparsifier(UndeclaredDense(), density=0.25)


class OneBlockMore:
    """Initial masks in whole blocks, one block more than the target in every layer."""

    name = "one-block-more"

    @hookimpl
    def init_masks(self, sparsifier, layers):
        return {name: selection.random_mask(layer.shape, layer.active_count(layer.target_density) + layer.block_size,
                                            sparsifier.generator, layer.weight.device, layer.pattern)
                for name, layer in layers.items()}


def test_block_runs_are_held_to_the_whole_block_count() -> None:
    with pytest.raises(HookResultError, match=r"hook 'init_masks' of plugin 'one-block-more': layer '0': 144 active "
                                              r"weights, but its target density 0.25 means exactly 128"):
        make_sparsifier("static", density=0.25, block=(4, 4), plugins=[OneBlockMore()])
