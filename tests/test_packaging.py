"""Every package is releasable on its own: metadata, version file, README, entry point, and a safe core bound."""

from __future__ import annotations

import re

import pytest

from docs_support import ROOT

tomllib = pytest.importorskip("tomllib")

PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _meta(pkg):
    return tomllib.loads((pkg / "pyproject.toml").read_text(encoding="utf-8"))


def test_all_six_packages_are_there() -> None:
    names = {_meta(p)["project"]["name"] for p in PACKAGES}
    assert names >= {"sparsecore", "sparse-momentum", "sparsecore-swat", "sparsecore-dsd", "snip-baseline",
                     "sparse-kernels-cuda"}


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_builds_with_hatchling_from_its_own_version_file(pkg) -> None:
    meta = _meta(pkg)
    assert meta["build-system"]["build-backend"] == "hatchling.build"
    assert meta["project"]["dynamic"] == ["version"]
    version_file = pkg / meta["tool"]["hatch"]["version"]["path"]
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', version_file.read_text(encoding="utf-8"), re.MULTILINE)
    for src in meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert (pkg / src / "__init__.py").is_file(), f"{pkg.name}: wheel package {src} has no __init__.py"
    assert meta["project"]["readme"] == "README.md" and (pkg / "README.md").stat().st_size > 200
    assert meta["project"]["requires-python"] == ">=3.10"


@pytest.mark.parametrize("pkg", [p for p in PACKAGES if p.name != "sparsecore"], ids=lambda p: p.name)
def test_plugin_needs_our_core_with_a_lower_bound_only(pkg) -> None:
    """``sparsecore>=0.3`` keeps resolvers away from the unrelated ``sparsecore`` 0.1.x on the public index."""
    deps = [d.replace(" ", "") for d in _meta(pkg)["project"]["dependencies"]]
    core = [d for d in deps if re.match(r"sparsecore(?![\w-])", d)]
    assert core == ["sparsecore>=0.3"], f"{pkg.name}: core requirement is {core}, expected exactly 'sparsecore>=0.3'"


@pytest.mark.parametrize("pkg", [p for p in PACKAGES if p.name != "sparsecore"], ids=lambda p: p.name)
def test_plugin_entry_point_module_exists(pkg) -> None:
    meta = _meta(pkg)
    entry_points = meta["project"]["entry-points"]["sparsecore"]
    assert len(entry_points) == 1, f"{pkg.name}: expose exactly one module in the 'sparsecore' group"
    (module,) = entry_points.values()
    assert (pkg / "src" / (module.replace(".", "/") + ".py")).is_file(), f"{pkg.name}: {module} not found"


def test_core_exposes_the_cli_and_the_pytest_plugin() -> None:
    meta = _meta(ROOT / "packages" / "sparsecore")
    assert meta["project"]["scripts"] == {"sparsecore": "sparsecore.cli:main"}
    assert meta["project"]["entry-points"]["pytest11"] == {"sparsecore": "sparsecore.testing"}


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_package_is_typed(pkg) -> None:
    """PEP 561: every import package carries ``py.typed`` (its wheel takes the whole folder)."""
    for src in _meta(pkg)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert (pkg / src / "py.typed").is_file(), f"{pkg.name}: {src}/py.typed is missing"


def test_mypy_checks_every_package_from_its_src_folder() -> None:
    """``mypy_path`` names each package's src/ folder, so ``src/<module>`` is checked as ``<module>``."""
    mypy = _meta(ROOT)["tool"]["mypy"]
    expected = sorted(f"packages/{pkg.name}/src" for pkg in PACKAGES)
    assert sorted(mypy["mypy_path"]) == expected, "add the new package's src folder to [tool.mypy] mypy_path"
    assert mypy["files"] == ["packages/*/src"] and mypy["explicit_package_bases"] is True
