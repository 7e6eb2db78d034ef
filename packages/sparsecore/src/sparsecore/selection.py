"""Tensor helpers for choosing exactly ``n`` entries of a mask, shared by the defaults and plugins.

Every helper takes an optional ``block=(rows, cols)``: the weight is then seen
as a matrix ``(shape[0], prod(shape[1:]))`` tiled by blocks, scores are summed
per block, only blocks whose entries are all candidates can be chosen, and
``n`` (a multiple of the block size) counts weights, not blocks.
"""

from __future__ import annotations

import math
from typing import Sequence

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
