"""MkDocs hooks: embed benchmark result tables, and API sections of modules that may be absent.

A page writes ``<!-- results: GLOB [GLOB ...] -->`` on a line of its own (e.g.
``<!-- results: dsd*.md -->``); the hook replaces it with every matching
Markdown file of ``benchmarks/results/`` (sorted by name), headings demoted
below the page's own, or with a note saying how to produce the results when no
file matches. Links and images in the embedded files that point at local files
become plain text, since those files are not part of the site, so a missing or
changing results file never breaks ``mkdocs build --strict``.

``<!-- api: package.module -->`` becomes ``::: package.module`` (rendered by
mkdocstrings) when the module exists under ``packages/*/src/``, and a note
otherwise: for parts of a package that are optional or still being written.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_DIR = Path("benchmarks") / "results"
_API = re.compile(r"^<!-- api: (?P<module>[\w.]+) -->[ \t]*$", re.MULTILINE)
_MARKER = re.compile(r"^<!-- results: (?P<glob>[^>]+?) -->[ \t]*$", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})(?= )", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?://)([^)\s]+)[^)]*\)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((?!https?://|#)([^)\s]+)[^)]*\)")


def _demote(text: str, levels: int) -> str:
    out, in_fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence:
            line = _HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels), line)
            line = _IMAGE.sub(lambda m: f"(figure `{m.group(2)}` in the repository)", line)
            line = _LINK.sub(lambda m: f"{m.group(1)} (`{m.group(2)}`)", line)
        out.append(line)
    return "\n".join(out)


def render_results(root: Path, patterns: str) -> str:
    """The Markdown that replaces one ``<!-- results: patterns -->`` marker (space-separated globs)."""
    found = {p for pattern in patterns.split() for p in (root / RESULTS_DIR).glob(pattern)}
    files = sorted(p for p in found if p.is_file() and p.suffix == ".md")
    if not files:
        wanted = ", ".join(f"`{RESULTS_DIR.as_posix()}/{p}`" for p in patterns.split())
        return (f'!!! note "No results recorded yet"\n    No {wanted} in this checkout. The scripts under '
                "`benchmarks/` write them; rebuild the docs afterwards.\n")
    parts = []
    for path in files:
        body = path.read_text(encoding="utf-8").strip()
        parts.append(f"<small>From `{path.relative_to(root).as_posix()}`.</small>\n\n{_demote(body, 2)}\n")
    return "\n".join(parts)


def render_api(root: Path, module: str) -> str:
    """The Markdown that replaces one ``<!-- api: module -->`` marker."""
    rel = Path(*module.split("."))
    for src in sorted(root.glob("packages/*/src")):
        if (src / rel / "__init__.py").is_file() or (src / rel).with_suffix(".py").is_file():
            return f"::: {module}\n"
    return f'!!! note "Not in this checkout"\n    The module `{module}` is not part of this checkout.\n'


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every results and API marker on the page."""
    root = Path(config["config_file_path"]).parent
    markdown = _API.sub(lambda m: render_api(root, m.group("module")), markdown)
    return _MARKER.sub(lambda m: render_results(root, m.group("glob").strip()), markdown)
