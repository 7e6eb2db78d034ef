"""Loading entry points into the registry: failures, reset, duplicate and misspelt names, the autoload switch.

Every test builds its own fake distributions (``importlib.metadata.entry_points``
is monkeypatched) and leaves the process-wide registry as it found it.
"""

from __future__ import annotations

import importlib.metadata
import types

import pytest

import sparsecore
from sparsecore import hookimpl
from sparsecore.plugins import LoadFailure, Registry, registry

AUTOLOAD_ENV = "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD"


class Algo:
    """A test algorithm: grows nothing back."""

    @hookimpl
    def redistribute(self, removed):
        return {k: 0 for k in removed}


class OtherAlgo(Algo):
    """Another test algorithm (a different factory for the same name)."""


class FakeDist:
    def __init__(self, name, version):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """An entry point of group ``sparsecore`` whose ``load()`` returns ``module`` or runs ``load``."""

    def __init__(self, dist, module=None, load=None, version="1.0"):
        self.dist, self.name = FakeDist(dist, version), dist
        self.value = getattr(module, "__name__", f"{dist.replace('-', '_')}.plugin")
        self._module, self._load = module, load

    def load(self):
        return self._load() if self._load is not None else self._module


def plugin_module(name, algorithms=(), plugins=(), then=None):
    """A module registering ``(name, factory)`` algorithms and plugins, then calling ``then()`` if given."""
    module = types.ModuleType(name)

    @hookimpl
    def sparsecore_register_algorithms(register):
        for algo_name, factory in algorithms:
            register(algo_name, factory)
        if then is not None:
            then()

    @hookimpl
    def sparsecore_register_plugins(register):
        for plugin_name, factory in plugins:
            register(plugin_name, factory)

    module.sparsecore_register_algorithms = sparsecore_register_algorithms
    module.sparsecore_register_plugins = sparsecore_register_plugins
    return module


@pytest.fixture
def entry_points(monkeypatch):
    """The list of fake entry points ``importlib.metadata.entry_points(group="sparsecore")`` returns."""
    eps = []
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: list(eps) if group == "sparsecore" else [])
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return eps


@pytest.fixture
def global_registry(entry_points):
    """The process-wide registry, emptied for the test (it loads the fake entry points) and restored after."""
    saved = dict(vars(registry))  # reset() installs fresh containers, so these stay as they were
    registry.reset()
    yield registry
    vars(registry).clear()
    vars(registry).update(saved)


def exit_at_import():
    raise SystemExit(3)


# -- one list of load failures; reset -------------------------------------------------------------


def test_load_errors_are_derived_from_the_load_failures(entry_points):
    entry_points.append(FakeEntryPoint("broken-dist", load=lambda: 1 / 0, version="2.0"))
    reg = Registry()
    with pytest.warns(RuntimeWarning) as warned:
        reg.load()
    assert reg.load_failures == [LoadFailure("broken-dist", "2.0", "broken_dist.plugin",
                                             "ZeroDivisionError('division by zero')")]
    message = "broken-dist 2.0: entry point 'broken_dist.plugin' failed to load: ZeroDivisionError('division by zero')"
    assert reg.load_failures[0].message == message
    assert reg.load_errors == [message]
    assert [str(w.message) for w in warned] == [f"sparsecore plugin {message}"]
    reg.load_failures.clear()  # one record: the messages follow it
    assert reg.load_errors == []


def test_reset_forgets_everything_and_the_next_lookup_loads_again(entry_points):
    entry_points.append(FakeEntryPoint("first-dist", plugin_module("first_plugin", [("first", Algo)])))
    reg = Registry()
    reg.register_algorithm("from-code", Algo)
    assert sorted(reg.algorithms) == ["first", "from-code", "set", "static"]
    entry_points[:] = [FakeEntryPoint("second-dist", plugin_module("second_plugin", [("second", Algo)])),
                       FakeEntryPoint("broken-dist", load=lambda: 1 / 0)]
    reg.reset()
    assert (reg.algorithms, reg.plugins, reg.distributions, reg.load_failures) == ({}, {}, {}, [])
    with pytest.warns(RuntimeWarning, match="broken-dist"):
        assert reg.algorithm("second").distribution == "second-dist"
    assert sorted(reg.algorithms) == ["second", "set", "static"]
    assert list(reg.distributions) == ["sparsecore", "second-dist"]
    assert [f.distribution for f in reg.load_failures] == ["broken-dist"]


def test_reset_works_on_a_subclass_with_its_own_constructor(entry_points):
    class NamedRegistry(Registry):
        def __init__(self, label):
            super().__init__()
            self.label = label

    reg = NamedRegistry("mine")
    reg.load()
    reg.reset()
    assert reg.label == "mine" and reg.algorithms == {}
    assert sorted(reg.algorithm(n).name for n in ("set", "static")) == ["set", "static"]


def test_the_global_registry_fixture_restores_the_registry(global_registry, entry_points):
    assert registry.algorithms == {}  # emptied for the test, loads on demand
    entry_points.append(FakeEntryPoint("temp-dist", plugin_module("temp_plugin", [("temp-algo", Algo)])))
    assert "temp-algo" in sparsecore.available_algorithms()
