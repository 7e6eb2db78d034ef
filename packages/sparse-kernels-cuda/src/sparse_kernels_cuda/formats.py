"""Sparse formats built from a boolean mask, once per mask version.

The kernels never own the weight: the dense parameter stays the single source
of truth (so every optimizer and the engine's masking keep working). A *plan*
holds only the structure of the mask (index arrays); values are gathered from
the dense weight at every call, which is cheap next to the matmuls.

* :class:`CsrPlan`: CSR of ``W`` and of ``Wᵀ`` (both row-major), each with
  the flat positions of its values in ``W`` so ``values = W.view(-1)[idx]``.
* :class:`BlockPlan`: blocked-CSR-COO of square ``b×b`` blocks with a
  precomputed transposed (column-major) index, as in stk/MegaBlocks.
* helpers for block-aware topology (:func:`block_scores`,
  :func:`expand_block_mask`, :func:`block_mask_from`) and for 2:4
  (:func:`is_n_m_sparse`, :func:`n_m_mask`).

Block tiling, reduction and expansion are :mod:`sparsecore.selection`'s
(``block_view_shape``, ``to_blocks``, ``from_blocks``), the same the engine
and the algorithms use; this module adds only the kernels' layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsecore import selection

__all__ = [
    "BlockPlan",
    "CsrPlan",
    "block_mask_from",
    "block_scores",
    "blocks_to_dense",
    "dense_to_blocks",
    "expand_block_mask",
    "is_n_m_sparse",
    "n_m_mask",
]


def _check_mask(mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D bool tensor, got dtype={mask.dtype} shape={tuple(mask.shape)}")


def _crow_from_rows(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


@dataclass(frozen=True)
class CsrPlan:
    """CSR structure of a masked ``out×in`` weight and of its transpose.

    Attributes:
        shape: ``(out, in)`` of the weight.
        crow: row offsets of ``W`` (int32, ``out + 1``).
        col: column indices of ``W`` (int32, ``nnz``), row-major order.
        idx: flat positions in ``W`` of the CSR values of ``W`` (int64).
        crow_t: row offsets of ``Wᵀ`` (int32, ``in + 1``).
        col_t: column indices of ``Wᵀ`` (int32).
        idx_t: flat positions in ``W`` of the CSR values of ``Wᵀ`` (int64).
    """

    shape: tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    idx: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    idx_t: torch.Tensor

    @property
    def nnz(self) -> int:
        """Number of active weights."""
        return int(self.idx.numel())

    @property
    def density(self) -> float:
        """Fraction of active weights."""
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> CsrPlan:
        """Build both CSR structures from a bool mask shaped like the weight.

        Args:
            mask: 2-D bool tensor, ``True`` = active.

        Returns:
            The plan. Indices are int32 (MKL's native type) where the size allows.
        """
        _check_mask(mask)
        n_out, n_in = mask.shape
        index_dtype = torch.int32 if mask.numel() < 2**31 else torch.int64
        idx = mask.reshape(-1).nonzero().squeeze(1)
        rows, cols = idx // n_in, idx % n_in
        # Transposed order: sort by (column, row); nonzero() of the transposed mask does it.
        pos_t = mask.t().contiguous().reshape(-1).nonzero().squeeze(1)
        cols_t, rows_t = pos_t // n_out, pos_t % n_out  # row of Wᵀ = column of W
        idx_t = rows_t * n_in + cols_t
        return cls(
            shape=(n_out, n_in),
            crow=_crow_from_rows(rows, n_out).to(index_dtype),
            col=cols.to(index_dtype),
            idx=idx,
            crow_t=_crow_from_rows(cols_t, n_in).to(index_dtype),
            col_t=rows_t.to(index_dtype),
            idx_t=idx_t,
        )

    def to_mask(self) -> torch.Tensor:
        """The bool mask the plan was built from (``True`` at the CSR positions)."""
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.idx.device)
        return flat.index_fill_(0, self.idx, True).view(self.shape)

    def to_csr(self, weight: torch.Tensor) -> torch.Tensor:
        """The masked weight as a ``torch.sparse_csr`` tensor (values gathered from ``weight``)."""
        values = weight.reshape(-1).index_select(0, self.idx)
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def to_csr_t(self, weight: torch.Tensor) -> torch.Tensor:
        """The transposed masked weight as a ``torch.sparse_csr`` tensor."""
        values = weight.reshape(-1).index_select(0, self.idx_t)
        shape_t = (self.shape[1], self.shape[0])
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values, shape_t, check_invariants=False)


@dataclass(frozen=True)
class BlockPlan:
    """Blocked-CSR-COO structure of a block mask, with its transposed index.

    Live blocks are numbered in row-major order. ``row_ptr``/``col_idx`` walk
    the blocks of a block row (forward product); ``col_ptr``/``t_row_idx``/
    ``t_block`` walk the blocks of a block column (input gradient) without
    materialising ``Wᵀ``; ``row_idx``/``col_idx`` give each block's coordinates
    (weight gradient, one program per live block).

    Attributes:
        shape: ``(out, in)`` of the weight.
        block: block edge ``b`` (blocks are ``b×b``).
        row_ptr: int32 ``(out/b + 1)`` offsets into the row-major block list.
        row_idx: int32 block-row of every live block.
        col_idx: int32 block-column of every live block.
        col_ptr: int32 ``(in/b + 1)`` offsets into the column-major block list.
        t_row_idx: int32 block-row of every live block in column-major order.
        t_block: int32 row-major block number of every live block in column-major order.
    """

    shape: tuple[int, int]
    block: int
    row_ptr: torch.Tensor
    row_idx: torch.Tensor
    col_idx: torch.Tensor
    col_ptr: torch.Tensor
    t_row_idx: torch.Tensor
    t_block: torch.Tensor

    @property
    def n_blocks(self) -> int:
        """Number of live blocks."""
        return int(self.row_idx.numel())

    @property
    def density(self) -> float:
        """Fraction of live blocks."""
        rb, cb = self.shape[0] // self.block, self.shape[1] // self.block
        return self.n_blocks / max(1, rb * cb)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block: int) -> BlockPlan:
        """Build the plan from an element mask that is constant on ``block×block`` tiles.

        Args:
            mask: 2-D bool mask shaped like the weight.
            block: block edge; must divide both dimensions.

        Raises:
            ValueError: if the shape is not divisible by ``block`` or the mask
                is not block-structured.
        """
        bmask = block_mask_from(mask, block)
        return cls.from_block_mask(bmask, block)

    @classmethod
    def from_block_mask(cls, bmask: torch.Tensor, block: int) -> BlockPlan:
        """Build the plan from a mask of blocks (``out/b × in/b``, bool)."""
        _check_mask(bmask)
        rb, cb = bmask.shape
        pos = bmask.reshape(-1).nonzero().squeeze(1)
        rows, cols = pos // cb, pos % cb
        row_major_id = torch.full((rb * cb,), -1, dtype=torch.int64, device=bmask.device)
        row_major_id[pos] = torch.arange(pos.numel(), device=bmask.device)
        pos_t = bmask.t().contiguous().reshape(-1).nonzero().squeeze(1)
        cols_t, rows_t = pos_t // rb, pos_t % rb
        t_block = row_major_id[rows_t * cb + cols_t]
        i32 = torch.int32
        return cls(
            shape=(rb * block, cb * block),
            block=block,
            row_ptr=_crow_from_rows(rows, rb).to(i32),
            row_idx=rows.to(i32),
            col_idx=cols.to(i32),
            col_ptr=_crow_from_rows(cols_t, cb).to(i32),
            t_row_idx=rows_t.to(i32),
            t_block=t_block.to(i32),
        )

    def to(self, device: torch.device | str) -> BlockPlan:
        """A copy of the plan with every index on ``device``."""
        return BlockPlan(
            shape=self.shape,
            block=self.block,
            **{
                name: getattr(self, name).to(device)
                for name in ("row_ptr", "row_idx", "col_idx", "col_ptr", "t_row_idx", "t_block")
            },
        )


def block_mask_from(mask: torch.Tensor, block: int) -> torch.Tensor:
    """Reduce an element mask to its block mask, checking that it is block-structured.

    Args:
        mask: 2-D bool mask whose dimensions are divisible by ``block``.
        block: block edge.

    Returns:
        Bool tensor ``(out/b, in/b)``.

    Raises:
        ValueError: if the shape is not divisible or some block is partially active.
    """
    _check_mask(mask)
    any_on = selection.to_blocks(mask, (block, block), "any")  # raises if the shape is not divisible
    if not torch.equal(any_on, selection.to_blocks(mask, (block, block), "all")):
        raise ValueError(f"mask is not made of whole {block}x{block} blocks")
    return any_on


def block_scores(score: torch.Tensor, block: int | tuple[int, int], reduce: str = "sum") -> torch.Tensor:
    """Aggregate a per-weight score to one score per block (block-aware pruning/growth).

    Args:
        score: 2-D per-weight score (e.g. ``|w|`` for magnitude pruning,
            ``|momentum|`` for sparse momentum growth).
        block: block shape ``(bo, bi)`` or an int for square blocks; must
            divide the score's shape.
        reduce: ``"sum"``, ``"mean"`` or ``"max"``; ``"sum"`` of ``|w|`` is the
            usual L1 block-magnitude criterion.

    Returns:
        Tensor ``(out/bo, in/bi)`` of block scores, in the score's dtype.

    Raises:
        ValueError: the shape is not divisible by the block, or an unknown ``reduce``.
    """
    # sparsecore.selection.to_blocks sums in float32; kernels keep the score's dtype, so only the tiling is shared
    tiles = score.reshape(selection.block_view_shape(score.shape, _block_shape(block)))
    if reduce == "sum":
        return tiles.sum(dim=(1, 3))
    if reduce == "mean":
        return tiles.mean(dim=(1, 3))
    if reduce == "max":
        return tiles.amax(dim=(1, 3))
    raise ValueError(f"unknown reduce {reduce!r}; expected 'sum', 'mean' or 'max'")


def expand_block_mask(block_mask: torch.Tensor, block: int | tuple[int, int]) -> torch.Tensor:
    """Expand a block mask ``(out/bo, in/bi)`` to an element mask ``(out, in)``.

    Args:
        block_mask: bool tensor of blocks.
        block: block shape ``(bo, bi)`` or an int for square blocks.

    Returns:
        Bool tensor with every element of a live block set.
    """
    bo, bi = _block_shape(block)
    return selection.from_blocks(block_mask, (bo, bi), (block_mask.shape[0] * bo, block_mask.shape[1] * bi))


def _block_shape(block: int | tuple[int, int]) -> tuple[int, int]:
    return (block, block) if isinstance(block, int) else (int(block[0]), int(block[1]))


def dense_to_blocks(weight: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """Gather the live blocks of a dense weight into ``[n_blocks, b, b]`` (row-major block order)."""
    b = plan.block
    rb, cb = plan.shape[0] // b, plan.shape[1] // b
    tiles = weight.reshape(rb, b, cb, b).permute(0, 2, 1, 3)
    return tiles[plan.row_idx.long(), plan.col_idx.long()].contiguous()


def blocks_to_dense(values: torch.Tensor, plan: BlockPlan) -> torch.Tensor:
    """Scatter ``[n_blocks, b, b]`` block values into a dense weight (zeros elsewhere)."""
    b = plan.block
    rb, cb = plan.shape[0] // b, plan.shape[1] // b
    tiles = values.new_zeros(rb, cb, b, b)
    tiles[plan.row_idx.long(), plan.col_idx.long()] = values
    return tiles.permute(0, 2, 1, 3).reshape(plan.shape)


def is_n_m_sparse(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` active weights."""
    _check_mask(mask)
    if mask.shape[1] % m:
        return False
    return bool((mask.reshape(mask.shape[0], -1, m).sum(-1) <= n).all())


def n_m_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` highest-scoring weights of every group of ``m`` consecutive inputs.

    Args:
        score: 2-D per-weight score, last dimension divisible by ``m``.
        n: weights kept per group.
        m: group size.

    Returns:
        Bool mask shaped like ``score`` with exactly ``n`` of every ``m`` active.
    """
    if score.dim() != 2 or score.shape[1] % m:
        raise ValueError(f"score must be 2-D with a last dimension divisible by {m}, got {tuple(score.shape)}")
    groups = score.reshape(score.shape[0], -1, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(score.shape)
