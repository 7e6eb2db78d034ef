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
    """The list of fake entry points ``importlib.metadata.entry_points(group="sparsecore")`` returns.

    Other groups (torch looks some up lazily) get the real answer.
    """
    eps = []
    real = importlib.metadata.entry_points

    def fake(**params):
        return list(eps) if params.get("group") == "sparsecore" else real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
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


# -- a failing entry point is contained and leaves nothing behind -----------------------------------


class NotAnException(BaseException):
    """A BaseException that is neither Exception nor SystemExit."""


@pytest.mark.parametrize("raised", [SystemExit(3), SystemExit("bye"), SystemExit(), GeneratorExit(),
                                    NotAnException("odd"), ImportError("No module named 'x'")],
                         ids=repr)
@pytest.mark.parametrize("where", ["import", "register hook"])
def test_any_failure_but_keyboard_interrupt_is_contained(entry_points, raised, where):
    def fail():
        raise raised

    failing = (FakeEntryPoint("failing-dist", load=fail) if where == "import" else
               FakeEntryPoint("failing-dist", plugin_module("failing_dist.plugin", [("half-done", Algo)], then=fail)))
    entry_points[:] = [FakeEntryPoint("good-dist", plugin_module("good_plugin", [("good-algo", Algo)])),
                       failing,
                       FakeEntryPoint("later-dist", plugin_module("later_plugin", [("later-algo", OtherAlgo)],
                                                                  plugins=[("later-logger", Algo)]))]
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="^sparsecore plugin failing-dist 1.0: entry point 'failing_dist.plugin'"):
        reg.load()
    assert reg.load_failures == [LoadFailure("failing-dist", "1.0", "failing_dist.plugin", repr(raised))]
    assert sorted(reg.algorithms) == ["good-algo", "later-algo", "set", "static"]  # no "half-done"
    assert sorted(reg.plugins) == ["later-logger"]
    assert list(reg.distributions) == ["sparsecore", "good-dist", "later-dist"]
    assert reg.algorithm("later-algo").factory is OtherAlgo


def test_a_failure_in_the_plugins_hook_drops_the_algorithms_registered_before_it(entry_points):
    module = plugin_module("partial_plugin", [("partial-a", Algo), ("partial-b", Algo)], plugins=[("bad name", 42)])
    entry_points.append(FakeEntryPoint("partial-dist", module))
    reg = Registry()
    with pytest.warns(RuntimeWarning):
        reg.load()
    assert sorted(reg.algorithms) == ["set", "static"] and reg.plugins == {}
    assert "partial-dist" not in reg.distributions
    assert reg.load_failures[0].error == ("ConfigurationError(\"partial-dist: factory for plugin 'bad name' "
                                          "is not callable\")")


def test_register_kept_and_called_after_the_hook_returned_is_refused(entry_points):
    kept = []
    module = types.ModuleType("keeper_plugin")

    @hookimpl
    def sparsecore_register_algorithms(register):
        register("kept-algo", Algo)
        kept.append(register)

    module.sparsecore_register_algorithms = sparsecore_register_algorithms
    entry_points.append(FakeEntryPoint("keeper-dist", module))
    reg = Registry()
    reg.load()
    with pytest.raises(sparsecore.ConfigurationError,
                       match="^keeper-dist: register\\(\\) of sparsecore_register_algorithms called after"):
        kept[0]("late-algo", Algo)
    assert sorted(reg.algorithms) == ["kept-algo", "set", "static"]


def test_keyboard_interrupt_stops_loading_and_leaves_the_registry_unloaded(entry_points):
    def interrupt():
        raise KeyboardInterrupt

    entry_points[:] = [FakeEntryPoint("good-dist", plugin_module("good_plugin", [("good-algo", Algo)])),
                       FakeEntryPoint("interrupted-dist", load=interrupt)]
    reg = Registry()
    with pytest.raises(KeyboardInterrupt):
        reg.load()
    assert (reg.algorithms, reg.distributions, reg.load_failures) == ({}, {}, [])
    entry_points.pop()
    assert reg.algorithm("good-algo").distribution == "good-dist"  # the next lookup loads again


def test_a_factory_that_exits_does_not_stop_the_listing():
    def exits():
        raise SystemExit(4)

    from sparsecore.plugins import factory_hooks

    assert factory_hooks(exits) == (None, f"factory {exits.__qualname__}() failed: SystemExit(4)")


@pytest.fixture
def exiting_plugin(global_registry, entry_points):
    """A distribution that calls sys.exit(3) at import, between two that work."""
    entry_points[:] = [FakeEntryPoint("good-dist", plugin_module("good_plugin", [("good-algo", Algo)])),
                       FakeEntryPoint("exit-dist", load=exit_at_import, version="0.1"),
                       FakeEntryPoint("later-dist", plugin_module("later_plugin", [("later-algo", Algo)]))]
    return global_registry


EXIT_MESSAGE = "exit-dist 0.1: entry point 'exit_dist.plugin' failed to load: SystemExit(3)"


def test_plugins_command_names_the_distribution_that_exited(exiting_plugin, capsys):
    import json

    from sparsecore.cli import main

    with pytest.warns(RuntimeWarning, match="exit-dist"):
        assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  algorithm good-algo: hooks redistribute" in lines
    assert "  algorithm later-algo: hooks redistribute" in lines
    assert lines[-1] == f"failed to load: {EXIT_MESSAGE}"
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["distribution"] for d in data] == ["sparsecore", "good-dist", "later-dist", "exit-dist"]
    assert data[-1] == {"distribution": "exit-dist", "version": "0.1", "module": "exit_dist.plugin",
                        "registrations": [], "load_errors": ["entry point 'exit_dist.plugin': SystemExit(3)"]}


def test_sparsifier_works_when_a_plugin_exits_at_import(exiting_plugin):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="exit-dist"):
        sp = sparsecore.Sparsifier(model, opt, algorithm="set", density=0.5, total_steps=10, seed=0)
    assert sp.nnz == 16
    assert [f.message for f in registry.load_failures] == [EXIT_MESSAGE]


@pytest.mark.slow
def test_console_commands_survive_an_installed_plugin_that_exits(tmp_path):
    """A real distribution on sys.path whose module calls sys.exit(3) at import (second process)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "exit_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "exit_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: exit-plugin\n"
                                                               "Version: 0.1\n")
    (site / "exit_plugin-0.1.dist-info" / "entry_points.txt").write_text("[sparsecore]\nexit_plugin = exit_plugin\n")
    (site / "exit_plugin.py").write_text("import sys\nsys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k not in (AUTOLOAD_ENV, "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::RuntimeWarning")
    listed = subprocess.run([sys.executable, "-m", "sparsecore", "plugins"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert ("failed to load: exit-plugin 0.1: entry point 'exit_plugin' failed to load: SystemExit(3)"
            in listed.stdout.splitlines())
    assert [line for line in listed.stdout.splitlines() if line.startswith("  algorithm set: hooks ")]
    trained = subprocess.run(
        [sys.executable, "-m", "sparsecore", "train", "--algorithm", "set", "--dataset", "random",
         "--limit-train", "40", "--limit-test", "20", "--epochs", "1", "--threads", "1", "--no-plots", "--quiet",
         "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1


# -- a name two distributions register ------------------------------------------------------------


class SharedLogger:
    """A non-algorithm plugin two distributions register under one name."""

    @hookimpl
    def on_step(self, step):
        pass


@pytest.fixture
def two_dists_one_name(global_registry, entry_points):
    """dist-a and Dist_B both register algorithm 'shared-algo' and plugin 'shared-logger'."""
    entry_points[:] = [
        FakeEntryPoint("dist-a", plugin_module("dist_a.plugin", [("shared-algo", Algo), ("a-only", Algo)],
                                               plugins=[("shared-logger", SharedLogger)]), version="1.0"),
        FakeEntryPoint("Dist_B", plugin_module("dist_b.plugin", [("b-only", OtherAlgo), ("shared-algo", OtherAlgo)],
                                               plugins=[("shared-logger", SharedLogger)]), version="2.0"),
    ]
    return global_registry


def build(algorithm="set", **kwargs):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.5, total_steps=10, seed=0, **kwargs)


AMBIGUOUS_ALGO = ("algorithm 'shared-algo' is registered by 2 distributions: 'dist-a' 1.0 (module dist_a.plugin) "
                  "and 'Dist_B' 2.0 (module dist_b.plugin); choose one by its qualified name, "
                  "'dist-a:shared-algo' or 'Dist_B:shared-algo', or uninstall all but one")


def test_a_name_two_distributions_register_is_an_error_naming_both(two_dists_one_name):
    from sparsecore.errors import AmbiguousNameError

    with pytest.raises(AmbiguousNameError) as info:
        build("shared-algo")
    assert str(info.value) == AMBIGUOUS_ALGO
    assert isinstance(info.value, sparsecore.ConfigurationError)
    assert registry.load_failures == []  # both distributions loaded


def test_other_names_of_both_distributions_keep_working(two_dists_one_name):
    assert type(build("a-only").algorithm) is Algo
    assert type(build("b-only").algorithm) is OtherAlgo
    assert sorted(registry.algorithms) == ["a-only", "b-only", "set", "shared-algo", "static"]
    assert [r.name for r in registry.distributions["Dist_B"].registrations] == ["b-only", "shared-algo",
                                                                              "shared-logger"]


@pytest.mark.parametrize(("qualified", "chosen"), [
    ("dist-a:shared-algo", Algo), ("Dist_B:shared-algo", OtherAlgo),
    ("dist-b:shared-algo", OtherAlgo), ("DIST.b:shared-algo", OtherAlgo),
])
def test_a_qualified_name_picks_one_distribution(two_dists_one_name, qualified, chosen):
    sp = build(qualified)
    assert type(sp.algorithm) is chosen
    assert registry.algorithm(qualified).factory is chosen


@pytest.mark.parametrize(("qualified", "message"), [
    ("dist-a:b-only", "unknown algorithm 'dist-a:b-only': distribution 'dist-a' registers no algorithm 'b-only' "
                      "(did you mean 'a-only'?); its algorithms: a-only, shared-algo"),
    ("dist-c:shared-algo", "unknown algorithm 'dist-c:shared-algo': no distribution 'dist-c' registers algorithms "
                           "(did you mean 'dist-a'?); distributions that do: Dist_B, dist-a, sparsecore"),
])
def test_a_qualified_name_nobody_registered_says_what_exists(two_dists_one_name, qualified, message):
    with pytest.raises(sparsecore.UnknownAlgorithmError) as info:
        registry.algorithm(qualified)
    assert str(info.value) == message


def test_non_algorithm_plugins_follow_the_same_rule(two_dists_one_name):
    from sparsecore.errors import AmbiguousNameError

    with pytest.raises(AmbiguousNameError, match="^plugin 'shared-logger' is registered by 2 distributions: 'dist-a'"):
        build(plugins=["shared-logger"])
    sp = build(plugins=["dist-b:shared-logger"])
    assert [type(p) for p in sp.plugins] == [SharedLogger]


def test_registering_an_ambiguous_name_from_code_names_both(two_dists_one_name):
    with pytest.raises(sparsecore.ConfigurationError) as info:
        registry.register_algorithm("shared-algo", Algo)
    assert str(info.value) == "algorithm 'shared-algo' is already registered by 'dist-a' and 'Dist_B'"
    registry.unregister("shared-algo")
    assert "shared-algo" not in registry.algorithms and registry.ambiguous == {
        ("plugin", "shared-logger"): registry.ambiguous[("plugin", "shared-logger")]}
    assert registry.register_algorithm("shared-algo", Algo).distribution == "<code>"
    assert build("shared-algo").algorithm_name == "shared-algo"


def test_three_distributions_and_the_same_distribution_twice(global_registry, entry_points):
    from sparsecore.errors import AmbiguousNameError

    entry_points[:] = [FakeEntryPoint(d, plugin_module(f"{d}.plugin", [("clash", Algo)])) for d in ("x1", "x2", "x3")]
    # a second entry point of x2 registers the name again: it replaces x2's own, no new rival
    entry_points.append(FakeEntryPoint("x2", plugin_module("x2.extra", [("clash", OtherAlgo)])))
    with pytest.raises(AmbiguousNameError) as info:
        registry.algorithm("clash")
    assert str(info.value).startswith("algorithm 'clash' is registered by 3 distributions: 'x1' 1.0 (module "
                                      "x1.plugin) and 'x2' 1.0 (module x2.extra) and 'x3' 1.0 (module x3.plugin);")
    assert registry.algorithm("x2:clash").factory is OtherAlgo
    assert [r.module for r in registry.distributions["x2"].registrations] == ["x2.extra"]


@pytest.mark.parametrize("name", ["dist:algo", "", "   ", 3])
def test_names_that_cannot_be_looked_up_are_refused_at_registration(entry_points, name):
    entry_points.append(FakeEntryPoint("odd-dist", plugin_module("odd_plugin", [("fine", Algo), (name, Algo)])))
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="odd-dist"):
        reg.load()
    assert sorted(reg.algorithms) == ["set", "static"]
    expected = (f"odd-dist: algorithm name {name!r} must not contain ':' (it separates a distribution from a name, "
                "as in 'dist-name:algo-name')" if name == "dist:algo" else
                f"odd-dist: algorithm name must be a non-empty string, got {name!r}")
    assert reg.load_failures[0].error == repr(sparsecore.ConfigurationError(expected))
    with pytest.raises(sparsecore.ConfigurationError) as info:
        reg.register_algorithm(name, Algo, distribution="odd-dist")
    assert str(info.value) == expected


def test_plugins_command_shows_a_name_two_distributions_register(two_dists_one_name, capsys):
    import json

    from sparsecore.cli import main

    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  algorithm shared-algo: hooks redistribute; also registered by Dist_B: choose this one as " \
           "'dist-a:shared-algo'" in lines
    assert "  algorithm shared-algo: hooks redistribute; also registered by dist-a: choose this one as " \
           "'Dist_B:shared-algo'" in lines
    assert "  algorithm a-only: hooks redistribute" in lines
    assert main(["plugins", "--json"]) == 0
    data = {d["distribution"]: d for d in json.loads(capsys.readouterr().out)}
    assert {r["name"]: r["also_registered_by"] for r in data["Dist_B"]["registrations"]} == {
        "b-only": [], "shared-algo": ["dist-a"], "shared-logger": ["dist-a"]}


# -- names: case, did-you-mean; the autoload switch -----------------------------------------------


@pytest.fixture
def momentum_dist(global_registry, entry_points):
    """A distribution registering algorithm 'sparse-momentum' and plugin 'Kernel-Logger'."""
    entry_points.append(FakeEntryPoint("sparse-momentum", plugin_module("sparse_momentum.plugin",
                                                                        [("sparse-momentum", OtherAlgo)],
                                                                        plugins=[("Kernel-Logger", SharedLogger)])))
    return global_registry


@pytest.mark.parametrize("name", ["SET", "Set", "set"])
def test_builtin_algorithm_names_match_case_insensitively(momentum_dist, name):
    assert type(build(name).algorithm) is sparsecore.algorithms.SetAlgorithm
    assert registry.algorithm(name) is registry.algorithms["set"]


def test_registered_names_match_case_insensitively(momentum_dist):
    assert type(build("Sparse-Momentum").algorithm) is OtherAlgo
    assert registry.algorithm("SPARSE-MOMENTUM:SPARSE-MOMENTUM").factory is OtherAlgo
    assert [type(p) for p in build(plugins=["kernel-logger"]).plugins] == [SharedLogger]
    assert registry.plugin("KERNEL-LOGGER").name == "Kernel-Logger"
    with pytest.raises(sparsecore.ConfigurationError, match="^plugin 'kernel-logger' is already registered by "
                                                            "'sparse-momentum'$"):
        registry.register_plugin("kernel-logger", SharedLogger)


def test_names_differing_only_in_case_from_two_distributions_are_ambiguous(global_registry, entry_points):
    from sparsecore.errors import AmbiguousNameError

    entry_points[:] = [FakeEntryPoint("dist-a", plugin_module("dist_a.plugin", [("My-Algo", Algo)])),
                       FakeEntryPoint("dist-b", plugin_module("dist_b.plugin", [("my-algo", OtherAlgo)]))]
    with pytest.raises(AmbiguousNameError, match="^algorithm 'MY-ALGO' is registered by 2 distributions"):
        registry.algorithm("MY-ALGO")
    assert registry.algorithm("dist-b:My-Algo").factory is OtherAlgo


@pytest.mark.parametrize(("kind", "name", "message"), [
    ("algorithm", "sparse-momentun",
     "unknown algorithm 'sparse-momentun' (did you mean 'sparse-momentum'?); available: set, sparse-momentum, static. "
     "Install the distribution that provides it (e.g. `pip install sparse-momentum`)."),
    ("algorithm", "SPARSE_MOMENTUM",
     "unknown algorithm 'SPARSE_MOMENTUM' (did you mean 'sparse-momentum'?); available: set, sparse-momentum, "
     "static. Install the distribution that provides it (e.g. `pip install sparse-momentum`)."),
    ("algorithm", "stat1c",
     "unknown algorithm 'stat1c' (did you mean 'static'?); available: set, sparse-momentum, static. "
     "Install the distribution that provides it (e.g. `pip install sparse-momentum`)."),
    ("algorithm", "rigl",
     "unknown algorithm 'rigl'; available: set, sparse-momentum, static. "
     "Install the distribution that provides it (e.g. `pip install sparse-momentum`)."),
    ("algorithm", "kernel-logger",
     "unknown algorithm 'kernel-logger' ('kernel-logger' is a plugin, not an algorithm: pass it in plugins=[...]); "
     "available: set, sparse-momentum, static. "
     "Install the distribution that provides it (e.g. `pip install sparse-momentum`)."),
    ("plugin", "kernel-loger", "unknown plugin 'kernel-loger' (did you mean 'Kernel-Logger'?); available: "
                               "Kernel-Logger."),
    ("plugin", "tensorboard", "unknown plugin 'tensorboard'; available: Kernel-Logger."),
    ("plugin", "Sparse-Momentum", "unknown plugin 'Sparse-Momentum' ('Sparse-Momentum' is an algorithm: pass it as "
                                  "algorithm=); available: Kernel-Logger."),
])
def test_unknown_names_suggest_the_closest(momentum_dist, kind, name, message):
    with pytest.raises(sparsecore.UnknownAlgorithmError) as info:
        build(name) if kind == "algorithm" else build(plugins=[name])
    assert str(info.value) == message


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", " on ", "On"])
def test_autoload_switch_values_that_disable(global_registry, entry_points, monkeypatch, value):
    entry_points.append(FakeEntryPoint("sparse-momentum", plugin_module("sparse_momentum.plugin",
                                                                        [("sparse-momentum", OtherAlgo)])))
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    assert sparsecore.available_algorithms() == ["set", "static"]
    assert registry.autoload is False
    with pytest.raises(sparsecore.UnknownAlgorithmError) as info:
        build("sparse-momentum")
    assert str(info.value) == (
        f"unknown algorithm 'sparse-momentum'; available: set, static. Entry-point loading is disabled "
        f"(SPARSECORE_DISABLE_PLUGIN_AUTOLOAD={value!r}), so installed distributions were not loaded: unset it, "
        "or register the algorithm in code.")
    with pytest.raises(sparsecore.UnknownAlgorithmError, match=r"^unknown plugin 'x'; available: none\. "
                                                               r"Entry-point loading is disabled"):
        registry.plugin("x")


@pytest.mark.parametrize("value", ["0", "false", "False", "NO", "off", "", "  "])
def test_autoload_switch_values_that_enable(global_registry, entry_points, monkeypatch, value):
    entry_points.append(FakeEntryPoint("sparse-momentum", plugin_module("sparse_momentum.plugin",
                                                                        [("sparse-momentum", OtherAlgo)])))
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    assert sparsecore.available_algorithms() == ["set", "sparse-momentum", "static"]
    assert registry.autoload is True


@pytest.mark.parametrize("value", ["maybe", "2", "disable", "y", "1 1"])
def test_autoload_switch_refuses_other_values(global_registry, entry_points, monkeypatch, capsys, value):
    from sparsecore.cli import main

    monkeypatch.setenv(AUTOLOAD_ENV, value)
    message = (f"SPARSECORE_DISABLE_PLUGIN_AUTOLOAD={value!r} is not understood: use 1, true, yes, on to disable "
               "entry-point loading, or 0, false, no, off or empty to enable it")
    with pytest.raises(sparsecore.ConfigurationError) as info:
        build("set")
    assert str(info.value) == message
    assert registry.algorithms == {}  # nothing loaded: the next lookup reads the switch again
    assert main(["plugins"]) == 2
    assert capsys.readouterr() == ("", f"sparsecore plugins: error: {message}\n")
    monkeypatch.setenv(AUTOLOAD_ENV, "yes")
    assert type(build("set").algorithm) is sparsecore.algorithms.SetAlgorithm


def test_plugins_command_says_when_autoload_is_off(global_registry, monkeypatch, capsys):
    from sparsecore.cli import main

    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert main(["plugins"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: entry-point loading is disabled (SPARSECORE_DISABLE_PLUGIN_AUTOLOAD); installed plugins are not listed")
