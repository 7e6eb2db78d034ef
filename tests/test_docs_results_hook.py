"""The MkDocs hook that embeds ``benchmarks/results/*.md`` (scripts/docs_hooks.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from docs_support import ROOT


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_results_become_a_note(tmp_path: Path) -> None:
    out = _hooks().render_results(tmp_path, "nothing*.md")
    assert out == ('!!! note "No results recorded yet"\n    No `benchmarks/results/nothing*.md` in this checkout. '
                   "The scripts under `benchmarks/` write them; rebuild the docs afterwards.\n")


def test_results_are_embedded_with_demoted_headings_and_local_links_as_text(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "b.md").write_text("# B\n\n![plot](b.png) see [raw](b.json) or [paper](https://x.org/p)\n"
                                  "```\n# not a heading\n```\n")
    (results / "a.md").write_text("## A\ntext\n")
    (results / "a.json").write_text("{}")
    out = _hooks().render_results(tmp_path, "*.md")
    assert out == ("<small>From `benchmarks/results/a.md`.</small>\n\n#### A\ntext\n\n"
                   "<small>From `benchmarks/results/b.md`.</small>\n\n### B\n\n"
                   "(figure `b.png` in the repository) see raw (`b.json`) or [paper](https://x.org/p)\n"
                   "```\n# not a heading\n```\n")


def test_markers_on_a_page_are_replaced(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "dsd.md").write_text("| a |\n|---|\n| 1 |\n")
    config = {"config_file_path": str(tmp_path / "mkdocs.yml")}
    page = "intro\n\n<!-- results: dsd*.md swat*.md -->\n\nend\n"
    out = _hooks().on_page_markdown(page, None, config, None)
    assert out == "intro\n\n<small>From `benchmarks/results/dsd.md`.</small>\n\n| a |\n|---|\n| 1 |\n\n\nend\n"


def test_api_marker_renders_present_modules_and_notes_absent_ones(tmp_path: Path) -> None:
    pkg = tmp_path / "packages" / "core" / "src" / "core"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text("")
    hooks = _hooks()
    assert hooks.render_api(tmp_path, "core") == "::: core\n"
    assert hooks.render_api(tmp_path, "core.engine") == "::: core.engine\n"
    assert hooks.render_api(tmp_path, "core.train") == ('!!! note "Not in this checkout"\n'
                                                        "    The module `core.train` is not part of this checkout.\n")
