"""Tensor helpers for choosing exactly ``n`` entries of a mask, shared by the defaults and plugins."""

from __future__ import annotations

import torch


def smallest(score: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask of the ``n`` candidates with the smallest score (ties broken by position).

    Args:
        score: any real tensor.
        candidates: bool tensor of the same shape; only these may be chosen.
        n: how many to choose; must not exceed ``candidates.sum()``.
    """
    return _pick(score, candidates, n, largest=False)


def largest(score: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask of the ``n`` candidates with the largest score (ties broken by position)."""
    return _pick(score, candidates, n, largest=True)


def _pick(score: torch.Tensor, candidates: torch.Tensor, n: int, largest: bool) -> torch.Tensor:
    flat_c = candidates.reshape(-1)
    idx = flat_c.nonzero().squeeze(1)
    if n > idx.numel():
        raise ValueError(f"cannot choose {n} entries among {idx.numel()} candidates")
    out = torch.zeros_like(flat_c)
    if n > 0:
        values = score.reshape(-1)[idx].float()
        order = torch.argsort(values, descending=largest, stable=True)[:n]
        out[idx[order]] = True
    return out.view_as(candidates)


def random_choice(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of ``n`` candidates drawn uniformly without replacement from ``generator``."""
    flat_c = candidates.reshape(-1)
    idx = flat_c.nonzero().squeeze(1)
    if n > idx.numel():
        raise ValueError(f"cannot choose {n} entries among {idx.numel()} candidates")
    out = torch.zeros_like(flat_c)
    if n > 0:
        perm = torch.randperm(idx.numel(), generator=generator, device=generator.device)[:n]
        out[idx[perm.to(idx.device)]] = True
    return out.view_as(candidates)


def random_mask(shape: torch.Size, n_active: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``n_active`` True entries at random positions."""
    numel = 1
    for s in shape:
        numel *= int(s)
    perm = torch.randperm(numel, generator=generator, device=generator.device)[:n_active]
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    mask[perm.to(device)] = True
    return mask.view(shape)
