"""Hook composition, validation of hook answers, and errors that name the plugin at fault."""

from __future__ import annotations

import pytest
import torch

import sparsecore
from sparsecore import HookResultError, hookimpl, selection

from core_helpers import mlp, train_steps


def make(plugins=(), algorithm="set", density=0.25, **kw):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=density, total_steps=100, seed=0,
                               plugins=plugins, **kw)
    train_steps(model, opt, 2)
    return sp


class LargestPrune:
    """Prunes the largest-magnitude weights (the opposite of the default)."""

    name = "largest-prune"

    @hookimpl
    def select_prune(self, layer, n):
        return selection.largest(layer.weight.detach().abs(), layer.mask, n)


class FirstSlotsGrow:
    """Grows the first n inactive positions in flat order."""

    name = "first-slots"

    @hookimpl
    def select_grow(self, layer, n):
        flat = (~layer.mask).reshape(-1)
        out = torch.zeros_like(flat)
        out[flat.nonzero().squeeze(1)[:n]] = True
        return out.view_as(layer.mask)


class AllToFirst:
    """Sends every removed weight to the first layer that has room."""

    name = "all-to-first"

    @hookimpl
    def redistribute(self, layers, removed):
        total = sum(removed.values())
        out = {}
        for name, layer in layers.items():
            take = min(total, layer.capacity - layer.nnz)
            out[name] = take
            total -= take
        return out


def test_user_plugins_override_the_algorithm_and_the_engine_applies_exactly_their_answer():
    sp = make(plugins=[LargestPrune(), FirstSlotsGrow(), AllToFirst()])
    before = {n: l.mask.clone() for n, l in sp.layers.items()}
    weights = {n: l.weight.detach().abs().clone() for n, l in sp.layers.items()}
    removed = {n: int(0.5 * l.nnz) for n, l in sp.layers.items()}
    total = sum(removed.values())
    report = sp.update_topology(0.5)
    # pruned = the largest active weights
    for name, layer in sp.layers.items():
        expected_pruned = selection.largest(weights[name], before[name], removed[name])
        assert not (layer.mask & expected_pruned & ~before[name]).any()
        survivors = before[name] & ~expected_pruned
        assert torch.equal(layer.mask & survivors, survivors)
    # everything regrown in the first layer, in its first free slots
    first = sp.layers["0"]
    assert report.layers["0"].nnz == before["0"].sum().item() - removed["0"] + min(total, first.capacity - (before["0"].sum().item() - removed["0"]))
    assert sp.nnz == sum(b.sum().item() for b in before.values())


class WrongCount:
    name = "wrong-count"

    @hookimpl
    def select_prune(self, layer, n):
        return selection.smallest(layer.weight.detach().abs(), layer.mask, max(n - 1, 0))


class WrongShape:
    name = "wrong-shape"

    @hookimpl
    def select_grow(self, layer, n):
        return torch.zeros(3, dtype=torch.bool)


class PrunesInactive:
    name = "prunes-inactive"

    @hookimpl
    def select_prune(self, layer, n):
        return selection.smallest(torch.zeros_like(layer.weight), ~layer.mask, n)


class GrowsActive:
    name = "grows-active"

    @hookimpl
    def select_grow(self, layer, n):
        return selection.smallest(torch.zeros_like(layer.weight), layer.mask, n)


class OverCapacity:
    name = "over-capacity"

    @hookimpl
    def redistribute(self, layers, removed):
        return {name: layer.capacity for name, layer in layers.items()}


class FloatMask:
    name = "float-mask"

    @hookimpl
    def select_prune(self, layer, n):
        return torch.zeros_like(layer.weight)


@pytest.mark.parametrize("plugin, hook, message", [
    (WrongCount(), "select_prune", "expected exactly"),
    (WrongShape(), "select_grow", "does not match the weight"),
    (PrunesInactive(), "select_prune", "are not active"),
    (GrowsActive(), "select_grow", "are not inactive"),
    (OverCapacity(), "redistribute", "free slots"),
    (FloatMask(), "select_prune", "expected a bool tensor"),
])
def test_bad_hook_answers_raise_errors_naming_hook_and_plugin(plugin, hook, message):
    sp = make(plugins=[plugin])
    masks = {n: l.mask.clone() for n, l in sp.layers.items()}
    with pytest.raises(HookResultError, match=message) as info:
        sp.update_topology(0.5)
    assert info.value.hook == hook and info.value.plugin == plugin.name
    assert hook in str(info.value) and plugin.name in str(info.value)
    # nothing was changed
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask, masks[name])


def test_returning_none_defers_to_the_next_plugin():
    calls = []

    class Abstains:
        name = "abstains"

        @hookimpl
        def select_prune(self, layer, n):
            calls.append(layer.name)
            return None

    sp = make(plugins=[Abstains()])
    sp.update_topology(0.3)
    assert calls == list(sp.layers)
    assert sp.history[-1].layers["0"].pruned > 0


def test_later_user_plugins_take_precedence():
    calls = {"first": 0}
    chosen = {}

    class Earlier(FirstSlotsGrow):
        name = "earlier"

        @hookimpl
        def select_grow(self, layer, n):
            calls["first"] += 1
            return super().select_grow(layer, n)

    class Later:
        name = "later"

        @hookimpl
        def select_grow(self, layer, n):
            flat = (~layer.mask).reshape(-1)
            out = torch.zeros_like(flat)
            idx = flat.nonzero().squeeze(1)
            out[idx[idx.numel() - n:]] = True
            chosen[layer.name] = out.view_as(layer.mask)
            return chosen[layer.name]

    sp = make(plugins=[Earlier(), Later()])
    sp.update_topology(0.5)
    assert calls["first"] == 0
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask & chosen[name], chosen[name])


def test_misspelled_hook_is_an_error():
    class Typo:
        @hookimpl
        def selct_prune(self, layer, n):
            return None

    with pytest.raises(sparsecore.ConfigurationError, match="selct_prune"):
        make(plugins=[Typo()])


def test_plugin_without_hooks_and_class_instead_of_instance_are_errors():
    with pytest.raises(sparsecore.ConfigurationError, match="implements no sparsecore hook"):
        make(plugins=[object()])
    with pytest.raises(sparsecore.ConfigurationError, match="pass an instance"):
        make(plugins=[LargestPrune])


def test_init_masks_answer_is_validated():
    class HalfMasks:
        name = "half-masks"

        @hookimpl
        def init_masks(self, layers):
            return {name: torch.ones_like(layer.mask) for name, layer in list(layers.items())[:1]}

    with pytest.raises(HookResultError, match="missing"):
        make(plugins=[HalfMasks()])


def test_layer_forward_replacement_is_installed_and_removed():
    seen = []

    class CountingForward:
        name = "counting"

        @hookimpl
        def layer_forward(self, layer):
            module = layer.module

            def forward(x):
                seen.append(layer.name)
                return torch.nn.functional.linear(x, module.weight * layer.mask, module.bias)
            return forward

    sp = make(plugins=[CountingForward()], algorithm="static")
    assert seen.count("0") == 2  # the two training steps in make()
    sp.remove()
    sp.model(torch.randn(2, 16))
    assert seen.count("0") == 2


def test_topology_report_hook_receives_each_update():
    reports = []

    class Logger:
        name = "logger"

        @hookimpl
        def on_topology_update(self, report):
            reports.append(report)

    sp = make(plugins=[Logger()])
    sp.update_topology(0.2)
    sp.update_topology(0.1)
    assert [r.rate for r in reports] == [0.2, 0.1]
    assert reports[0].as_dict()["nnz"] == sp.nnz
