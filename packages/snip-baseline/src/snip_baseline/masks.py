"""Turning scores into exact-count masks: global top-κ, per-layer top-k, and the layer guard.

Ties are broken by position: within a tensor by flat (row-major) index, across
tensors by the order of the mapping (model order), so the same scores always
give the same mask.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from sparsecore import selection

__all__ = ["GuardReport", "global_top_k", "keep_every_layer", "per_layer_top_k"]


@dataclass(frozen=True)
class GuardReport:
    """What :func:`keep_every_layer` changed.

    Attributes:
        threshold: the smallest score the plain top-k kept (before the guard);
            ``nan`` when nothing was kept or for per-layer masks.
        added: layer name to the flat index of the weight kept so the layer is
            not severed (only layers the top-κ left empty).
        removed: layer name to how many of its lowest-ranked kept weights were
            dropped to pay for the additions.
    """

    threshold: float = float("nan")
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)


def _flatten(scores: Mapping[str, torch.Tensor]) -> tuple[list[str], list[int], torch.Tensor]:
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    dtype = torch.float32
    for n in names:
        dtype = torch.promote_types(dtype, scores[n].dtype)
    flat = torch.cat([scores[n].detach().reshape(-1).to(dtype) for n in names])
    return names, sizes, flat


def _split(keep: torch.Tensor, names: list[str], sizes: list[int],
           scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: part.view(scores[n].shape) for n, part in zip(names, torch.split(keep, sizes), strict=True)}


def global_top_k(scores: Mapping[str, torch.Tensor], k: int, guard: bool = False,
                 guarded: Collection[str] | None = None) -> tuple[dict[str, torch.Tensor], GuardReport]:
    """Keep exactly the ``k`` highest scores over all tensors together.

    Ties are broken by position (earlier tensor, then lower flat index, wins).
    With ``guard=True`` the result then goes through the layer guard: every
    guarded tensor the top-k left empty keeps its own highest-scored entry,
    and as many of the lowest-ranked kept entries elsewhere are dropped (never
    the last entry of a guarded tensor), so exactly ``k`` entries stay kept.

    Args:
        scores: name to score tensor (model order).
        k: how many entries to keep, ``0 <= k <= total``.
        guard: apply the layer guard.
        guarded: the names the guard protects (``None``: every tensor), e.g.
            the weights when biases compete for the same ``k``.

    Returns:
        ``(masks, report)``: name to bool mask shaped like its scores, and the
        :class:`GuardReport` (its ``added``/``removed`` are empty when the guard
        changed nothing or is off).

    Raises:
        ValueError: ``k`` is out of range, or ``guard`` is on and ``k`` is
            smaller than the number of guarded tensors.
    """
    names, sizes, flat = _flatten(scores)
    protected = set(names) if guarded is None else set(guarded) & set(names)
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot keep {k} of {flat.numel()} weights")
    if guard and k < len(protected):
        raise ValueError(f"keeping one weight in each of {len(protected)} layers needs at least {len(protected)} "
                         f"kept weights, but only {k} are kept; raise the density or pass keep_every_layer=False")
    order = torch.argsort(flat, descending=True, stable=True)
    kept = order[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[kept] = True
    threshold = float(flat[kept[-1]]) if k else float("nan")
    added, removed = _guard(keep, kept, flat, names, sizes, protected) if guard else ({}, {})
    return _split(keep, names, sizes, scores), GuardReport(threshold, added, removed)


def _guard(keep: torch.Tensor, kept: torch.Tensor, flat: torch.Tensor, names: list[str],
           sizes: list[int], protected: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Apply the layer guard to the flat ``keep`` mask in place; ``kept`` is the kept positions by rank.

    Only the ``protected`` tensors get an entry back and keep their last one.
    Returns the additions (name to flat index) and removals (name to count).
    """
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    owner = torch.repeat_interleave(torch.arange(len(sizes), device=flat.device),
                                    torch.tensor(sizes, device=flat.device))
    counts = torch.bincount(owner[kept], minlength=len(sizes)).tolist()
    added: dict[str, int] = {}
    for i, name in enumerate(names):
        if counts[i] == 0 and name in protected:
            local = int(torch.argmax(flat[offsets[i]:offsets[i] + sizes[i]]))  # first maximum on ties
            keep[offsets[i] + local] = True
            counts[i] = 1
            added[name] = local
    removed: dict[str, int] = {}
    debt = len(added)
    # Walk the kept set from its lowest rank upwards; a protected layer with one kept weight left is
    # skipped, so at most one skip per layer happens and the walk is O(debt + number of layers).
    rank = kept.numel() - 1
    while debt:
        pos = int(kept[rank])
        i = int(owner[pos])
        if counts[i] > 1 or names[i] not in protected:
            keep[pos] = False
            counts[i] -= 1
            removed[names[i]] = removed.get(names[i], 0) + 1
            debt -= 1
        rank -= 1
    return added, removed


def per_layer_top_k(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Keep the ``counts[name]`` highest scores of each tensor separately (ties by flat index).

    Args:
        scores: name to score tensor.
        counts: name to how many entries to keep in that tensor.

    Returns:
        Name to bool mask shaped like its scores.
    """
    return {n: selection.largest(s.detach(), torch.ones_like(s, dtype=torch.bool), int(counts[n]))
            for n, s in scores.items()}


def keep_every_layer(scores: Mapping[str, torch.Tensor],
                     masks: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], GuardReport]:
    """The guard for per-layer masks: a tensor whose mask is empty keeps its highest-scored entry.

    Per-layer counts come from the distribution, so nothing is taken away
    elsewhere; this only adds one entry to layers whose count rounded to zero.

    Args:
        scores: name to score tensor.
        masks: name to bool mask.

    Returns:
        ``(masks, report)`` with the additions in ``report.added``.
    """
    out, added = {}, {}
    for name, mask in masks.items():
        if mask.any():
            out[name] = mask
            continue
        local = int(torch.argmax(scores[name].detach().reshape(-1)))
        fixed = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        fixed[local] = True
        out[name] = fixed.view(mask.shape)
        added[name] = local
    return out, GuardReport(added=added)
