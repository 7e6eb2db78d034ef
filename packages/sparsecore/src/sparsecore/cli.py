"""The ``sparsecore`` console script.

Subcommands register themselves in :data:`COMMANDS`: ``plugins`` lists the
installed algorithms and plugins; ``train`` runs the main job (see
:mod:`sparsecore.train`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from sparsecore.plugins import registry
from sparsecore.templates import add_new_plugin_parser


def _plugins_command(args: argparse.Namespace) -> int:
    registry.load()
    rows = []
    for dist in sorted(registry.distributions.values(), key=lambda d: (d.name != "sparsecore", d.name)):
        rows.append(f"{dist.name} {dist.version}  (module {dist.module})")
        if not dist.registrations:
            rows.append("  registers nothing")
        for reg in dist.registrations:
            hooks = ", ".join(reg.hooks()) or "none"
            rows.append(f"  {reg.kind} {reg.name}: hooks {hooks}")
    for error in registry.load_errors:
        rows.append(f"failed to load: {error}")
    if args.json:
        import json

        data = [{"distribution": d.name, "version": d.version, "module": d.module,
                 "registrations": [{"name": r.name, "kind": r.kind, "hooks": r.hooks()} for r in d.registrations]}
                for d in registry.distributions.values()]
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(rows))
    return 0


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed distributions, their algorithms and the hooks they implement")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_plugins_command)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from sparsecore.train.cli import add_train_parser

    add_train_parser(sub)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from sparsecore.train.reproduce import add_reproduce_parser

    add_reproduce_parser(sub)


#: Subcommand builders; each adds its parser and sets ``func``.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plugins, _add_train, _add_reproduce,
                                                               add_new_plugin_parser]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sparsecore`` command."""
    from sparsecore.__about__ import __version__

    parser = argparse.ArgumentParser(prog="sparsecore", description="Sparse training for PyTorch.")
    parser.add_argument("--version", action="version", version=f"sparsecore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        try:
            add(sub)
        except ModuleNotFoundError as exc:  # a subcommand whose optional module is absent
            if not (exc.name or "").startswith("sparsecore"):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
