"""Entry-point discovery, the algorithm registry and `sparsecore plugins`."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

import sparsecore
from sparsecore import hookimpl
from sparsecore.cli import main
from sparsecore.plugins import Registry, factory_hooks, implemented_hooks

from core_helpers import mlp

pytest_plugins = ["pytester"]

# inner pytester runs keep file order and stay in this process
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist")


class Halver:
    """Prunes normally; grows nothing back (test algorithm)."""

    keeps_budget = False  # regrows less than it removes, on purpose

    @hookimpl
    def redistribute(self, removed):
        return {k: 0 for k in removed}


def test_registered_algorithm_is_usable_by_name(register_algorithm):
    register_algorithm("halver", Halver)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="halver", density=0.5, seed=0)
    nnz = sp.nnz
    report = sp.update_topology(0.5)
    assert sp.nnz == nnz - sum(u.pruned for u in report.layers.values())
    assert "halver" in sparsecore.available_algorithms()


def test_registered_algorithm_lasts_one_test(pytester):
    # self-contained: an inner session registers in one test and looks in the next
    pytester.makepyfile(
        """
        import sparsecore
        from sparsecore import hookimpl

        class Halver:
            @hookimpl
            def redistribute(self, removed):
                return {k: 0 for k in removed}

        def test_registers(register_algorithm):
            register_algorithm("halver-once", Halver)
            assert "halver-once" in sparsecore.available_algorithms()

        def test_removed_afterwards():
            assert "halver-once" not in sparsecore.available_algorithms()
        """
    )
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=2)
    assert "halver-once" not in sparsecore.available_algorithms()


def test_implemented_hooks_of_class_and_instance():
    assert implemented_hooks(Halver) == ["redistribute"]
    assert implemented_hooks(Halver()) == ["redistribute"]


def test_duplicate_names_from_two_distributions_are_an_error_when_used():
    reg = Registry()
    reg.load()

    class FakeModule:
        __name__ = "fake"

        @staticmethod
        @hookimpl
        def sparsecore_register_algorithms(register):
            register("set", Halver)
            register("fake-only", Halver)

    reg._register_module(FakeModule, "fake-dist", "1.0")
    with pytest.raises(sparsecore.errors.AmbiguousNameError,
                       match="^algorithm 'set' is registered by 2 distributions: 'sparsecore' "):
        reg.algorithm("set")
    assert reg.algorithm("fake-dist:set").factory is Halver
    assert reg.algorithm("sparsecore:set").distribution == "sparsecore"
    assert reg.algorithm("fake-only").distribution == "fake-dist"


def test_autoload_switch_keeps_only_builtins(monkeypatch):
    monkeypatch.setenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry()
    reg.load()
    assert sorted(reg.algorithms) == ["set", "static"]
    assert list(reg.distributions) == ["sparsecore"]


def test_builtins_are_attributed_to_the_core_distribution():
    reg = Registry()
    reg.load()
    assert reg.algorithms["set"].distribution == "sparsecore"
    assert reg.algorithms["set"].version == sparsecore.__version__
    assert reg.algorithms["set"].hooks() == []  # configuration only: an UpdateSchedule over the built-in defaults


def test_plugins_command_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"sparsecore {sparsecore.__version__}" in out
    assert "algorithm set: hooks none" in out
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    core = next(d for d in data if d["distribution"] == "sparsecore")
    assert {r["name"] for r in core["registrations"]} >= {"set", "static"}


@pytest.mark.slow
def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "sparsecore", "plugins"], capture_output=True, text=True,
                         env={"SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": ""}, check=True).stdout
    assert "algorithm static" in out


# -- `sparsecore plugins` with factory functions and broken entry points ---------------------------


def make_halver():
    """A factory function (not a class) that builds with no options."""
    return Halver()


def make_tuned(strength, scale=1.0):
    """A factory function that needs an option."""
    return Halver()


def make_broken():
    """A factory function that cannot be built bare."""
    raise RuntimeError("needs a GPU")


class FakeDist:
    def __init__(self, name):
        self.metadata = {"Name": name}
        self.version = "9.9"


class FakeEntryPoint:
    def __init__(self, dist, value, module=None, error=None):
        self.dist, self.name, self.value = FakeDist(dist), dist, value
        self._module, self._error = module, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._module


@hookimpl
def register_factories(register):
    register("by-class", Halver)
    register("by-function", make_halver)
    register("by-lambda", lambda: Halver())
    register("needs-options", make_tuned)
    register("broken", make_broken)


FactoryModule = types.ModuleType("factories_plugin")  # what the entry point loads
FactoryModule.sparsecore_register_algorithms = register_factories


@pytest.fixture
def fake_registry(monkeypatch):
    """`sparsecore.cli` reads a fresh registry loading one good and one failing fake entry point."""
    import importlib.metadata

    from sparsecore import cli

    eps = [FakeEntryPoint("factories", "factories_plugin", module=FactoryModule),
           FakeEntryPoint("broken-dist", "broken_plugin.module", error=ImportError("No module named 'broken_plugin'"))]
    monkeypatch.delenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "sparsecore" else [])
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="broken-dist 9.9: entry point 'broken_plugin.module' failed to load"):
        reg.load()
    monkeypatch.setattr(cli, "registry", reg)
    return reg


def test_hooks_of_factory_functions(fake_registry):
    algos = fake_registry.algorithms
    assert algos["by-class"].hooks() == ["redistribute"]
    assert algos["by-function"].hooks() == ["redistribute"]
    assert algos["by-lambda"].hooks() == ["redistribute"]
    assert algos["needs-options"].hooks() is None
    assert algos["broken"].hooks() is None
    assert factory_hooks(make_tuned) == (None, "factory make_tuned needs option(s) strength")
    assert factory_hooks(make_broken) == (None, "factory make_broken() failed: RuntimeError('needs a GPU')")


def test_plugins_command_text_shows_factory_hooks_and_load_errors(fake_registry, capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("factories 9.9  (module factories_plugin)") + 1:][:5] == [
        "  algorithm by-class: hooks redistribute",
        "  algorithm by-function: hooks redistribute",
        "  algorithm by-lambda: hooks redistribute",
        "  algorithm needs-options: hooks known once built (factory make_tuned needs option(s) strength)",
        "  algorithm broken: hooks known once built (factory make_broken() failed: RuntimeError('needs a GPU'))",
    ]
    assert lines[-1] == ("failed to load: broken-dist 9.9: entry point 'broken_plugin.module' failed to load: "
                         "ImportError(\"No module named 'broken_plugin'\")")


def test_plugins_command_json_includes_factory_hooks_and_load_errors(fake_registry, capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["distribution"] for d in data] == ["sparsecore", "factories", "broken-dist"]
    factories = data[1]
    assert factories["load_errors"] == [] and factories["version"] == "9.9"
    assert {r["name"]: (r["hooks"], r["hooks_note"]) for r in factories["registrations"]} == {
        "by-class": (["redistribute"], None),
        "by-function": (["redistribute"], None),
        "by-lambda": (["redistribute"], None),
        "needs-options": (None, "factory make_tuned needs option(s) strength"),
        "broken": (None, "factory make_broken() failed: RuntimeError('needs a GPU')"),
    }
    assert data[2] == {"distribution": "broken-dist", "version": "9.9", "module": "broken_plugin.module",
                       "registrations": [],
                       "load_errors": ["entry point 'broken_plugin.module': "
                                       "ImportError(\"No module named 'broken_plugin'\")"]}
    assert data[0]["load_errors"] == []
