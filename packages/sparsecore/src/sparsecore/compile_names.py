"""Names across ``torch.compile`` wrappers: checkpoints load whether or not the saving model was compiled.

``torch.compile(module)`` returns a wrapper that holds the module as
``_orig_mod``, so the wrapper's state-dict keys read ``_orig_mod.fc1.weight``,
and a model whose sub-module was compiled in place has sparse layers named
``body._orig_mod.0``. Removing every ``_orig_mod.`` segment gives the name the
uncompiled model uses; two names that agree after that name the same weight.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

__all__ = ["COMPILE_SEGMENT", "compile_free_name", "load_pre_hook", "match_layer_names", "rename_keys"]

#: The attribute ``torch.compile``'s wrapper keeps the compiled module under.
COMPILE_SEGMENT = "_orig_mod"


def compile_free_name(name: str) -> str:
    """``name`` without its ``_orig_mod`` segments (``"_orig_mod.body._orig_mod.0"`` -> ``"body.0"``)."""
    return ".".join(part for part in name.split(".") if part != COMPILE_SEGMENT)


def match_layer_names(saved: Collection[str], mine: Collection[str]) -> dict[str, str] | None:
    """How saved layer names map onto this run's, when they differ only by ``_orig_mod`` segments.

    Args:
        saved: layer names in a checkpoint.
        mine: this run's layer names.

    Returns:
        ``{saved name: my name}`` when every name corresponds one to one after
        removing the segments (and some name differs); ``None`` otherwise (same
        names, or names that do not correspond at all: the caller's checks report those).
    """
    if list(saved) == list(mine):
        return None
    mine_by_free = {compile_free_name(name): name for name in mine}
    mapping = {name: mine_by_free.get(compile_free_name(name)) for name in saved}
    if len(mine_by_free) != len(mine) or len(set(mapping.values())) != len(mapping) or None in mapping.values() \
            or len(mapping) != len(mine):
        return None
    return {name: str(target) for name, target in mapping.items()}


def rename_keys(state: dict[str, Any], expected: Collection[str], prefix: str = "") -> None:
    """Rename, in place, the keys of ``state`` under ``prefix`` that name an expected key up to ``_orig_mod``.

    A key that is already expected, or whose compile-free form matches no
    expected key (or one already present), is left alone, so the usual
    missing/unexpected-key errors still report real mismatches.

    Args:
        state: a state dict being loaded.
        expected: the keys the loading module has, relative to it.
        prefix: where the loading module's keys start in ``state``.
    """
    wanted = set(expected)
    by_free = {compile_free_name(key): key for key in expected}
    for key in [k for k in state if k.startswith(prefix) and k[len(prefix):] not in wanted]:
        target = by_free.get(compile_free_name(key[len(prefix):]))
        if target is not None and prefix + target not in state:
            state[prefix + target] = state.pop(key)


def load_pre_hook(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
    """A ``register_load_state_dict_pre_hook`` hook: the module loads state dicts saved with or without compile."""
    if isinstance(state_dict, dict):
        rename_keys(state_dict, module.state_dict(keep_vars=True).keys(), prefix)
