"""Broken plugins at the command line.

Distributions whose module raises ``ImportError`` or calls ``sys.exit()`` at import, and plugins (given with
``--plugins``) that raise in a hook, when built or when saved: ``sparsecore train`` prints one line naming the
plugin (or the distribution that failed to load) and exits with status 2; runs that do not use them train;
``sparsecore plugins`` still lists the others. Entry points are faked as in ``test_plugin_loading.py``.
"""

from __future__ import annotations

import re
import sys

import pytest

import sparsecore
from sparsecore import cli, hookimpl

from test_plugin_loading import FakeEntryPoint, plugin_module

RUN = ["train", "--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
       "--batch-size", "20", "--epochs", "2", "--density", "0.3", "--threads", "1", "--no-plots", "--quiet"]


class Logger:
    """A plugin that works: counts steps."""

    def __init__(self):
        self.steps = 0

    @hookimpl
    def on_step(self, sparsifier, step):
        self.steps += 1


class FailsWhenBuilt:
    @hookimpl
    def on_step(self, sparsifier, step):
        pass

    def __init__(self):
        raise RuntimeError("cannot build")


class FailsOnSetup:
    @hookimpl
    def on_setup(self, sparsifier):
        raise RuntimeError("on_setup broke")


class FailsBeforeOptimizerStep:
    @hookimpl
    def before_optimizer_step(self, sparsifier, step):
        raise TypeError("before_optimizer_step broke")


class FailsInSelectGrow:
    @hookimpl
    def select_grow(self, sparsifier, layer, n, update):
        raise IndexError("select_grow broke")


class FailsOnEpochEnd:
    @hookimpl
    def on_epoch_end(self, sparsifier, epoch):
        if epoch == 1:  # the second epoch: the run folder keeps the checkpoint of the first
            raise ValueError("on_epoch_end broke")


class FailsWhenSaved(Logger):
    def state_dict(self):
        raise AttributeError("state_dict broke")


class ExitsOnStep:
    @hookimpl
    def on_step(self, sparsifier, step):
        sys.exit(5)


class ImportsOnStep:
    @hookimpl
    def on_step(self, sparsifier, step):
        import sparsecore_optional_dependency_that_is_not_installed  # noqa: F401


class RefusesOnSetup:
    @hookimpl
    def on_setup(self, sparsifier):
        raise sparsecore.ConfigurationError("refuses: this plugin needs a convolution")


FAULTY = {"fails-when-built": FailsWhenBuilt, "fails-on-setup": FailsOnSetup,
          "fails-before-optimizer-step": FailsBeforeOptimizerStep, "fails-in-select-grow": FailsInSelectGrow,
          "fails-on-epoch-end": FailsOnEpochEnd, "fails-when-saved": FailsWhenSaved, "exits-on-step": ExitsOnStep,
          "imports-on-step": ImportsOnStep, "refuses-on-setup": RefusesOnSetup}


def _exit_at_import():
    raise SystemExit(3)


def _import_error_at_import():
    raise ImportError("No module named 'missing_dependency'")


@pytest.fixture
def installed(monkeypatch):
    """The process-wide registry loading these distributions only: two that fail at import, one with a good
    algorithm and plugin, one with the faulty plugins. Restored afterwards."""
    import importlib.metadata

    from sparsecore.plugins import registry

    eps = [FakeEntryPoint("import-dist", load=_import_error_at_import),
           FakeEntryPoint("good-dist", plugin_module("good_dist.plugin", [("good-algo", Logger)],
                                                     plugins=[("good-logger", Logger)])),
           FakeEntryPoint("exit-dist", load=_exit_at_import),
           FakeEntryPoint("broken-dist", plugin_module("broken_dist.plugin", plugins=list(FAULTY.items())))]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **params: list(eps) if params.get("group") == "sparsecore" else real(**params))
    monkeypatch.delenv("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    saved = dict(vars(registry))
    registry.reset()
    with pytest.warns(RuntimeWarning, match="(import|exit)-dist 1.0: entry point"):
        registry.load()
    yield registry
    vars(registry).clear()
    vars(registry).update(saved)


FAILED_TO_LOAD = ("Plugins that failed to load: import-dist 1.0: entry point 'import_dist.plugin' failed to load: "
                  "ImportError(\"No module named 'missing_dependency'\"); exit-dist 1.0: entry point "
                  "'exit_dist.plugin' failed to load: SystemExit(3)")


def train(capsys, tmp_path, *flags: str) -> tuple[int, list[str]]:
    """``sparsecore train RUN flags`` in this process: exit status and stderr lines."""
    capsys.readouterr()
    code = cli.main([*RUN, "--runs-dir", str(tmp_path / "runs"), *flags])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


@pytest.mark.parametrize(("flags", "line"), [
    (["--plugins", "imported-logger"],
     f"unknown plugin 'imported-logger'; available: {', '.join(sorted(['good-logger', *FAULTY]))}. {FAILED_TO_LOAD}"),
    (["--algorithm", "exiting-algo"],
     "unknown algorithm 'exiting-algo'; available: good-algo, set, static. Install the distribution that provides it "
     f"(e.g. `pip install sparse-momentum`). {FAILED_TO_LOAD}"),
])
def test_asking_for_what_a_broken_distribution_would_register_names_it(installed, capsys, tmp_path, flags, line):
    assert train(capsys, tmp_path, *flags) == (2, [f"sparsecore train: error: {line}"])
    assert not (tmp_path / "runs").exists()


def test_runs_that_do_not_use_the_broken_distributions_train(installed, capsys, tmp_path):
    assert train(capsys, tmp_path, "--algorithm", "good-algo", "--plugins", "good-logger") == (0, [])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize(("name", "raised", "where", "message"), [
    ("fails-when-built", "RuntimeError", "__init__", "cannot build"),
    ("fails-on-setup", "RuntimeError", "on_setup", "on_setup broke"),
    ("fails-before-optimizer-step", "TypeError", "before_optimizer_step", "before_optimizer_step broke"),
    ("fails-in-select-grow", "IndexError", "select_grow", "select_grow broke"),
    ("fails-on-epoch-end", "ValueError", "on_epoch_end", "on_epoch_end broke"),
    ("fails-when-saved", "AttributeError", "state_dict", "state_dict broke"),
    ("exits-on-step", "SystemExit", "on_step", "5"),
    ("imports-on-step", "ModuleNotFoundError", "on_step",
     "No module named 'sparsecore_optional_dependency_that_is_not_installed'"),
])
def test_a_plugin_that_raises_is_one_line_naming_it(installed, capsys, tmp_path, name, raised, where, message):
    code, err = train(capsys, tmp_path, "--option", "update_every=1", "--plugins", "good-logger", name)
    assert code == 2 and len(err) == 1, err
    pattern = (rf"sparsecore train: error: plugin '{name}' \(broken-dist 1\.0\) raised {raised} in {where} at "
               rf"test_faults_cli_plugins\.py:\d+: {re.escape(message)}")
    assert re.fullmatch(pattern, err[0]), err[0]
    created = sorted((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
    if where in ("__init__", "on_setup"):
        assert created == []  # refused at set-up: nothing written
    elif name == "fails-on-epoch-end":
        (run_dir,) = created
        assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1  # epoch 1 kept, epoch 2 not recorded
        assert sparsecore.train.load_checkpoint(run_dir)[0]["epoch"] == 1


def test_a_plugin_refusing_with_a_configuration_error_keeps_its_own_message(installed, capsys, tmp_path):
    assert train(capsys, tmp_path, "--plugins", "refuses-on-setup") == (
        2, ["sparsecore train: error: refuses: this plugin needs a convolution"])


def test_plugins_command_lists_the_others(installed, capsys):
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  algorithm good-algo: hooks on_step" in lines and "  plugin good-logger: hooks on_step" in lines
    assert "  plugin fails-on-setup: hooks on_setup" in lines
    assert "  plugin fails-when-built: hooks on_step" in lines
    assert lines[-2:] == [
        "failed to load: import-dist 1.0: entry point 'import_dist.plugin' failed to load: "
        "ImportError(\"No module named 'missing_dependency'\")",
        "failed to load: exit-dist 1.0: entry point 'exit_dist.plugin' failed to load: SystemExit(3)"]


def test_an_error_no_plugin_raised_keeps_its_traceback(installed, tmp_path, monkeypatch):
    """A fault of sparsecore itself is not blamed on a plugin, nor hidden: the exception propagates."""
    from sparsecore.train import job

    monkeypatch.setattr(job, "evaluate", None)  # a bug in the harness: calling it raises in sparsecore's code
    with pytest.raises(TypeError, match="'NoneType' object is not callable"):
        cli.main([*RUN, "--runs-dir", str(tmp_path / "runs"), "--plugins", "good-logger"])
