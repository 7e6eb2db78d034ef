"""Every package is releasable on its own: metadata, version file, README, entry point, and a safe core bound."""

from __future__ import annotations

import re
import sys

import pytest

from docs_support import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (a hatch-test dependency there)
    import tomli as tomllib

PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
#: The core release whose plugin API (``sparsecore.Algorithm``, ``UpdateSchedule``, ``plan_update``) the plugins use.
CORE_API = "0.4"


def _meta(pkg):
    return tomllib.loads((pkg / "pyproject.toml").read_text(encoding="utf-8"))


def _version(pkg) -> str:
    version_file = pkg / _meta(pkg)["tool"]["hatch"]["version"]["path"]
    return re.search(r'^__version__ = "(\d+\.\d+\.\d+)"$', version_file.read_text(encoding="utf-8"), re.MULTILINE)[1]


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
    """``sparsecore>=0.4``: the core API the plugins use; a lower bound of 0.3 or more also keeps resolvers away
    from the unrelated ``sparsecore`` 0.1.x on the public index."""
    deps = [d.replace(" ", "") for d in _meta(pkg)["project"]["dependencies"]]
    core = [d for d in deps if re.match(r"sparsecore(?![\w-])", d)]
    expected = f"sparsecore>={CORE_API}"
    assert core == [expected], f"{pkg.name}: core requirement is {core}, expected exactly {expected!r}"


def test_the_core_of_this_tree_satisfies_the_plugins_bound() -> None:
    core = tuple(int(part) for part in _version(ROOT / "packages" / "sparsecore").split("."))
    assert core[:2] >= tuple(int(part) for part in CORE_API.split(".")), core


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.name)
def test_changelog_describes_the_version_about_to_be_released(pkg) -> None:
    """``CHANGELOG.md`` (Keep a Changelog): its newest section is ``[Unreleased]`` naming the version in
    ``__about__.py``, or that version's own section once released."""
    changelog = (pkg / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## \[([^\]]+)\](.*?)(?=^## |\Z)", changelog, re.MULTILINE | re.DOTALL)
    assert sections, f"{pkg.name}: CHANGELOG.md has no '## [...]' section"
    newest, body = sections[0]
    version = _version(pkg)
    if newest == "Unreleased":
        assert f"released as {version}" in body, f"{pkg.name}: [Unreleased] does not name version {version}"
        assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", body, re.MULTILINE)
    else:
        assert newest == version, f"{pkg.name}: newest CHANGELOG section is {newest}, the package is {version}"
    released = [name for name, _ in sections[1:]]
    assert version not in released, f"{pkg.name}: {version} was released already; bump __about__.py"


#: Distributions that connect sparsecore to a training framework (used from that framework's callbacks);
#: they register nothing with sparsecore.
INTEGRATIONS = {"sparsecore-lightning", "sparsecore-transformers"}


def _is_integration(pkg) -> bool:
    return _meta(pkg)["project"]["name"] in INTEGRATIONS


def test_the_integrations_are_there_and_register_no_plugin() -> None:
    integrations = [p for p in PACKAGES if _is_integration(p)]
    assert {_meta(p)["project"]["name"] for p in integrations} == INTEGRATIONS
    for pkg in integrations:
        assert "sparsecore" not in _meta(pkg)["project"].get("entry-points", {}), \
            f"{pkg.name}: an integration registers no sparsecore plugin"


@pytest.mark.parametrize("pkg", [p for p in PACKAGES if p.name != "sparsecore" and not _is_integration(p)],
                         ids=lambda p: p.name)
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
