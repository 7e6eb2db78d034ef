"""The built site renders in a real browser: headless Chromium opens the home and hooks pages and finds the hooks.

Uses ``site/`` when it is newer than every docs source (CI builds it with
``hatch run docs:build`` first); otherwise builds the site into a temporary
directory when MkDocs is importable. Skips, saying why, when Chromium or MkDocs
is missing.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docs_support import DOCS, ROOT, hook_specs

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
CORE_HOOKS = ("on_step", "on_epoch_end", "select_prune", "redistribute", "select_grow")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _sources_mtime() -> float:
    sources = [ROOT / "mkdocs.yml", ROOT / "scripts" / "docs_hooks.py", *DOCS.rglob("*")]
    sources += (ROOT / "packages").glob("*/src/**/*.py")
    return max(p.stat().st_mtime for p in sources if p.is_file())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = ROOT / "site"
    if (built / "index.html").is_file() and (built / "index.html").stat().st_mtime >= _sources_mtime():
        return built
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("no up-to-date site/ and MkDocs is not installed in this environment; "
                    "run `hatch run docs:build` first (CI does)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def dump_dom(tmp_path_factory: pytest.TempPathFactory):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    profile = tmp_path_factory.mktemp("chromium-profile")

    def dump(page: Path) -> str:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"chromium failed on {page}: {done.stderr[-2000:]}"
        return done.stdout

    return dump


def _text(dom: str) -> str:
    """Visible text of a DOM dump: tags dropped, entities decoded."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", "", dom))


def test_home_page_renders(site: Path, dump_dom) -> None:
    dom = dump_dom(site / "index.html")
    text = _text(dom)
    assert "<title>sparsecore</title>" in dom
    assert "Sparse training for PyTorch." in text
    for algorithm in ("static", "set", "sparse-momentum", "swat", "dsd", "snip"):
        assert algorithm in text, algorithm
    for hook in CORE_HOOKS:
        assert hook in text, hook
    # the theme's JavaScript ran: it adds the copy buttons of code blocks
    assert 'title="Copy to clipboard"' in dom


def test_hooks_page_renders_every_hook(site: Path, dump_dom) -> None:
    dom = dump_dom(site / "hooks" / "index.html")
    text = _text(dom)
    assert "Hooks reference - sparsecore" in dom
    for name in hook_specs():
        assert name in text, f"hook {name} not visible on the rendered hooks page"
        assert f'id="sparsecore.hookspecs.{name}"' in dom, f"no generated section for {name}"
