"""Tests of the plugin template and ``sparsecore new-plugin``, including a full generate → install → test round trip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsecore import cli
from sparsecore.templates import PluginNames, render_plugin, render_text, write_plugin

EXPECTED_FILES = [
    "README.md",
    "pyproject.toml",
    "src/sparsecore_gradient_growth/__about__.py",
    "src/sparsecore_gradient_growth/__init__.py",
    "src/sparsecore_gradient_growth/plugin.py",
    "tests/test_plugin.py",
]


def test_names_derive_from_the_algorithm_name() -> None:
    names = PluginNames.from_algorithm("gradient-growth")
    assert names == PluginNames("gradient-growth", "sparsecore-gradient-growth", "sparsecore_gradient_growth",
                                "GradientGrowthAlgorithm")
    assert PluginNames.from_algorithm("rigl2", dist="acme-rigl").module == "acme_rigl"


@pytest.mark.parametrize("bad", ["Gradient", "grad_growth", "-x", "x--y", "1abc", ""])
def test_bad_algorithm_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="must be lowercase letters and digits"):
        PluginNames.from_algorithm(bad)


def test_render_text_fails_on_unknown_placeholder() -> None:
    assert render_text("a {{ x }} b {{x}}", {"x": "1"}) == "a 1 b {{x}}"
    with pytest.raises(KeyError, match="placeholder {{ y }} has no value"):
        render_text("{{ y }}", {"x": "1"})


def test_rendered_package_is_complete_and_has_no_placeholders_left() -> None:
    files = render_plugin(PluginNames.from_algorithm("gradient-growth"))
    assert sorted(files) == EXPECTED_FILES
    for path, text in files.items():
        assert "{{" not in text and "}}" not in text, path
    pyproject = files["pyproject.toml"]
    assert 'name = "sparsecore-gradient-growth"' in pyproject
    assert '[project.entry-points.sparsecore]\ngradient-growth = "sparsecore_gradient_growth.plugin"' in pyproject
    assert '"sparsecore>=0.3"' in pyproject
    for path, text in files.items():
        if path.endswith(".py"):
            compile(text, path, "exec")


OBSERVER_FILES = [
    "README.md",
    "pyproject.toml",
    "src/sparsecore_update_log/__about__.py",
    "src/sparsecore_update_log/__init__.py",
    "src/sparsecore_update_log/plugin.py",
    "tests/test_plugin.py",
]


def test_observer_kind_renders_a_plugin_package() -> None:
    names = PluginNames.from_algorithm("update-log", kind="observer")
    assert names.class_name == "UpdateLogObserver"
    files = render_plugin(names)
    assert sorted(files) == OBSERVER_FILES
    for path, text in files.items():
        assert "{{" not in text and "}}" not in text, path
        if path.endswith(".py"):
            compile(text, path, "exec")
    assert '[project.entry-points.sparsecore]\nupdate-log = "sparsecore_update_log.plugin"' in files["pyproject.toml"]
    plugin = files["src/sparsecore_update_log/plugin.py"]
    assert "def sparsecore_register_plugins(register)" in plugin and "sparsecore_register_algorithms" not in plugin
    with pytest.raises(ValueError, match="unknown plugin kind 'logger'; choose algorithm or observer"):
        PluginNames.from_algorithm("update-log", kind="logger")


def test_cli_kind_observer_writes_the_observer_package(tmp_path: Path, capsys) -> None:
    assert cli.main(["new-plugin", "update-log", "--kind", "observer", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "sparsecore-update-log"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == OBSERVER_FILES
    assert cli.main(["new-plugin", "gradient-growth", "--dir", str(tmp_path)]) == 0  # the default kind
    assert (tmp_path / "sparsecore-gradient-growth" / "src" / "sparsecore_gradient_growth" / "plugin.py").is_file()


def test_help_describes_both_kinds(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "new-plugin write a new plugin package: an algorithm (default) or an observer" in out
    assert "one hook" not in out


def test_cli_writes_the_package_and_refuses_a_non_empty_target(tmp_path: Path, capsys) -> None:
    assert cli.main(["new-plugin", "gradient-growth", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "sparsecore-gradient-growth"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == EXPECTED_FILES
    assert f"wrote {root}" in capsys.readouterr().out
    assert cli.main(["new-plugin", "gradient-growth", "--dir", str(tmp_path)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def _installer() -> list[str] | None:
    """A command installing a local project offline: pip with hatchling present, else uv (isolated build)."""
    for python in dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable)]):
        probe = subprocess.run([python, "-c", "import pip, hatchling"], capture_output=True)
        if probe.returncode == 0:
            return [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--no-deps", "--python", sys.executable, "--quiet"]
    return None


def _clean_env(extra_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD")}
    env["PYTHONPATH"] = os.pathsep.join([str(extra_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_generated_plugin_installs_and_its_tests_pass(tmp_path: Path) -> None:
    installer = _installer()
    if installer is None:
        pytest.skip("no installer: neither pip with hatchling nor uv is available in this environment")
    root = write_plugin("gradient-growth", tmp_path / "src")
    site = tmp_path / "site"  # installed with --target, so the test environment itself is left untouched
    done = subprocess.run([*installer, "--target", str(site), str(root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    entry_points = (site / "sparsecore_gradient_growth-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "[sparsecore]\ngradient-growth = sparsecore_gradient_growth.plugin" in entry_points

    env = _clean_env(site)
    listing = subprocess.run([sys.executable, "-m", "sparsecore", "plugins"], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "sparsecore-gradient-growth 0.1.0" in listing.stdout
    assert "algorithm gradient-growth: hooks before_optimizer_step, select_grow" in listing.stdout

    # the generated tests register the algorithm themselves: they pass without entry-point loading
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                           text=True, env={**env, "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": "1"}, cwd=root)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "23 passed" in tests.stdout  # 13 of them the conformance suite


@pytest.mark.slow
def test_generated_observer_installs_and_its_tests_pass(tmp_path: Path) -> None:
    installer = _installer()
    if installer is None:
        pytest.skip("no installer: neither pip with hatchling nor uv is available in this environment")
    root = write_plugin("update-log", tmp_path / "src", kind="observer")
    site = tmp_path / "site"
    done = subprocess.run([*installer, "--target", str(site), str(root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    env = _clean_env(site)
    listing = subprocess.run([sys.executable, "-m", "sparsecore", "plugins"], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
    assert "sparsecore-update-log 0.1.0" in listing.stdout
    assert "plugin update-log: hooks on_topology_update" in listing.stdout
    for autoload_off in ("0", "1"):
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], capture_output=True,
                               text=True, env={**env, "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD": autoload_off}, cwd=root)
        assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
        assert "9 passed" in tests.stdout
