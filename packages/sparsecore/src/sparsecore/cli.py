"""The ``sparsecore`` console script.

Subcommands register themselves in :data:`COMMANDS`: ``plugins`` lists the
installed algorithms and plugins, the hooks each implements, names that more
than one distribution registered, and the entry points that failed to load;
``train`` runs the main job (see :mod:`sparsecore.train`); ``export`` writes a
run's model as a compact file (see :mod:`sparsecore.export`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sparsecore.errors import ConfigurationError
from sparsecore.plugins import AUTOLOAD_ENV, factory_hooks, registry
from sparsecore.templates import add_new_plugin_parser


def _plugins_command(args: argparse.Namespace) -> int:
    try:
        registry.load()
    except ConfigurationError as exc:  # e.g. a SPARSECORE_DISABLE_PLUGIN_AUTOLOAD value that is neither on nor off
        print(f"sparsecore plugins: error: {exc}", file=sys.stderr)
        return 2
    dists = sorted(registry.distributions.values(), key=lambda d: (d.name != "sparsecore", d.name))
    # a factory that is not a class is built once, with no options, to read its hooks
    hooks = {id(reg): factory_hooks(reg.factory) for dist in dists for reg in dist.registrations}
    if args.json:
        import json

        errors: dict[str, list[str]] = {}
        for failure in registry.load_failures:
            errors.setdefault(failure.distribution, []).append(f"entry point {failure.entry_point!r}: {failure.error}")
        data = [{"distribution": d.name, "version": d.version, "module": d.module,
                 "registrations": [{"name": r.name, "kind": r.kind, "hooks": hooks[id(r)][0],
                                    "hooks_note": hooks[id(r)][1] or None,
                                    "also_registered_by": [o.distribution for o in registry.ambiguous_with(r)]}
                                   for r in d.registrations],
                 "load_errors": errors.pop(d.name, [])}
                for d in dists]
        # distributions whose entry point failed before registering anything
        for failure in registry.load_failures:
            if failure.distribution in errors:
                data.append({"distribution": failure.distribution, "version": failure.version,
                             "module": failure.entry_point, "registrations": [],
                             "load_errors": errors.pop(failure.distribution)})
        print(json.dumps(data, indent=2))
        return 0
    rows = []
    for dist in dists:
        rows.append(f"{dist.name} {dist.version}  (module {dist.module})")
        if not dist.registrations:
            rows.append("  registers nothing")
        for reg in dist.registrations:
            names, why = hooks[id(reg)]
            listed = (", ".join(names) or "none") if names is not None else f"known once built ({why})"
            rivals = registry.ambiguous_with(reg)
            clash = (f"; also registered by {', '.join(o.distribution for o in rivals)}: "
                     f"choose this one as '{dist.name}:{reg.name}'" if rivals else "")
            rows.append(f"  {reg.kind} {reg.name}: hooks {listed}{clash}")
    for failure in registry.load_failures:
        rows.append(f"failed to load: {failure.message}")
    if not registry.autoload:
        rows.append(f"note: entry-point loading is disabled ({AUTOLOAD_ENV}); installed plugins are not listed")
    print("\n".join(rows))
    return 0


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list installed distributions, their algorithms and the hooks they implement")
    p.add_argument("--json", action="store_true",
                   help="print JSON (hooks, and entry points that failed to load) instead of text")
    p.set_defaults(func=_plugins_command)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from sparsecore.train.cli import add_train_parser

    add_train_parser(sub)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from sparsecore.train.reproduce import add_reproduce_parser

    add_reproduce_parser(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from sparsecore.export.cli import add_export_parser

    add_export_parser(sub)


#: Subcommand builders; each adds its parser and sets ``func``.
COMMANDS: list[Callable[[argparse._SubParsersAction], object]] = [_add_plugins, _add_train, _add_reproduce,
                                                               _add_export, add_new_plugin_parser]


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
