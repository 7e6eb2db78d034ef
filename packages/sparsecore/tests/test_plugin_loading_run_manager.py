"""The per-run manager calls first-result hooks through public pluggy API only.

`RunManager.call_first` calls the implementations one at a time in pluggy's
order and names the plugin that answered; hook wrappers are refused on
first-result hooks and keep working on broadcast hooks.
"""

from __future__ import annotations

import pluggy
import pytest

import sparsecore
from sparsecore import hookimpl
from sparsecore.plugins import FIRST_RESULT_HOOKS, RUN_HOOKS, RunManager


class Answers:
    """Answers ``layer_forward`` with a fixed value (``None`` defers) and logs each call in ``calls``."""

    def __init__(self, name, answer, calls):
        self.name, self.answer, self.calls = name, answer, calls

    @hookimpl
    def layer_forward(self, layer):
        self.calls.append(self.name)
        return self.answer


class TryFirst(Answers):
    @hookimpl(tryfirst=True)
    def layer_forward(self, layer):
        self.calls.append(self.name)
        return self.answer


class TryLast(Answers):
    @hookimpl(trylast=True)
    def layer_forward(self, layer):
        self.calls.append(self.name)
        return self.answer


def manager_with(calls, answers):
    """An algorithm and four extra plugins answering ``answers[name]`` (``None`` by default)."""
    get = answers.get
    algorithm = Answers("algo", get("algo"), calls)
    extra = [("early", Answers("early", get("early"), calls)),
             ("first", TryFirst("first", get("first"), calls)),
             ("last", TryLast("last", get("last"), calls)),
             ("late", Answers("late", get("late"), calls))]
    return RunManager(algorithm, "algo", extra)


def test_implementations_run_in_pluggy_order_until_one_answers():
    calls = []
    manager = manager_with(calls, {})
    assert manager.call_first_or_none("layer_forward", sparsifier=None, layer="L") == (None, "")
    # tryfirst, then newest registered first, then trylast; the same order pluggy calls them in
    assert calls == ["first", "late", "early", "algo", "last"]
    calls.clear()
    assert manager.hook.layer_forward(sparsifier=None, layer="L") is None
    assert calls == ["first", "late", "early", "algo", "last"]

    calls = []
    manager = manager_with(calls, {"early": "E", "algo": "A", "last": "Z"})
    assert manager.call_first("layer_forward", sparsifier=None, layer="L") == ("E", "early")
    assert calls == ["first", "late", "early"]  # nothing after the first answer runs
    calls.clear()
    assert manager.hook.layer_forward(sparsifier=None, layer="L") == "E"  # pluggy agrees

    calls = []
    manager = manager_with(calls, {"last": "Z"})
    assert manager.call_first("layer_forward", sparsifier=None, layer="L") == ("Z", "last")


def test_pluggy_hook_implementations_are_left_untouched():
    calls = []
    manager = manager_with(calls, {"algo": "A"})
    impls = manager.pm.hook.layer_forward.get_hookimpls()
    functions = [impl.function for impl in impls]
    for _ in range(2):
        assert manager.call_first("layer_forward", sparsifier=None, layer="L") == ("A", "algo")
    assert manager.pm.hook.layer_forward.get_hookimpls() == impls
    assert [impl.function for impl in impls] == functions


def test_each_implementation_gets_only_the_arguments_it_names():
    seen = []

    class NamesLayerOnly:
        @hookimpl
        def layer_forward(self, layer):
            seen.append(("layer-only", layer))

    class NamesBoth:
        @hookimpl
        def layer_forward(self, layer, sparsifier):  # order differs from the spec
            seen.append(("both", layer, sparsifier))
            return "answer"

    manager = RunManager(NamesBoth(), "both", [("layer-only", NamesLayerOnly())])
    assert manager.call_first("layer_forward", sparsifier="S", layer="L") == ("answer", "both")
    assert seen == [("layer-only", "L"), ("both", "L", "S")]


def test_a_missing_argument_names_the_plugin_and_the_argument():
    manager = RunManager(Answers("algo", "A", []), "algo", [])
    with pytest.raises(pluggy.HookCallError) as info:
        manager.call_first("layer_forward", sparsifier=None)
    assert str(info.value) == ("hook 'layer_forward' of plugin 'algo' needs argument 'layer', "
                               "which the call did not provide")


def test_call_first_refuses_a_broadcast_hook():
    manager = RunManager(Answers("algo", "A", []), "algo", [])
    with pytest.raises(ValueError, match="^'on_step' is not a first-result hook; first-result hooks: "):
        manager.call_first_or_none("on_step", sparsifier=None, step=1)


def test_no_answer_at_all_is_a_hook_result_error():
    manager = RunManager(Answers("algo", None, []), "algo", [])
    with pytest.raises(sparsecore.HookResultError) as info:
        manager.call_first("layer_forward", sparsifier=None, layer="L")
    assert str(info.value) == ("hook 'layer_forward' of plugin '<none>': "
                               "no plugin answered, not even the built-in default")


class NewStyleWrapper:
    @hookimpl(wrapper=True)
    def layer_forward(self, layer):
        return (yield)


class OldStyleWrapper:
    @hookimpl(hookwrapper=True)
    def layer_forward(self, layer):
        yield


WRAPPER_REFUSED = ("plugin {!r} wraps first-result hook(s) 'layer_forward' (wrapper=True / hookwrapper=True); "
                   "first-result hooks take plain implementations (return None to defer to the next plugin); "
                   "wrappers are allowed on broadcast hooks only")


@pytest.mark.parametrize("wrapper_cls", [NewStyleWrapper, OldStyleWrapper])
def test_a_wrapper_on_a_first_result_hook_is_refused_at_registration(wrapper_cls):
    with pytest.raises(sparsecore.ConfigurationError) as info:
        RunManager(Answers("algo", "A", []), "algo", [("logger", wrapper_cls())])
    assert str(info.value) == WRAPPER_REFUSED.format("logger")
    with pytest.raises(sparsecore.ConfigurationError) as info:  # the algorithm itself, too
        RunManager(wrapper_cls(), "wrapping-algo", [])
    assert str(info.value) == WRAPPER_REFUSED.format("wrapping-algo")


def test_every_first_result_hook_refuses_wrappers():
    assert FIRST_RESULT_HOOKS and FIRST_RESULT_HOOKS <= set(RUN_HOOKS)
    for hook in sorted(FIRST_RESULT_HOOKS):
        plugin_cls = type("Wraps", (), {hook: hookimpl(wrapper=True)(lambda self: (yield))})
        refused = f"^plugin 'w' wraps first-result hook\\(s\\) '{hook}' "
        with pytest.raises(sparsecore.ConfigurationError, match=refused):
            RunManager(Answers("algo", "A", []), "algo", [("w", plugin_cls())])


def test_wrappers_on_broadcast_hooks_keep_working():
    events = []

    class StepWrapper:
        @hookimpl(wrapper=True)
        def on_step(self, step):
            events.append(("before", step))
            result = yield
            events.append(("after", step))
            return result

    class OldStepWrapper:
        @hookimpl(hookwrapper=True)
        def on_step(self, step):
            events.append(("old-before", step))
            yield
            events.append(("old-after", step))

    class StepCounter:
        @hookimpl
        def on_step(self, step):
            events.append(("counted", step))

    manager = RunManager(StepCounter(), "counter", [("wrap", StepWrapper()), ("old-wrap", OldStepWrapper())])
    manager.hook.on_step(sparsifier=None, step=7)
    assert events == [("old-before", 7), ("before", 7), ("counted", 7), ("after", 7), ("old-after", 7)]
    assert [name for name, _ in manager.plugins()] == ["sparsecore-defaults", "counter", "wrap", "old-wrap"]
