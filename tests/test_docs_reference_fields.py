"""The API reference shows every public class of the rendered modules with its fields.

mkdocstrings renders a class's fields from its docstring (``Attributes:`` or,
for a dataclass whose fields are its constructor's arguments, ``Args:``), so
every field of a public dataclass, and every annotated public class attribute,
must be named there; otherwise the reference page shows the class without it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

from docs_support import DOCS

_RENDERED = re.compile(r"^(?:::: |<!-- api: )(?P<module>[\w.]+)", re.MULTILINE)
_SECTION = re.compile(r"^\s*(Attributes|Args|Arguments|Parameters):\s*$")


def _rendered_modules() -> list[str]:
    pages = [*(DOCS / "reference").glob("*.md"), DOCS / "hooks.md"]
    found = {m.group("module") for page in pages for m in _RENDERED.finditer(page.read_text(encoding="utf-8"))}
    return sorted(found)


def _submodules(name: str) -> list[str]:
    """``name`` and, for a package, the public modules under it (the pages render them with show_submodules)."""
    module = importlib.import_module(name)
    names = [name]
    path = getattr(module, "__path__", None)
    if path:
        import pkgutil

        for info in pkgutil.iter_modules(path):
            if not info.name.startswith("_"):
                names.extend(_submodules(f"{name}.{info.name}"))
    return names


def _documented_names(doc: str) -> set[str]:
    """Names listed in the docstring's Attributes/Args sections (``name:`` or ``name (type):`` at the item indent)."""
    names, indent, inside = set(), None, False
    for line in doc.splitlines():
        if _SECTION.match(line):
            inside, indent = True, None
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        current = len(line) - len(line.lstrip())
        if indent is None:
            indent = current
        if current < indent:
            inside = False
            if _SECTION.match(line):
                inside = True
            continue
        if current == indent:
            m = re.match(r"\s*\**(\w+)\**\s*(\([^)]*\))?:", line)
            if m:
                names.add(m.group(1))
    return names


def _public_classes() -> list[tuple[str, type]]:
    classes = {}
    for top in _rendered_modules():
        try:
            modules = _submodules(top)
        except ImportError as exc:  # an optional dependency (e.g. triton) is missing
            pytest.skip(f"{top} cannot be imported here: {exc}")
        for name in modules:
            module = importlib.import_module(name)
            for attr, value in vars(module).items():
                if inspect.isclass(value) and value.__module__ == name and not attr.startswith("_"):
                    classes[f"{name}.{attr}"] = value
    return sorted(classes.items())


def _fields(cls: type) -> list[str]:
    """Public dataclass fields and annotated class attributes of ``cls`` itself."""
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    else:
        names = [n for n in vars(cls).get("__annotations__", {}) if not n.startswith("_")]
    return [n for n in names if not n.startswith("_")]


CLASSES = _public_classes()


@pytest.mark.parametrize(("qualname", "cls"), CLASSES, ids=[q for q, _ in CLASSES])
def test_every_field_of_a_public_class_is_documented(qualname: str, cls: type) -> None:
    fields = _fields(cls)
    if not fields:
        return
    documented = _documented_names(inspect.getdoc(cls) or "")
    for base in cls.__mro__[1:]:  # fields inherited from a documented base are shown there
        documented |= _documented_names(inspect.getdoc(base) or "") if base is not object else set()
    missing = [name for name in fields if name not in documented]
    assert not missing, (f"{qualname}: fields {missing} are not in its docstring's Attributes (or Args) section, "
                         f"so the API reference does not show them")
