"""Entry-point discovery, the algorithm registry and `sparsecore plugins`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import sparsecore
from sparsecore import hookimpl
from sparsecore.cli import main
from sparsecore.plugins import Registry, implemented_hooks

from core_helpers import mlp


class Halver:
    """Prunes normally; grows nothing back (test algorithm)."""

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


def test_registered_algorithm_removed_after_test():
    assert "halver" not in sparsecore.available_algorithms()


def test_implemented_hooks_of_class_and_instance():
    assert implemented_hooks(Halver) == ["redistribute"]
    assert implemented_hooks(Halver()) == ["redistribute"]


def test_duplicate_names_from_two_distributions_are_an_error():
    reg = Registry()
    reg.load()

    class FakeModule:
        __name__ = "fake"

        @staticmethod
        @hookimpl
        def sparsecore_register_algorithms(register):
            register("set", Halver)

    with pytest.raises(sparsecore.ConfigurationError, match="registered by both 'sparsecore' and 'fake-dist'"):
        reg._register_module(FakeModule, "fake-dist", "1.0")


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
    assert reg.algorithms["set"].hooks() == ["on_epoch_end", "on_setup", "on_step"]


def test_plugins_command_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"sparsecore {sparsecore.__version__}" in out
    assert "algorithm set: hooks on_epoch_end, on_setup, on_step" in out
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    core = next(d for d in data if d["distribution"] == "sparsecore")
    assert {r["name"] for r in core["registrations"]} >= {"set", "static"}


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "sparsecore", "plugins"], capture_output=True, text=True,
                         env={"SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": ""}, check=True).stdout
    assert "algorithm static" in out
