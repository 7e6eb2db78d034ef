"""Tensor helpers for choosing exactly ``n`` entries of a mask, shared by the defaults and every plugin.

Per layer: :func:`smallest`, :func:`largest`, :func:`random_choice`,
:func:`random_mask`. Over all layers at once: :func:`global_smallest`,
:func:`global_largest`. Budgets across layers: :func:`spread_overflow`.

Every helper takes an optional ``block=(rows, cols)``: the weight is then seen
as a matrix ``(shape[0], prod(shape[1:]))`` tiled by blocks, scores are summed
per block, only blocks whose entries are all candidates can be chosen, and
``n`` (a multiple of the block size) counts weights, not blocks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

Block = Sequence[int] | None


def block_view_shape(shape: Sequence[int], block: Sequence[int]) -> tuple[int, int, int, int]:
    """``(rows // bh, bh, cols // bw, bw)`` of a weight shape seen as a matrix; raises if not divisible."""
    rows, cols = int(shape[0]), math.prod(int(s) for s in shape[1:])
    bh, bw = int(block[0]), int(block[1])
    if rows % bh or cols % bw:
        raise ValueError(f"weight of shape {tuple(shape)} (as a {rows}x{cols} matrix) is not divisible "
                         f"into blocks of {bh}x{bw}")
    return rows // bh, bh, cols // bw, bw


def to_blocks(t: torch.Tensor, block: Sequence[int], reduce: str = "sum") -> torch.Tensor:
    """Reduce a weight-shaped tensor per block: ``"sum"`` of scores or ``"all"``/``"any"`` of a mask."""
    v = t.reshape(block_view_shape(t.shape, block))
    if reduce == "sum":
        return v.float().sum(dim=(1, 3))
    if reduce == "all":
        return v.all(dim=3).all(dim=1)
    if reduce == "any":
        return v.any(dim=3).any(dim=1)
    raise ValueError(f"unknown reduction {reduce!r}")


def from_blocks(block_mask: torch.Tensor, block: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Expand a per-block bool mask to a weight-shaped mask."""
    bh, bw = int(block[0]), int(block[1])
    return block_mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1).reshape(shape)


def is_block_structured(mask: torch.Tensor, block: Sequence[int]) -> bool:
    """Whether every block of ``mask`` is all True or all False."""
    return bool(torch.equal(to_blocks(mask, block, "all"), to_blocks(mask, block, "any")))


def _block_count(n: int, block: Sequence[int]) -> int:
    size = int(block[0]) * int(block[1])
    if n % size:
        raise ValueError(f"count {n} is not a multiple of the block size {block[0]}x{block[1]}")
    return n // size


def smallest(score: torch.Tensor, candidates: torch.Tensor, n: int, block: Block = None) -> torch.Tensor:
    """Bool mask of the ``n`` candidates with the smallest score (ties broken by position).

    Args:
        score: any real tensor.
        candidates: bool tensor of the same shape; only these may be chosen.
        n: how many to choose; must not exceed ``candidates.sum()``.
        block: optional block shape (see the module docs).
    """
    return _pick(score, candidates, n, largest=False, block=block)


def largest(score: torch.Tensor, candidates: torch.Tensor, n: int, block: Block = None) -> torch.Tensor:
    """Bool mask of the ``n`` candidates with the largest score (ties broken by position)."""
    return _pick(score, candidates, n, largest=True, block=block)


def _pick(score: torch.Tensor, candidates: torch.Tensor, n: int, largest: bool, block: Block) -> torch.Tensor:
    if block is not None:
        chosen = _pick(to_blocks(score, block), to_blocks(candidates, block, "all"), _block_count(n, block),
                       largest, None)
        return from_blocks(chosen, block, candidates.shape)
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


def random_choice(candidates: torch.Tensor, n: int, generator: torch.Generator, block: Block = None) -> torch.Tensor:
    """Bool mask of ``n`` candidates drawn uniformly without replacement from ``generator``."""
    if block is not None:
        chosen = random_choice(to_blocks(candidates, block, "all"), _block_count(n, block), generator)
        return from_blocks(chosen, block, candidates.shape)
    flat_c = candidates.reshape(-1)
    idx = flat_c.nonzero().squeeze(1)
    if n > idx.numel():
        raise ValueError(f"cannot choose {n} entries among {idx.numel()} candidates")
    out = torch.zeros_like(flat_c)
    if n > 0:
        perm = torch.randperm(idx.numel(), generator=generator, device=generator.device)[:n]
        out[idx[perm.to(idx.device)]] = True
    return out.view_as(candidates)


def random_mask(shape: torch.Size, n_active: int, generator: torch.Generator, device: torch.device,
                block: Block = None) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``n_active`` True entries at random positions (or blocks)."""
    if block is not None:
        rb, _, cb, _ = block_view_shape(shape, block)
        blocks = random_mask(torch.Size((rb, cb)), _block_count(n_active, block), generator, device)
        return from_blocks(blocks, block, shape)
    numel = math.prod(int(s) for s in shape)
    perm = torch.randperm(numel, generator=generator, device=generator.device)[:n_active]
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    mask[perm.to(device)] = True
    return mask.view(shape)


def global_smallest(scores: Mapping[str, torch.Tensor], candidates: Mapping[str, torch.Tensor], n: int,
                    block: Block = None) -> dict[str, torch.Tensor]:
    """The ``n`` candidates with the smallest score over all tensors together, as one mask per tensor.

    Ties are broken by position: the earlier tensor (in mapping order), then the
    lower flat index, is chosen first.

    Args:
        scores: name to score tensor (model order).
        candidates: name to bool tensor of the same shape; only these may be chosen.
        n: how many to choose over all tensors (a multiple of the block size with ``block``).
        block: optional block shape; scores are summed per block and whole blocks chosen.

    Returns:
        Name to bool mask shaped like its scores (``True`` = chosen).

    Raises:
        ValueError: ``n`` exceeds the candidates.
    """
    return _global_pick(scores, candidates, n, largest=False, block=block)


def global_largest(scores: Mapping[str, torch.Tensor], candidates: Mapping[str, torch.Tensor], n: int,
                   block: Block = None) -> dict[str, torch.Tensor]:
    """The ``n`` candidates with the largest score over all tensors together (see :func:`global_smallest`)."""
    return _global_pick(scores, candidates, n, largest=True, block=block)


def _global_pick(scores: Mapping[str, torch.Tensor], candidates: Mapping[str, torch.Tensor], n: int, largest: bool,
                 block: Block) -> dict[str, torch.Tensor]:
    names = list(scores)
    if block is not None:
        chosen = _global_pick({k: to_blocks(scores[k], block) for k in names},
                              {k: to_blocks(candidates[k], block, "all") for k in names},
                              _block_count(n, block), largest, None)
        return {k: from_blocks(chosen[k], block, candidates[k].shape) for k in names}
    if not names:
        if n:
            raise ValueError(f"cannot choose {n} entries among 0 candidates")
        return {}
    device = scores[names[0]].device
    dtype = torch.float32  # at least float32; float64 scores keep their precision
    for k in names:
        dtype = torch.promote_types(dtype, scores[k].dtype)
    positions = [candidates[k].reshape(-1).nonzero().squeeze(1) for k in names]
    values = torch.cat([scores[k].detach().reshape(-1)[pos].to(device=device, dtype=dtype)
                        for k, pos in zip(names, positions)])
    if n > values.numel():
        raise ValueError(f"cannot choose {n} entries among {values.numel()} candidates")
    order = torch.argsort(values, descending=largest, stable=True)[:n]
    picked = torch.zeros(values.numel(), dtype=torch.bool, device=device)
    picked[order] = True
    out, start = {}, 0
    for k, pos in zip(names, positions):
        flat = torch.zeros(candidates[k].numel(), dtype=torch.bool, device=candidates[k].device)
        flat[pos[picked[start:start + pos.numel()].to(pos.device)]] = True
        out[k] = flat.view(candidates[k].shape)
        start += pos.numel()
    return out


def spread_overflow(initial: Mapping[str, float], limits: Mapping[str, float], *,
                    clamp_to: Mapping[str, float] | None = None, tolerance: float = 0.0, round_up: bool = False,
                    total: float | None = None, max_iterations: int = 1000) -> dict[str, float]:
    """Per-layer budgets with caps: what a layer cannot take is spread evenly over all layers.

    Each pass adds the previous pass's mean residual to every layer's value
    (starting from ``initial``); a value above ``limits[name]`` is set to
    ``clamp_to[name]`` (default: the limit) and the excess joins the residual.
    The loop stops when the residual is at most ``tolerance``, when the
    assigned total exceeds ``total`` (if given), or after ``max_iterations``
    passes. This is the residual loop of sparse momentum's redistribution and
    of SWAT-M's budgets.

    Args:
        initial: layer name to its first value (its share of the budget).
        limits: layer name to the most it may take.
        clamp_to: layer name to the value a layer over its limit gets.
        tolerance: residual at or below which the loop stops.
        round_up: spread ``ceil(residual / L)`` instead of ``residual / L``.
        total: stop once the values sum to more than this.
        max_iterations: passes at most.

    Returns:
        Layer name to its value (not rounded).
    """
    values: dict[str, float] = {}
    mean_residual = 0.0
    for _ in range(max_iterations):
        residual = 0.0
        for name, first in initial.items():
            value = values.get(name, first) + mean_residual
            if value > limits[name]:
                values[name] = limits[name] if clamp_to is None else clamp_to[name]
                residual += value - values[name]
            else:
                values[name] = value
        if residual <= tolerance or (total is not None and sum(values.values()) > total):
            break
        mean_residual = residual / len(values) if values else 0.0
        if round_up:
            mean_residual = float(math.ceil(mean_residual))
    return values
