"""Shared helpers of the documentation tests: repository paths and the hook specs as pluggy sees them."""

from __future__ import annotations

from pathlib import Path

import pluggy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def hook_specs() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every hook spec of ``sparsecore.hookspecs``: name -> (argument names, first-result?)."""
    from sparsecore import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    specs = {}
    for name, caller in vars(pm.hook).items():
        spec = getattr(caller, "spec", None)
        if spec is not None:
            specs[name] = (tuple(spec.argnames), bool(spec.opts.get("firstresult")))
    return specs


def signature(name: str, args: tuple[str, ...]) -> str:
    """``name(arg, ...)`` as the docs write it."""
    return f"{name}({', '.join(args)})"
