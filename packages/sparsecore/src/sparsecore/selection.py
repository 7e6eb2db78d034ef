"""Tensor helpers for choosing exactly ``n`` entries of a mask, shared by the defaults and every plugin.

Per layer: :func:`smallest`, :func:`largest`, :func:`random_choice`,
:func:`random_mask`; per N:M group: :func:`top_per_group`,
:func:`top_k_per_group`. Over all layers at once: :func:`global_smallest`,
:func:`global_largest`. Budgets across layers: :func:`spread_overflow`.

Every helper takes an optional pattern as ``block``; pass ``layer.pattern``
(``sparsifier.pattern`` for the global helpers) and a helper follows whatever
pattern the run has:

* ``None``: unstructured; any ``n`` candidates.
* ``(rows, cols)``: block-sparse. The weight is seen as a matrix
  ``(shape[0], prod(shape[1:]))`` tiled by blocks, scores are summed per block,
  only blocks whose entries are all candidates can be chosen, and ``n`` (a
  multiple of the block size) counts weights, not blocks.
* an :class:`NMPattern`: N:M structured (exactly N active weights in every
  group of M consecutive weights along the input dimension). The choice is
  made per group, by one of two rules:

  - **fill**: when every group holds at least ``M - N`` candidates and ``n``
    equals the sum over groups of ``candidates - (M - N)``, each group gets
    exactly that many of its best candidates: the count that leaves N entries
    in the group when its non-candidates count as active. Growth after pruning
    (``candidates=~layer.mask``, ``n`` = what the layer lost) gives every group
    back exactly what it lost; a fresh mask (every entry a candidate,
    ``n = N * groups``) takes the N best of every group.
  - **thin**: otherwise, when no group holds more than N candidates (the
    candidates are active weights being pruned), the ``n`` best over the whole
    layer, since removing any active weights keeps every group within N.

  Any other request raises ``ValueError``. Fill takes precedence where both
  rules apply; both answers are then valid prune selections.

Scores and candidates may be ``DTensor``s (an FSDP2-sharded weight, its
gradient or optimizer state): they are gathered whole first (a collective, so
every rank makes the same call) and the answer is a plain tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparsecore.distributed import full_tensor


@dataclass(frozen=True)
class NMPattern:
    """N:M structured sparsity: exactly ``n`` active weights in every group of ``m``.

    Groups are ``m`` consecutive weights along the input (reduction) dimension,
    dim 1 of the weight: for a Linear ``(out, in)`` along ``in``; for a
    convolution ``(out, in, *kernel)`` along the input channels at each output
    channel and kernel position, as SR-STE and NVIDIA ASP group them.

    Attributes:
        n: active weights per group, ``0 < n < m``.
        m: weights per group.

    Example:
        ```python
        pattern = NMPattern.parse("2:4")
        everything = torch.ones_like(weight, dtype=torch.bool)
        mask = selection.largest(weight.abs(), everything, pattern.active_count(weight.shape), pattern)
        assert pattern.is_exact(mask)  # the 2 largest |w| of every group of 4
        ```
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m))
        if not ints or not 0 < self.n < self.m:
            raise ValueError(f"an N:M pattern needs integers 0 < N < M, got {self.n!r}:{self.m!r}")

    @classmethod
    def parse(cls, spec: Any) -> NMPattern:
        """An :class:`NMPattern` from ``"N:M"`` (e.g. ``"2:4"``), an ``(N, M)`` pair, or an :class:`NMPattern`.

        Raises:
            ValueError: anything else, or not ``0 < N < M``.
        """
        if isinstance(spec, NMPattern):
            return spec
        if isinstance(spec, str):
            parts = spec.strip().split(":")
            if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
                return cls(int(parts[0]), int(parts[1]))
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(*spec)
        raise ValueError(f"an N:M pattern is written 'N:M' with integers 0 < N < M (e.g. '2:4'), got {spec!r}")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        """Fraction of active weights, ``n / m``."""
        return self.n / self.m

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless ``shape`` has an input dimension (dim 1) divisible by ``m``."""
        if len(shape) < 2 or int(shape[1]) % self.m:
            size = int(shape[1]) if len(shape) >= 2 else None
            raise ValueError(f"weight of shape {tuple(shape)}: its input dimension (dim 1, size {size}) does not "
                             f"divide into groups of {self.m} for {self} sparsity")

    def groups_in(self, shape: Sequence[int]) -> int:
        """Number of groups of a weight shape."""
        self.check_shape(shape)
        return math.prod(int(s) for s in shape) // self.m

    def active_count(self, shape: Sequence[int]) -> int:
        """Active weights of an N:M mask of ``shape``: ``n`` per group."""
        return self.n * self.groups_in(shape)

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as ``(groups, m)``: dim 1 moved last, then cut into runs of ``m``."""
        self.check_shape(t.shape)
        return t.movedim(1, -1).reshape(-1, self.m)

    def ungrouped(self, g: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`grouped`: a ``(groups, m)`` tensor back in the weight's ``shape``."""
        dims = tuple(int(s) for s in shape)
        return g.reshape(dims[:1] + dims[2:] + dims[1:2]).movedim(-1, 1)

    def group_counts(self, mask: torch.Tensor) -> torch.Tensor:
        """True entries of every group of ``mask``, shape ``(groups,)``."""
        return self.grouped(mask).sum(dim=1, dtype=torch.int16 if self.m < 2**15 else torch.int64)

    def is_exact(self, mask: torch.Tensor) -> bool:
        """Whether every group of ``mask`` holds exactly ``n`` True entries."""
        return bool((self.group_counts(mask) == self.n).all())


#: What a helper's ``block`` argument accepts: ``None``, a block shape ``(rows, cols)`` or an :class:`NMPattern`.
Block = Sequence[int] | NMPattern | None


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
    score, candidates = full_tensor(score), full_tensor(candidates)
    if isinstance(block, NMPattern):
        quotas = nm_quotas(candidates, n, block)
        if quotas is not None:
            return _pick_per_group(score, candidates, quotas, largest, block)
        block = None  # thin: any n candidates
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


def top_per_group(score: torch.Tensor, pattern: NMPattern, largest: bool = True) -> torch.Tensor:
    """The N:M mask that keeps, in every group, the ``pattern.n`` entries of largest (or smallest) score.

    Ties go to the lower index. The same as ``largest(score, all-True, pattern.active_count(shape), pattern)``,
    without counting candidates (SR-STE recomputes it every step).
    """
    score = full_tensor(score)
    quotas = torch.full((pattern.groups_in(score.shape),), pattern.n, dtype=torch.int16, device=score.device)
    return _pick_per_group(score, None, quotas, largest, pattern)


def top_k_per_group(score: torch.Tensor, candidates: torch.Tensor, k: int, pattern: NMPattern,
                    largest: bool = True) -> torch.Tensor:
    """In every group of ``pattern``, the ``k`` candidates of largest (or smallest) score; ties to the lower index.

    For a count other than the pattern's N (gradual N:M pruning keeps ``k``
    per group with ``N <= k <= M``): ``layer.mask & ~top_k_per_group(|w|,
    layer.mask, k, layer.pattern)`` prunes every group down to ``k`` by
    magnitude.

    Args:
        score: any real tensor shaped like the weight.
        candidates: bool tensor of the same shape; every group must hold at least ``k``.
        k: how many to choose per group, ``0 <= k <= pattern.m``.
        pattern: the layer's :class:`NMPattern` (its groups; its N is not used).
        largest: choose the largest scores (``False``: the smallest).

    Raises:
        ValueError: ``k`` out of range, or a group with fewer than ``k`` candidates.
    """
    score, candidates = full_tensor(score), full_tensor(candidates)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= pattern.m:
        raise ValueError(f"k must be an int from 0 to {pattern.m} for groups of {pattern.m}, got {k!r}")
    counts = pattern.group_counts(candidates)
    short = int((counts < k).sum())
    if short:
        raise ValueError(f"cannot choose {k} per group: {short} of {counts.numel()} groups hold fewer candidates")
    quotas = torch.full_like(counts, k)
    return _pick_per_group(score, candidates, quotas, largest, pattern)


def nm_quotas(candidates: torch.Tensor, n: int, pattern: NMPattern) -> torch.Tensor | None:
    """How many entries an N:M choice of ``n`` takes from each group (see the module docs).

    Returns:
        The per-group counts ``(groups,)`` under the fill rule, or ``None``
        under the thin rule (any ``n`` candidates of the layer).

    Raises:
        ValueError: neither rule applies.
    """
    if n == 0:  # choosing nothing is valid whatever the groups hold (a layer kept above N by nm_group_count)
        return torch.zeros(pattern.groups_in(candidates.shape), dtype=torch.int16, device=candidates.device)
    quotas = _fill_quotas(candidates, pattern)
    if quotas is not None and int(quotas.sum()) == n:
        return quotas
    _require_thin(candidates, n, pattern, quotas)
    return None


def _fill_quotas(candidates: torch.Tensor, pattern: NMPattern) -> torch.Tensor | None:
    """Per group, the candidates beyond ``M - N``; ``None`` if a group holds fewer than ``M - N``."""
    quotas = pattern.group_counts(candidates) - (pattern.m - pattern.n)
    return quotas if bool((quotas >= 0).all()) else None


def _require_thin(candidates: torch.Tensor, n: int, pattern: NMPattern, fill: torch.Tensor | None,
                  where: str = "") -> None:
    most = int(pattern.group_counts(candidates).max()) if candidates.numel() else 0
    if most <= pattern.n:
        return
    refill = "" if fill is None else f" (filling every group takes exactly n={int(fill.sum())})"
    raise ValueError(f"{where}cannot choose {n} entries in a {pattern} pattern: a group holds {most} candidates, "
                     f"more than {pattern.n}, so this is not a prune of active weights, and n does not refill every "
                     f"group to {pattern.n}{refill}")


def _pick_per_group(score: torch.Tensor, candidates: torch.Tensor | None, quotas: torch.Tensor, largest: bool,
                    pattern: NMPattern) -> torch.Tensor:
    """In every group, its ``quotas[g]`` candidates of smallest/largest score (ties broken by position)."""
    s = pattern.grouped(score.detach())
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    c = None if candidates is None else pattern.grouped(candidates)  # None: every entry is a candidate
    rank = _group_ranks(s, c, largest) if pattern.m <= _PAIRWISE_MAX_M else _group_ranks_sorted(s, c, largest)
    chosen = rank < quotas.to(rank.device).unsqueeze(1)
    if c is not None:
        chosen &= c
    return pattern.ungrouped(chosen, score.shape).contiguous()


#: Groups up to this size are ranked by pairwise comparisons (M² vectorised ops, several times faster than a
#: sort of many tiny rows on CPU); larger groups are sorted.
_PAIRWISE_MAX_M = 8


def _group_ranks(s: torch.Tensor, c: torch.Tensor | None, largest: bool) -> torch.Tensor:
    """Rank of every candidate within its group: candidates that come first (better score, or equal score at a
    lower position) counted column by column; values at non-candidates are meaningless."""
    cols = s.unbind(1)
    cand = None if c is None or bool(c.all()) else c.unbind(1)
    ranks = []
    for j in range(s.shape[1]):
        rank = torch.zeros(s.shape[0], dtype=torch.uint8, device=s.device)
        for k in range(s.shape[1]):
            if k == j:
                continue
            if largest:
                ahead = cols[k] >= cols[j] if k < j else cols[k] > cols[j]
            else:
                ahead = cols[k] <= cols[j] if k < j else cols[k] < cols[j]
            rank += ahead if cand is None else ahead & cand[k]
        ranks.append(rank)
    return torch.stack(ranks, dim=1)


def _group_ranks_sorted(s: torch.Tensor, c: torch.Tensor | None, largest: bool) -> torch.Tensor:
    """:func:`_group_ranks` by a stable sort: candidates first, in score order."""
    order = torch.argsort(s, dim=1, descending=largest, stable=True)
    if c is not None:
        order = order.gather(1, torch.argsort((~c.gather(1, order)).to(torch.uint8), dim=1, stable=True))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=order.device).expand_as(order))
    return rank


def random_choice(candidates: torch.Tensor, n: int, generator: torch.Generator, block: Block = None) -> torch.Tensor:
    """Bool mask of ``n`` candidates drawn uniformly without replacement from ``generator``."""
    candidates = full_tensor(candidates)
    if isinstance(block, NMPattern):
        quotas = nm_quotas(candidates, n, block)
        if quotas is not None:
            keys = torch.rand(candidates.shape, generator=generator, device=generator.device)
            return _pick_per_group(keys.to(candidates.device), candidates, quotas, True, block)
        block = None
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
    """A bool mask of ``shape`` with exactly ``n_active`` True entries at random positions (or blocks).

    With an :class:`NMPattern`, ``n_active`` must be ``N * groups``: N random entries in every group.
    """
    if isinstance(block, NMPattern):
        if n_active != block.active_count(shape):
            raise ValueError(f"a {block} mask of shape {tuple(shape)} holds exactly {block.active_count(shape)} "
                             f"active entries, not {n_active}")
        return random_choice(torch.ones(shape, dtype=torch.bool, device=device), n_active, generator, block)
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
    scores = {k: full_tensor(scores[k]) for k in names}
    candidates = {k: full_tensor(candidates[k]) for k in names}
    if isinstance(block, NMPattern):
        fills = {k: q for k in names if (q := _fill_quotas(candidates[k], block)) is not None}
        if len(fills) == len(names) and sum(int(q.sum()) for q in fills.values()) == n:
            return {k: _pick_per_group(scores[k], candidates[k], fills[k], largest, block) for k in names}
        for k in names:
            _require_thin(candidates[k], n, block, fills.get(k), f"tensor {k!r}: ")
        block = None
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
                        for k, pos in zip(names, positions, strict=True)])
    if n > values.numel():
        raise ValueError(f"cannot choose {n} entries among {values.numel()} candidates")
    order = torch.argsort(values, descending=largest, stable=True)[:n]
    picked = torch.zeros(values.numel(), dtype=torch.bool, device=device)
    picked[order] = True
    out, start = {}, 0
    for k, pos in zip(names, positions, strict=True):
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
