"""The hooks page documents every hook spec with its exact signature and first-result rule (as datasette does)."""

from __future__ import annotations

import re

import pytest

from docs_support import DOCS, hook_specs, signature

HOOKS_PAGE = DOCS / "hooks.md"
SPECS = hook_specs()


def _table_rows(text: str) -> dict[str, str]:
    """Rows of the "All hooks at a glance" table: signature -> kind column."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `(?P<sig>[a-z_]+\([^)]*\))` \| (?P<kind>[a-z-]+) \|", line)
        if m:
            rows[m.group("sig")] = m.group("kind")
    return rows


def test_pluggy_sees_the_five_core_hooks() -> None:
    assert {"on_step", "on_epoch_end", "select_prune", "redistribute", "select_grow"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_and_signature_are_on_the_hooks_page(name: str) -> None:
    args, _ = SPECS[name]
    sig = signature(name, args)
    text = HOOKS_PAGE.read_text(encoding="utf-8")
    assert sig in text, f"docs/hooks.md does not document {sig}; add it to the table and the argument notes"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_first_result_rule_is_documented(name: str) -> None:
    args, firstresult = SPECS[name]
    rows = _table_rows(HOOKS_PAGE.read_text(encoding="utf-8"))
    sig = signature(name, args)
    assert sig in rows, f"docs/hooks.md: no row for `{sig}` in the 'All hooks at a glance' table"
    assert rows[sig] == ("first-result" if firstresult else "broadcast"), \
        f"docs/hooks.md says {sig} is {rows[sig]!r}, the spec says firstresult={firstresult}"


def test_no_documented_hook_is_stale() -> None:
    rows = _table_rows(HOOKS_PAGE.read_text(encoding="utf-8"))
    current = {signature(n, a) for n, (a, _) in SPECS.items()}
    assert set(rows) == current, f"stale rows in docs/hooks.md: {sorted(set(rows) - current)}"


def test_hooks_page_generates_the_spec_docstrings() -> None:
    assert re.search(r"^::: sparsecore\.hookspecs$", HOOKS_PAGE.read_text(encoding="utf-8"), re.MULTILINE)


def test_every_argument_is_explained() -> None:
    text = HOOKS_PAGE.read_text(encoding="utf-8")
    explained = set(re.findall(r"^`([a-z_]+)`\n:   ", text, re.MULTILINE))
    used = {arg for args, _ in SPECS.values() for arg in args}
    assert used <= explained, f"arguments without an explanation in docs/hooks.md: {sorted(used - explained)}"
