"""Which weights of a model become sparse layers, and why the others stay dense."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsecore.errors import ConfigurationError, NoPrunableLayersError
from sparsecore.layers import ATTENTION_PARAMS, DEFAULT_LAYER_TYPES, DENSE_BY_DEFAULT, OPT_IN_LAYER_TYPES, SparseLayer


@dataclass(frozen=True)
class Candidate:
    """A weight the engine could make sparse.

    Attributes:
        name: the layer's name: the module's qualified name, or ``"<module>.<param>"``
            for a bare parameter (``self_attn.in_proj_weight``).
        module: the module that holds the weight.
        param_name: the weight's attribute name on ``module``.
        kind: the layer kind (``"linear"``, ``"conv2d"``, ``"attention"``, ...), as
            :attr:`sparsecore.SparseLayer.kind`.
        forward_bypass_reason: why the model reads the weight without calling the
            module's forward, or ``None``; as :attr:`sparsecore.SparseLayer.forward_bypass_reason`.
    """

    name: str
    module: nn.Module
    param_name: str
    kind: str
    forward_bypass_reason: str | None


def patterns(key: str, value: Any) -> tuple[str, ...]:
    """``include``/``exclude`` as a tuple of glob patterns; a single string is one pattern."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    found = tuple(value)
    bad = [p for p in found if not isinstance(p, str)]
    if bad:
        raise ConfigurationError(f"{key} must be glob patterns (strings), got {bad!r}")
    return found


#: The kind names of the built-in layer types; a type of another library never takes one of them.
_BUILTIN_KINDS = frozenset(DEFAULT_LAYER_TYPES.values()) | frozenset(OPT_IN_LAYER_TYPES.values())


def _kind(module: nn.Module, types: Sequence[type[nn.Module]]) -> str:
    """The layer's kind: the built-in name of its type, else the type's lower-case name.

    A type whose lower-case name is a built-in kind is prefixed with its top-level
    package (transformers' ``Conv1D`` is ``"transformers.conv1d"``: a linear layer
    with an ``[in, out]`` weight, not a convolution, whose output positions are
    counted like a Linear's).
    """
    for t in types:
        if isinstance(module, t):
            known = DEFAULT_LAYER_TYPES.get(t) or OPT_IN_LAYER_TYPES.get(t)
            if known:
                return known
            name = t.__name__.lower()
            return f"{t.__module__.split('.')[0]}.{name}" if name in _BUILTIN_KINDS else name
    raise AssertionError("module of no selected type")


def attention_readers(model: nn.Module) -> dict[int, tuple[str, nn.MultiheadAttention]]:
    """Modules whose forward the model never calls: ``id(module)`` to the name and module that reads the weight.

    ``nn.MultiheadAttention`` hands ``out_proj.weight`` to
    ``F.multi_head_attention_forward`` (or its native fast path) and never
    calls ``out_proj``; each attention's ``out_proj`` is listed with it.
    """
    readers: dict[int, tuple[str, nn.MultiheadAttention]] = {}
    for name, module in model.named_modules():
        out_proj = getattr(module, "out_proj", None) if isinstance(module, nn.MultiheadAttention) else None
        if isinstance(out_proj, nn.Module):
            readers.setdefault(id(out_proj), (name, module))
    return readers


def _attention_label(name: str) -> str:
    return f"nn.MultiheadAttention {name or '<model>'!r}"


def candidates(model: nn.Module, types: Sequence[type[nn.Module]]) -> tuple[list[Candidate], dict[str, str]]:
    """Every trainable weight of a selected type, in model order, and the dense modules with the reason.

    A weight shared by several modules (tied weights) is one candidate, named
    after its first module; empty weights are skipped. A candidate the model
    reads without calling its module's forward carries the reason in one line.
    """
    found: list[Candidate] = []
    dense: dict[str, str] = {}
    seen: set[int] = set()
    readers = attention_readers(model)

    def add(name: str, module: nn.Module, param_name: str, kind: str, bypass_reason: str | None) -> None:
        weight = getattr(module, param_name, None)
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
            return
        if id(weight) in seen or weight.numel() == 0:
            return
        seen.add(id(weight))
        found.append(Candidate(name, module, param_name, kind, bypass_reason))

    for name, module in model.named_modules():
        if any(isinstance(module, t) for t in types):
            kind = _kind(module, types)
            if isinstance(module, nn.MultiheadAttention):
                for param_name in ATTENTION_PARAMS:
                    add(f"{name}.{param_name}", module, param_name, kind,
                        f"{_attention_label(name)} passes {param_name} to F.multi_head_attention_forward itself; "
                        "no sub-module's forward computes with it, so none can be replaced")
            else:
                reader = readers.get(id(module))
                add(name, module, "weight", kind, None if reader is None else
                    f"{_attention_label(reader[0])} passes out_proj.weight to F.multi_head_attention_forward and "
                    "never calls out_proj, so its forward cannot be replaced")
            continue
        for dense_type, reason in DENSE_BY_DEFAULT.items():
            if isinstance(module, dense_type) and any(p.requires_grad for p in module.parameters(recurse=False)):
                dense[name] = reason
                break
    return found, dense


def select_layers(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any],
                  density: float) -> tuple[dict[str, SparseLayer], dict[str, str]]:
    """The sparse layers of a run (model order) and the modules left dense with their reasons.

    Args:
        model: the unwrapped model.
        optimizer: the run's optimizer; every sparse weight must be in it.
        cfg: ``layer_types``, ``include``, ``exclude``, ``dense_first_layer``, ``dense_last_layer``.
        density: the initial target density of every layer (the distribution sets the real ones).

    Raises:
        NoPrunableLayersError: nothing to make sparse.
        ConfigurationError: a pattern that matches nothing, or a weight not in the optimizer.
    """
    types = tuple(cfg["layer_types"] or DEFAULT_LAYER_TYPES)
    found, dense = candidates(model, types)
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise NoPrunableLayersError(
            f"model {type(model).__name__} has no prunable layer (looked for "
            f"{', '.join(t.__name__ for t in types)} with a trainable weight; found modules: {', '.join(kinds)})")
    names = [c.name for c in found]
    include, exclude = patterns("include", cfg["include"]), patterns("exclude", cfg["exclude"])
    for key, pats in (("include", include), ("exclude", exclude)):
        for pattern in pats:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ConfigurationError(f"{key} pattern {pattern!r} matches no prunable layer; layers are {names}")
    chosen = found
    if include:
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c.name, p) for p in include)]
    if exclude:
        chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c.name, p) for p in exclude)]
    first = cfg["dense_first_layer"]
    if first not in (None, True, False, "conv"):
        raise ConfigurationError(f"dense_first_layer must be True, False or 'conv' (dense only when the first "
                                 f"prunable layer is a convolution), got {first!r}")
    if first == "conv":
        first = found[0].kind.startswith("conv")
    if first and chosen and chosen[0].name == names[0]:
        chosen = chosen[1:]
    if cfg["dense_last_layer"] and chosen and chosen[-1].name == names[-1]:
        chosen = chosen[:-1]
    if not chosen:
        raise NoPrunableLayersError(f"the layer selection leaves no sparse layer (prunable layers: {names})")
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    layers: dict[str, SparseLayer] = {}
    for i, c in enumerate(chosen):
        if id(getattr(c.module, c.param_name)) not in in_optimizer:
            raise ConfigurationError(f"the weight of layer {c.name!r} is not in the optimizer's parameter groups")
        layers[c.name] = SparseLayer(c.name, c.module, c.kind, i, density, c.param_name, c.forward_bypass_reason)
    return layers, dense
