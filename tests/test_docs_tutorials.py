"""Every code block of the tutorials and of the TensorBoard guide runs as printed.

A page's ``python`` blocks run in order in one namespace (a tutorial builds on
its earlier blocks), in a fresh working directory, with one torch thread.
``bash`` blocks run when every line is a ``sparsecore`` command (through the
command's own ``main``). A block may stay out of the checked set only when the
line right before it says why: ``<!-- not run: REASON -->``. Output shown as
``text`` blocks is not code.
"""

from __future__ import annotations

import re
import shlex
import warnings

import pytest
import torch

from docs_support import DOCS

PAGES = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "guides" / "tensorboard.md"]
_NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+?) -->$")
RUNNABLE = {"python", "bash"}


def blocks(page) -> list[tuple[str, str, str | None]]:
    """``(language, code, reason it is not run or None)`` of every fenced block of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(r"^```(?P<lang>[a-z]*)[^\n]*\n(?P<body>.*?)^```$", text, re.MULTILINE | re.DOTALL):
        previous = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _NOT_RUN.match(previous)
        found.append((m.group("lang"), m.group("body"), skip.group("reason") if skip else None))
    return found


def test_the_tutorials_are_there() -> None:
    names = {p.name for p in PAGES}
    assert {"index.md", "own-model.md", "real-speed.md", "from-sparse-learning.md", "from-rigl-torch.md",
            "observer-plugin.md", "tensorboard.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_is_checked_or_says_why_not(page) -> None:
    for lang, body, reason in blocks(page):
        if reason is not None:
            assert len(reason.split()) >= 3, f"{page.name}: say why a block is not run, in a few words"
            continue
        assert lang in RUNNABLE | {"text"}, f"{page.name}: a ```{lang} block is neither run nor marked not run"
        if lang == "bash":
            lines = [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
            assert all(line.startswith("sparsecore ") for line in lines), \
                f"{page.name}: a bash block with other commands than sparsecore needs '<!-- not run: REASON -->'"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_code_runs(page, tmp_path, monkeypatch) -> None:
    from sparsecore import cli

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs_tutorial_{page.stem.replace('-', '_')}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the pages show which warnings a user sees
            for index, (lang, body, reason) in enumerate(blocks(page)):
                if reason is not None or lang == "text":
                    continue
                where = f"docs/{page.relative_to(DOCS)} block {index + 1}"
                if lang == "python":
                    exec(compile(body, where, "exec"), namespace)
                    continue
                for line in body.splitlines():
                    if line.strip() and not line.startswith("#"):
                        code = cli.main(shlex.split(line.split(" #")[0])[1:])
                        assert code == 0, f"{where}: `{line}` exited with {code}"
    finally:
        torch.set_num_threads(threads)
