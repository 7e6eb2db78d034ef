"""One topology update over the whole model: plan, prune, redistribute, grow, with every answer checked.

The engine runs the cycle; plugins answer its hooks::

    plan_update (whole model) -> select_prune (per layer, unless planned)
        -> redistribute (unless planned) -> select_grow (per layer, unless planned)

A global algorithm (sparse momentum's redistribution, global magnitude
pruning) answers :func:`~sparsecore.hookspecs.plan_update` with an
:class:`UpdatePlan` that fixes counts or selections for every layer at once;
anything it leaves open goes to the per-layer hooks.

``redistribute`` moves the removed weights between layers: its counts must
sum to what the update removed, unless the plugin that answered declares
``keeps_budget = False`` (:class:`sparsecore.Algorithm`). Growth fixed by a
``plan_update`` answer is the algorithm's own plan and is not held to it.

In an N:M run (``pattern="N:M"``) the cycle keeps every group at exactly N
active weights: the prune selection may take any active weights (``k_g`` from
group ``g``, so every group holds at most N in between), and the grow selection
must give back exactly ``k_g`` in every group ``g``. A layer therefore regrows
exactly what it lost (``redistribute`` cannot move weights between N:M
layers), and the grow count of a layer is its deficit ``N * groups - nnz``.
An algorithm that moves its groups through other counts on purpose (gradual
N:M pruning: ``M`` active at the start, ``N`` at the end) declares the count in
force with ``nm_group_count(sparsifier, layer)`` (see
:meth:`sparsecore.Algorithm.nm_group_count`); the checks then hold every group
of the layer to that count instead of N.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sparsecore import distributed, selection
from sparsecore.errors import HookResultError
from sparsecore.layers import SparseLayer
from sparsecore.selection import NMPattern

if TYPE_CHECKING:  # pragma: no cover
    from sparsecore.sparsifier import Sparsifier


@dataclass(frozen=True)
class UpdatePlan:
    """A whole-model plan for one topology update (the answer of ``plan_update``).

    Each mapping holds every sparse layer by name; a value is either an int
    (how many weights; the per-layer hook chooses which) or a bool tensor
    shaped like the weight (exactly which weights).

    Attributes:
        prune: per layer, the count or selection of active weights to remove.
        grow: per layer, the count or selection of inactive weights (after
            pruning) to activate; ``None`` leaves the counts to ``redistribute``.
    """

    prune: Mapping[str, int | torch.Tensor]
    grow: Mapping[str, int | torch.Tensor] | None = None


@dataclass
class TopologyUpdate:
    """The update in progress, handed to every hook of the cycle as ``update``.

    Attributes:
        rate: the prune rate the update was started with.
        step: optimizer steps completed.
        epoch: the last epoch reported (``None`` before the first).
        masks_before: every layer's mask before the update (read-only).
        plan: the :class:`UpdatePlan` in force (``None`` while planning).
        removed: weights removed per layer (filled after pruning).
    """

    rate: float
    step: int
    epoch: int | None
    masks_before: Mapping[str, torch.Tensor]
    plan: UpdatePlan | None = None
    removed: dict[str, int] = field(default_factory=dict)


def nm_group_count(sparsifier: Sparsifier, layer: SparseLayer) -> int:
    """Active weights every group of an N:M ``layer`` must hold now.

    The algorithm's ``nm_group_count(sparsifier, layer)`` when it declares one
    (:meth:`sparsecore.Algorithm.nm_group_count`), else the pattern's N.

    Raises:
        HookResultError: the declared count is not an int in ``[1, M]``.
    """
    pattern = layer.pattern
    if not isinstance(pattern, NMPattern):
        raise ValueError(f"layer {layer.name!r} is not N:M sparse (its pattern is {pattern!r})")
    declare = getattr(sparsifier.algorithm, "nm_group_count", None)
    if declare is None:
        return pattern.n
    count = declare(sparsifier, layer)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= pattern.m:
        raise HookResultError("nm_group_count", sparsifier.algorithm_name,
                              f"layer {layer.name!r}: declared {count!r} active weights per group; a {pattern} "
                              f"group holds an int from 1 to {pattern.m}")
    return count


def default_prune_counts(layers: Mapping[str, SparseLayer], rate: float) -> dict[str, int]:
    """``floor(rate * nnz)`` per layer, in whole blocks for block layers (any active weights for N:M layers)."""
    return {name: math.floor(rate * layer.nnz / layer.block_size) * layer.block_size
            for name, layer in layers.items()}


class AnswerChecks:
    """Validation of hook answers against the run's layers; every failure names the hook and the plugin."""

    def __init__(self, layers: Mapping[str, SparseLayer], plugins: Mapping[str, Any] | None = None,
                 group_count: Callable[[SparseLayer], int] | None = None) -> None:
        """Checks against ``layers``; ``plugins`` (registered name -> plugin) supply the answering plugin's
        declarations ``keeps_budget`` and ``sets_initial_density`` (the defaults when it is not listed);
        ``group_count(layer)`` is the count every group of an N:M layer must hold (default: N; the engine
        passes the algorithm's :func:`nm_group_count`)."""
        self.layers = layers
        self.plugins = plugins or {}
        self.group_count = group_count

    def nm_count(self, layer: SparseLayer, pattern: NMPattern) -> int:
        """Active weights every group of the N:M ``layer`` must hold (:attr:`group_count`, default N)."""
        return pattern.n if self.group_count is None else self.group_count(layer)

    def declares(self, who: str, attribute: str, default: bool) -> bool:
        """The plugin ``who``'s declaration ``attribute`` (``default`` when it declares nothing)."""
        return bool(getattr(self.plugins.get(who), attribute, default))

    def initial_masks(self, who: str, masks: Any) -> dict[str, torch.Tensor]:
        """``init_masks``'s answer: valid masks holding ``layer.active_count(layer.target_density)`` weights each.

        The counts are not checked for a plugin that declares ``sets_initial_density = True``.
        """
        out = self.masks("init_masks", who, masks)
        if self.declares(who, "sets_initial_density", False):
            return out
        for name, mask in out.items():
            layer = self.layers[name]
            count, expected = int(mask.count_nonzero()), layer.active_count(layer.target_density)
            if count != expected:
                raise HookResultError("init_masks", who, f"layer {name!r}: {count} active weights, but its target "
                                                         f"density {layer.target_density:g} means exactly {expected} "
                                                         "(layer.active_count(layer.target_density)); an algorithm "
                                                         "that chooses its own initial counts declares "
                                                         "sets_initial_density = True")
        return out

    def budget(self, who: str, regrow: Mapping[str, int], removed: Mapping[str, int]) -> None:
        """``redistribute``'s counts regrow what the update removed, in all (unless ``who`` declares
        ``keeps_budget = False``)."""
        total, lost = sum(regrow.values()), sum(removed.values())
        if total != lost and self.declares(who, "keeps_budget", True):
            raise HookResultError("redistribute", who, f"regrows {total} weights in all ({dict(regrow)}), but the "
                                                       f"update removed {lost} ({dict(removed)}); redistribute moves "
                                                       f"the removed weights between layers, so the counts must sum "
                                                       f"to {lost} (a plugin that changes the total on purpose "
                                                       "declares keeps_budget = False)")

    def masks(self, hook: str, who: str, masks: Any, partial: bool = False) -> dict[str, torch.Tensor]:
        """A mapping of layer name to bool mask, one per layer (``partial``: some layers)."""
        self.mapping(hook, who, masks, partial, "bool mask")
        out = {}
        for name, mask in masks.items():
            mask = distributed.full_tensor(mask)  # a DTensor answer (FSDP2) is checked and kept whole
            self.tensor(hook, who, self.layers[name], mask)
            self.nm_mask(hook, who, self.layers[name], mask, allow_dense=True)
            out[name] = mask.clone()
        return out

    def nm_mask(self, hook: str, who: str, layer: SparseLayer, mask: torch.Tensor, allow_dense: bool) -> None:
        """For an N:M layer: exactly the group count (N, or the algorithm's declared count) active in every
        group (or, with ``allow_dense``, the whole layer active).

        A whole-dense mask is accepted from ``init_masks`` and ``set_masks``
        for algorithms that train dense before pruning once (ASP); the
        layer's density then reads 1.0 until it is pruned.
        """
        pattern = layer.pattern
        if not isinstance(pattern, NMPattern):
            return
        k = self.nm_count(layer, pattern)
        counts = pattern.group_counts(mask)
        wrong = int((counts != k).sum())
        if wrong and not (allow_dense and bool(mask.all())):
            dense = " (or make the whole layer dense)" if allow_dense else ""
            declared = "" if k == pattern.n else f"; the algorithm's nm_group_count is {k} now"
            raise HookResultError(hook, who, f"layer {layer.name!r}: {wrong} of {counts.numel()} groups do not hold "
                                             f"exactly {k} active weights (the run is {pattern} sparse: "
                                             f"every group of {pattern.m} consecutive weights along the input "
                                             f"dimension holds exactly {k}{dense}{declared}; pass "
                                             "block=layer.pattern to sparsecore.selection)")

    def refill_count(self, hook: str, who: str, layer: SparseLayer, count: int) -> None:
        """For an N:M layer: the grow count is the layer's deficit ``k * groups - nnz``, with ``k`` the group
        count (N, or the algorithm's declared count), so every group ends with ``k``."""
        pattern = layer.pattern
        if isinstance(pattern, NMPattern):
            k = self.nm_count(layer, pattern)
            deficit = k * pattern.groups_in(layer.shape) - layer.nnz
            if count != deficit:
                raise HookResultError(hook, who, f"layer {layer.name!r}: regrows {count} weights, but in a {pattern} "
                                                 f"run every layer regrows exactly what it lost ({deficit}), so every "
                                                 f"group ends with {k} active weights")

    def mapping(self, hook: str, who: str, value: Any, partial: bool, what: str) -> None:
        """``value`` is a mapping whose keys are the layer names (all of them unless ``partial``)."""
        if not isinstance(value, Mapping):
            raise HookResultError(hook, who, f"must return a mapping of layer name to {what}, "
                                             f"got {type(value).__name__}")
        unknown = sorted(set(value) - set(self.layers), key=str)
        missing = [] if partial else [n for n in self.layers if n not in value]
        if unknown or missing:
            raise HookResultError(hook, who, f"layers do not match the sparse layers: missing {missing}, "
                                             f"unknown {unknown}")

    def tensor(self, hook: str, who: str, layer: SparseLayer, t: Any) -> None:
        """A bool tensor shaped like the layer's weight, on its device, in the run's pattern."""
        if not torch.is_tensor(t) or t.dtype != torch.bool:
            what = t.dtype if torch.is_tensor(t) else type(t).__name__
            raise HookResultError(hook, who, f"layer {layer.name!r}: expected a bool tensor, got {what}")
        if t.shape != layer.shape:
            raise HookResultError(hook, who, f"layer {layer.name!r}: shape {tuple(t.shape)} does not match the "
                                             f"weight's {tuple(layer.shape)}")
        if t.device != layer.weight.device:
            raise HookResultError(hook, who, f"layer {layer.name!r}: tensor on {t.device}, weight on "
                                             f"{layer.weight.device}")
        if layer.block is not None and not selection.is_block_structured(t, layer.block):
            raise HookResultError(hook, who, f"layer {layer.name!r}: not made of whole {layer.block[0]}x"
                                             f"{layer.block[1]} blocks (the run is block-sparse; pass "
                                             "block=layer.block to sparsecore.selection)")

    def selection(self, hook: str, who: str, layer: SparseLayer, chosen: Any, n: int | None,
                  allowed: torch.Tensor, allowed_name: str) -> int:
        """A selection of exactly ``n`` entries (any count if ``None``), all within ``allowed``; returns its count."""
        self.tensor(hook, who, layer, chosen)
        count = int(chosen.sum())
        if n is not None and count != n:
            raise HookResultError(hook, who, f"layer {layer.name!r}: selected {count} entries, expected exactly {n}")
        bad = int((chosen & ~allowed).sum())
        if bad:
            raise HookResultError(hook, who, f"layer {layer.name!r}: {bad} selected entries are not {allowed_name}")
        return count

    def count(self, hook: str, who: str, name: str, value: Any, limit: int, limit_name: str) -> int:
        """An int count in ``[0, limit]``, a multiple of the layer's block size."""
        integer_tensor = (torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point()
                          and value.dtype != torch.bool)
        if isinstance(value, bool) or (not isinstance(value, int) and not integer_tensor):
            raise HookResultError(hook, who, f"layer {name!r}: count must be an int, got {value!r}")
        value = int(value)
        block_size = self.layers[name].block_size
        if value % block_size:
            raise HookResultError(hook, who, f"layer {name!r}: count {value} is not a multiple of the block size "
                                             f"{block_size}")
        if value < 0 or value > limit:
            raise HookResultError(hook, who, f"layer {name!r}: count {value} is outside [0, {limit}] ({limit_name})")
        return value

    def counts(self, hook: str, who: str, counts: Any, limits: Mapping[str, int], limit_name: str) -> dict[str, int]:
        """A mapping of every layer to a valid count."""
        self.mapping(hook, who, counts, False, "int")
        return {name: self.count(hook, who, name, counts[name], limits[name], limit_name) for name in self.layers}


def run_update(sparsifier: Sparsifier, rate: float) -> dict[str, torch.Tensor]:
    """Run one plan → prune → redistribute → grow cycle; return the new masks (nothing committed).

    While the cycle runs, ``layer.mask`` shows the masks as pruned so far, so
    hooks read the current state; the previous masks are back in place when
    this returns or raises.
    """
    layers, manager = sparsifier.layers, sparsifier.manager
    checks = AnswerChecks(layers, dict(manager.plugins()), lambda layer: nm_group_count(sparsifier, layer))
    update = TopologyUpdate(rate, sparsifier.step, sparsifier.epoch,
                            {name: layer.mask for name, layer in layers.items()})
    plan, who = manager.call_first("plan_update", sparsifier=sparsifier, layers=layers, update=update)
    if not isinstance(plan, UpdatePlan):
        raise HookResultError("plan_update", who, f"must return a sparsecore.UpdatePlan, got {type(plan).__name__}")
    checks.mapping("plan_update", who, plan.prune, False, "prune count or selection")
    if plan.grow is not None:
        checks.mapping("plan_update", who, plan.grow, False, "grow count or selection")
    update.plan = plan
    pruned_by: dict[str, tuple[str, str]] = {}
    try:
        for name, layer in layers.items():
            chosen, pruned_by[name] = _choose(sparsifier, checks, "select_prune", ("plan_update", who), layer,
                                              plan.prune[name], layer.mask, "active", update)
            layer.mask = layer.mask & ~chosen
            update.removed[name] = int(chosen.sum())
        if plan.grow is None:
            free = {name: layer.capacity - layer.nnz for name, layer in layers.items()}
            regrow, by = manager.call_first("redistribute", sparsifier=sparsifier, layers=layers,
                                            removed=dict(update.removed), update=update)
            counts = checks.counts("redistribute", by, regrow, free, "its free slots (capacity - nnz)")
            checks.budget(by, counts, update.removed)
            grow: Mapping[str, int | torch.Tensor] = counts
            source = ("redistribute", by)
        else:
            grow, source = plan.grow, ("plan_update", who)
        for name, layer in layers.items():
            planned = grow[name]
            if not (torch.is_tensor(planned) and planned.dtype == torch.bool):
                planned = checks.count(*source, name, planned, layer.capacity - layer.nnz, "its inactive weights")
                checks.refill_count(*source, layer, planned)
            chosen, chooser = _choose(sparsifier, checks, "select_grow", source, layer, planned, ~layer.mask,
                                      "inactive", update)
            layer.mask = layer.mask | chosen
            # a layer that grows nothing keeps the groups its prune selection left
            checks.nm_mask(*(chooser if bool(chosen.any()) else pruned_by[name]), layer, layer.mask,
                           allow_dense=False)
        return {name: layer.mask for name, layer in layers.items()}
    finally:  # the previous masks stay in force until the engine commits the new ones
        for name, layer in layers.items():
            layer.mask = update.masks_before[name]


def _choose(sparsifier: Sparsifier, checks: AnswerChecks, hook: str, source: tuple[str, str], layer: SparseLayer,
            planned: int | torch.Tensor, allowed: torch.Tensor, allowed_name: str,
            update: TopologyUpdate) -> tuple[torch.Tensor, tuple[str, str]]:
    """The selection fixed by ``source`` (a hook and the plugin that answered it), checked, or else the
    per-layer hook's answer for the count ``source`` gave; with the hook and plugin that chose it."""
    if torch.is_tensor(planned) and planned.dtype == torch.bool:
        planned = distributed.full_tensor(planned)  # a DTensor answer (FSDP2) is taken whole
        checks.selection(*source, layer, planned, None, allowed, allowed_name)
        return planned, source
    n = checks.count(*source, layer.name, planned, int(allowed.sum()), f"its {allowed_name} weights")
    chosen, who = sparsifier.manager.call_first(hook, sparsifier=sparsifier, layer=layer, n=n, update=update)
    if torch.is_tensor(chosen):
        chosen = distributed.full_tensor(chosen)
    checks.selection(hook, who, layer, chosen, n, allowed, allowed_name)
    return chosen, (hook, who)
