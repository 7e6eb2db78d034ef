"""The worked plugin on the "Writing a plugin" page is exactly what ``sparsecore new-plugin gradient-growth`` writes."""

from __future__ import annotations

import re

from docs_support import DOCS

from sparsecore.templates import PluginNames, render_plugin

PAGE = DOCS / "writing-plugins.md"
_BLOCK = re.compile(r'^```[a-z]+ title="(?P<path>[^"]+)"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL)


def test_page_code_matches_the_template() -> None:
    files = render_plugin(PluginNames.from_algorithm("gradient-growth"))
    blocks = {m.group("path"): m.group("body") for m in _BLOCK.finditer(PAGE.read_text(encoding="utf-8"))}
    assert {"pyproject.toml", "src/sparsecore_gradient_growth/plugin.py", "tests/test_plugin.py"} <= set(blocks)
    for path, body in blocks.items():
        assert path in files, f"docs/writing-plugins.md shows {path}, which the template does not write"
        assert body.rstrip("\n") == files[path].rstrip("\n"), \
            f"docs/writing-plugins.md: {path} differs from the template; paste the output of " \
            "`sparsecore new-plugin gradient-growth`"
