"""Choosing positions of a weight from its sorted active positions, never from a dense mask.

Every function takes the active weights as sorted, distinct int64 flat
positions (``row * in_features + col``) and returns sorted positions.

* :func:`permutation_positions` / :func:`permutation_growth`: exactly what
  the engine's :func:`sparsecore.selection.random_mask` and
  :func:`~sparsecore.selection.random_choice` pick from the same generator
  state (a ``randperm`` over all candidates): same seed, same masks. The
  permutation holds one int64 per candidate, so it suits layers whose dense
  form fits in memory.
* :func:`sample_positions` / :func:`sample_inactive`: uniform sampling without
  replacement by rejection (draw positions with ``randint``, drop active ones
  and repeats, keep the first ``n`` distinct). Memory is ``O(n + nnz)``
  whatever the layer's size; a masked run draws the same positions through
  :class:`~sparse_kernels_cuda.truly_sparse.SampledGrowth`.
* :func:`largest_inactive`: the ``n`` inactive positions of largest score,
  ties to the lower position (the engine's :func:`sparsecore.selection.largest`),
  with the score computed a block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "AUTO_PERMUTATION_LIMIT",
    "inactive_rank_to_position",
    "is_active",
    "largest_inactive",
    "permutation_growth",
    "permutation_positions",
    "sample_inactive",
    "sample_positions",
]

#: Up to this many candidates, the ``"auto"`` choices draw the engine's permutation (512 MiB of int64).
AUTO_PERMUTATION_LIMIT = 2**26


def is_active(candidates: Tensor, active: Tensor) -> Tensor:
    """Bool per candidate position: whether it is in the sorted ``active`` positions."""
    if active.numel() == 0:
        return torch.zeros(candidates.shape, dtype=torch.bool, device=candidates.device)
    idx = torch.searchsorted(active, candidates).clamp_(max=active.numel() - 1)
    return active.index_select(0, idx) == candidates


def inactive_rank_to_position(active: Tensor, ranks: Tensor) -> Tensor:
    """The flat position of the ``r``-th inactive weight (0-based, increasing order) for every rank ``r``.

    Args:
        active: sorted, distinct active positions (int64).
        ranks: int64 ranks among the inactive positions.
    """
    inactive_before = active - torch.arange(active.numel(), device=active.device)  # non-decreasing
    return ranks + torch.searchsorted(inactive_before, ranks, right=True)


def permutation_positions(numel: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` random positions of ``numel``, as :func:`sparsecore.selection.random_mask` draws them (sorted)."""
    _check_count(n, numel, "positions")
    perm = torch.randperm(numel, generator=generator, device=generator.device)[:n]
    return perm.sort().values.cpu()


def permutation_growth(active: Tensor, numel: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` random inactive positions, as :func:`sparsecore.selection.random_choice` over ``~mask`` draws them.

    Consumes the generator exactly as the engine's default growth does, so a
    masked run and a truly sparse run with the same generator state grow the
    same weights. Holds a permutation of all inactive positions (int64).
    """
    inactive = numel - active.numel()
    _check_count(n, inactive, "inactive positions")
    ranks = torch.randperm(inactive, generator=generator, device=generator.device)[:n].to(active.device)
    return inactive_rank_to_position(active, ranks).sort().values


def sample_positions(numel: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` distinct positions of ``numel`` drawn uniformly by rejection (sorted); memory ``O(n)``."""
    return sample_inactive(torch.empty(0, dtype=torch.int64), numel, n, generator)


def sample_inactive(active: Tensor, numel: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` distinct inactive positions drawn uniformly without replacement, by rejection (sorted).

    Rounds draw ``randint(numel)`` candidates from ``generator``; a candidate
    that is active or was drawn before is rejected; the first ``n`` distinct
    survivors, in drawing order, are the sample (a uniform ``n``-subset of the
    inactive positions). Memory ``O(n + nnz)``; expected draws ``≈ n / (1 -
    density)``.

    Raises:
        ValueError: fewer than ``n`` inactive positions.
    """
    _check_count(n, numel - active.numel(), "inactive positions")
    device = active.device
    chosen = torch.empty(0, dtype=torch.int64, device=device)
    keep_rate = (numel - active.numel()) / numel  # share of draws expected to survive
    while chosen.numel() < n:
        need = n - chosen.numel()
        draws = int(need / keep_rate * 1.05) + 64
        cand = torch.randint(numel, (draws,), generator=generator, device=generator.device).to(device)
        cand = cand[~is_active(cand, active)]
        before = chosen.numel()
        chosen = _first_distinct(torch.cat([chosen, cand]))[:n]
        keep_rate = max((chosen.numel() - before) / draws, 1e-6)  # what this round achieved
    return chosen.sort().values


def _first_distinct(seq: Tensor) -> Tensor:
    """The distinct values of ``seq`` in order of first occurrence."""
    if seq.numel() == 0:
        return seq
    uniq, inverse = torch.unique(seq, sorted=True, return_inverse=True)
    first = torch.full((uniq.numel(),), seq.numel(), dtype=torch.int64, device=seq.device)
    first.scatter_reduce_(0, inverse, torch.arange(seq.numel(), device=seq.device), reduce="amin")
    return seq.index_select(0, first.sort().values)


def largest_inactive(score_rows: Callable[[int, int], Tensor], active: Tensor, shape: tuple[int, int], n: int,
                     chunk_rows: int) -> Tensor:
    """The ``n`` inactive positions of largest score, ties broken by position, one block of rows at a time.

    The same choice as ``sparsecore.selection.largest(score, ~mask, n)`` on
    the whole dense score (scores compared in float32, like it), with at most
    ``chunk_rows * in`` scores alive at once.

    Args:
        score_rows: ``score_rows(start, stop)`` gives the score of rows
            ``start:stop`` as a ``(stop - start, in)`` tensor.
        active: sorted active positions (not candidates).
        shape: ``(out, in)`` of the weight.
        n: how many to choose.
        chunk_rows: rows scored per block.

    Returns:
        Sorted positions (int64).
    """
    n_out, n_in = shape
    _check_count(n, n_out * n_in - active.numel(), "inactive positions")
    best_score = torch.empty(0, dtype=torch.float32)
    best_pos = torch.empty(0, dtype=torch.int64)
    if n == 0:
        return best_pos.to(active.device)
    bounds = torch.tensor([0, 0], dtype=torch.int64, device=active.device)
    for start in range(0, n_out, chunk_rows):
        stop = min(n_out, start + chunk_rows)
        score = score_rows(start, stop).detach().float().reshape(-1).cpu()
        bounds[0], bounds[1] = start * n_in, stop * n_in
        lo, hi = torch.searchsorted(active, bounds).tolist()
        taken = (active[lo:hi] - start * n_in).cpu()
        candidate = torch.ones(score.numel(), dtype=torch.bool)
        candidate[taken] = False
        k = min(n, score.numel() - taken.numel())
        if k == 0:
            continue
        score = score.masked_fill(~candidate, float("-inf"))
        threshold = torch.topk(score, k, sorted=False).values.min()
        pos = ((score >= threshold) & candidate).nonzero().squeeze(1)  # every tie at the threshold, in position order
        order = torch.argsort(score[pos], descending=True, stable=True)[:k]
        # earlier blocks hold lower positions, so a stable sort of (best, this block) breaks ties by position
        merged_score = torch.cat([best_score, score[pos[order]]])
        merged_pos = torch.cat([best_pos, pos[order] + start * n_in])
        keep = torch.argsort(merged_score, descending=True, stable=True)[:n]
        best_score, best_pos = merged_score[keep], merged_pos[keep]
    return best_pos.sort().values.to(active.device)


def _check_count(n: int, available: int, what: str) -> None:
    if n < 0 or n > available:
        raise ValueError(f"cannot choose {n} among {available} {what}")
