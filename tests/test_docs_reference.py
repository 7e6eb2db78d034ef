"""The API reference renders every public module of sparsecore, and every reference page says what it covers."""

from __future__ import annotations

import re

import pytest

from docs_support import DOCS, ROOT

REFERENCE = DOCS / "reference"
CORE_SRC = ROOT / "packages" / "sparsecore" / "src" / "sparsecore"
_RENDERED = re.compile(r"^(?:::: |<!-- api: )(?P<module>[\w.]+)", re.MULTILINE)


def _public_core_modules() -> list[str]:
    """``sparsecore`` and its public modules and subpackages (one level down), as dotted names."""
    names = ["sparsecore"]
    for path in sorted(CORE_SRC.iterdir()):
        stem = path.stem if path.suffix == ".py" else path.name
        if stem.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
            continue
        names.append(f"sparsecore.{stem}")
    return names


def _rendered_modules() -> set[str]:
    pages = [*REFERENCE.glob("*.md"), DOCS / "hooks.md"]
    return {m.group("module") for page in pages for m in _RENDERED.finditer(page.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("module", _public_core_modules())
def test_every_public_core_module_is_rendered(module: str) -> None:
    assert module in _rendered_modules(), \
        f"no reference page renders {module}; add '::: {module}' with a line of prose to a page under docs/reference/"


def test_the_algorithm_api_is_on_one_page() -> None:
    text = (REFERENCE / "sparsecore-algorithms.md").read_text(encoding="utf-8")
    for module in ("sparsecore.algorithm", "sparsecore.schedules", "sparsecore.topology", "sparsecore.selection"):
        assert re.search(rf"^::: {re.escape(module)}$", text, re.MULTILINE), module


@pytest.mark.parametrize("page", sorted(p.name for p in REFERENCE.glob("*.md")))
def test_every_reference_page_opens_with_prose(page: str) -> None:
    text = (REFERENCE / page).read_text(encoding="utf-8")
    first = _RENDERED.search(text)
    before = text if first is None else text[:first.start()]
    prose = [line for line in before.splitlines() if line.strip() and not line.startswith("#")]
    assert sum(len(line.split()) for line in prose) >= 15, \
        f"docs/reference/{page}: say in a few sentences what the page covers before its first ':::'"
