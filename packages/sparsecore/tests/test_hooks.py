"""Hook composition, validation of hook answers, and errors that name the plugin at fault."""

from __future__ import annotations

import pytest
import torch

import sparsecore
from sparsecore import HookResultError, hookimpl, selection
from sparsecore.plugins import RUN_HOOKS

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
    removed = {n: int(0.5 * l.nnz) for n, l in sp.layers.items()}  # the default floor(rate * nnz)
    assert removed == {"0": 64, "2": 96, "4": 12}
    total = sum(removed.values())
    report = sp.update_topology(0.5)
    for name, layer in sp.layers.items():
        # LargestPrune removes exactly the largest active weights ...
        expected_pruned = selection.largest(weights[name], before[name], removed[name])
        after_prune = before[name] & ~expected_pruned
        # ... AllToFirst sends all 172 regrowths to layer "0" (it has room), where FirstSlotsGrow takes the
        # first inactive slots in flat order (just-pruned ones included); the other layers regrow nothing
        expected = after_prune.clone()
        if name == "0":
            flat = expected.view(-1)
            flat[(~after_prune).view(-1).nonzero().squeeze(1)[:total]] = True
        assert torch.equal(layer.mask, expected), name
        assert report.layers[name].pruned == int((before[name] & ~expected).sum())
        assert report.layers[name].grown == int((expected & ~before[name]).sum())
    assert report.layers["0"].nnz == 128 - 64 + 172
    assert [report.layers[n].nnz for n in ("2", "4")] == [96, 12]
    assert sp.nnz == sum(int(b.sum()) for b in before.values())


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


def test_misspelled_hook_is_an_error_naming_the_plugin_by_its_registered_name():
    class Typo:
        @hookimpl
        def selct_prune(self, layer, n):
            return None

    valid = ", ".join(RUN_HOOKS)
    with pytest.raises(sparsecore.ConfigurationError) as info:
        make(plugins=[Typo()])
    assert str(info.value) == ("plugin 'Typo' implements unknown hook(s) 'selct_prune' "
                               f"(did you mean 'select_prune'?). Valid hooks: {valid}")
    assert " object at 0x" not in str(info.value)


def test_misspelled_hooks_of_a_registered_algorithm_name_the_algorithm(register_algorithm):
    class TwoTypos:
        name = "class-attribute-name"  # the registered name wins

        @hookimpl
        def on_stpe(self, step):
            pass

        @hookimpl
        def zzz(self):
            pass

    register_algorithm("typo-algo", TwoTypos)
    with pytest.raises(sparsecore.ConfigurationError) as info:
        make(algorithm="typo-algo")
    assert str(info.value) == ("plugin 'typo-algo' implements unknown hook(s) 'on_stpe' (did you mean 'on_step'?), "
                               f"'zzz'. Valid hooks: {', '.join(RUN_HOOKS)}")


def test_optional_unknown_hooks_are_allowed():
    class Optional:
        name = "optional"

        @hookimpl(optionalhook=True)
        def some_future_hook(self):
            pass

        @hookimpl
        def on_step(self, step):
            pass

    make(plugins=[Optional()])


class WrongCountBad:
    """Prunes one weight too few."""

    name = "bad-plugin"

    @hookimpl
    def select_prune(self, layer, n):
        return selection.smallest(layer.weight.detach().abs(), layer.mask, n - 1)


class DefersPrune:
    """Looks at every select_prune call and defers (returns None)."""

    name = "defers"

    def __init__(self):
        self.calls = []

    @hookimpl
    def select_prune(self, layer, n):
        self.calls.append((layer.name, n))


@pytest.mark.parametrize("deferring_first", [True, False])
def test_bad_answer_names_the_plugin_that_answered(deferring_first):
    defers = DefersPrune()
    plugins = [defers, WrongCountBad()] if deferring_first else [WrongCountBad(), defers]
    sp = make(plugins=plugins)
    masks = {n: l.mask.clone() for n, l in sp.layers.items()}
    with pytest.raises(HookResultError) as info:
        sp.update_topology(0.5)
    assert (info.value.hook, info.value.plugin) == ("select_prune", "bad-plugin")
    assert str(info.value) == ("hook 'select_prune' of plugin 'bad-plugin': layer '0': "
                               "selected 63 entries, expected exactly 64")
    # the newest plugin is asked first: the deferring one only when it came last
    assert defers.calls == ([] if deferring_first else [("0", 64)])
    for name, layer in sp.layers.items():
        assert torch.equal(layer.mask, masks[name])


class OldStyleLogger:
    """A logging hookwrapper (old style) around select_prune."""

    name = "logger"

    @hookimpl(hookwrapper=True)
    def select_prune(self, layer, n):
        yield


class NewStyleLogger:
    """A logging wrapper (new style, ``wrapper=True``) around select_prune."""

    name = "new-logger"

    @hookimpl(wrapper=True)
    def select_prune(self, layer, n):
        return (yield)


@pytest.mark.parametrize("logger_cls", [OldStyleLogger, NewStyleLogger])
def test_a_hook_wrapper_on_a_first_result_hook_is_refused(logger_cls):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sparsecore.ConfigurationError) as info:
        sparsecore.Sparsifier(model, opt, algorithm="set", density=0.25, plugins=[logger_cls()])
    assert str(info.value) == (
        f"plugin {logger_cls.name!r} wraps first-result hook(s) 'select_prune' (wrapper=True / hookwrapper=True); "
        "first-result hooks take plain implementations (return None to defer to the next plugin); "
        "wrappers are allowed on broadcast hooks only")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_answers_are_attributed_without_wrappers_and_none_defers():
    sp = make(plugins=[LargestPrune()])
    assert sp.manager.call_first("select_prune", sparsifier=sp, layer=sp.layers["0"], n=3)[1] == "largest-prune"
    assert sp.manager.call_first("select_grow", sparsifier=sp, layer=sp.layers["0"], n=3)[1] == "sparsecore-defaults"
    assert sp.manager.call_first_or_none("layer_forward", sparsifier=sp, layer=sp.layers["0"]) == (None, "")


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
