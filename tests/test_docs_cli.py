"""The command-line page mentions every subcommand and every long option of the ``sparsecore`` parser."""

from __future__ import annotations

import argparse

import pytest

from docs_support import DOCS

from sparsecore.cli import build_parser

CLI_PAGE = DOCS / "cli.md"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the sparsecore parser has no subcommands")


SUBCOMMANDS = _subcommands()


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_and_its_options_are_documented(command: str) -> None:
    text = CLI_PAGE.read_text(encoding="utf-8")
    assert f"## `sparsecore {command}`" in text, f"docs/cli.md has no section for `sparsecore {command}`"
    missing = sorted(opt for action in SUBCOMMANDS[command]._actions for opt in action.option_strings
                     if opt.startswith("--") and opt != "--help" and f"`{opt}" not in text)
    assert not missing, f"docs/cli.md does not document `sparsecore {command}` option(s) {missing}"
