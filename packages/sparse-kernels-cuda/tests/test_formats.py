"""Format round trips: CSR, blocked CSR-COO, block and 2:4 mask helpers."""

from __future__ import annotations

import pytest
import torch
from sparsecore import selection

from sparse_kernels_cuda import (
    BlockPlan,
    CsrPlan,
    block_mask_from,
    block_scores,
    blocks_to_dense,
    dense_to_blocks,
    detect_pattern,
    expand_block_mask,
    is_n_m_sparse,
    n_m_mask,
)


def test_csr_plan_round_trip(gen):
    w = torch.randn(37, 53, generator=gen)
    m = torch.rand(37, 53, generator=gen) < 0.2
    plan = CsrPlan.from_mask(m)
    assert plan.nnz == int(m.sum())
    assert plan.crow.dtype == torch.int32 and plan.col.dtype == torch.int32
    torch.testing.assert_close(plan.to_csr(w).to_dense(), w * m, rtol=0, atol=0)
    torch.testing.assert_close(plan.to_csr_t(w).to_dense(), (w * m).t(), rtol=0, atol=0)
    assert plan.density == pytest.approx(m.float().mean().item())


def test_csr_plan_empty_rows_and_empty_mask():
    m = torch.zeros(4, 6, dtype=torch.bool)
    m[2, 5] = True
    plan = CsrPlan.from_mask(m)
    assert plan.crow.tolist() == [0, 0, 0, 1, 1]
    assert plan.crow_t.tolist() == [0, 0, 0, 0, 0, 0, 1]
    empty = CsrPlan.from_mask(torch.zeros(3, 3, dtype=torch.bool))
    assert empty.nnz == 0 and empty.to_csr(torch.ones(3, 3)).to_dense().abs().sum() == 0


def test_csr_plan_rejects_bad_mask():
    with pytest.raises(ValueError, match="2-D bool"):
        CsrPlan.from_mask(torch.ones(3, 3))


@pytest.mark.parametrize("block", [16, 32])
def test_block_plan_round_trip_and_transposed_index(gen, block):
    bm = torch.rand(3, 5, generator=gen) < 0.5
    bm[0, 0] = True
    m = expand_block_mask(bm, block)
    plan = BlockPlan.from_mask(m, block)
    assert plan.n_blocks == int(bm.sum())
    w = torch.randn(3 * block, 5 * block, generator=gen)
    vals = dense_to_blocks(w, plan)
    assert vals.shape == (plan.n_blocks, block, block)
    torch.testing.assert_close(blocks_to_dense(vals, plan), w * m, rtol=0, atol=0)
    # Row-major list: row_ptr delimits each block row.
    for r in range(3):
        cols = plan.col_idx[plan.row_ptr[r]:plan.row_ptr[r + 1]].tolist()
        assert cols == bm[r].nonzero().squeeze(1).tolist()
    # Column-major list: t_block points back to the same (row, col) block.
    for c in range(5):
        js = range(int(plan.col_ptr[c]), int(plan.col_ptr[c + 1]))
        rows = [int(plan.t_row_idx[j]) for j in js]
        assert rows == bm[:, c].nonzero().squeeze(1).tolist()
        for j in js:
            k = int(plan.t_block[j])
            assert int(plan.row_idx[k]) == int(plan.t_row_idx[j]) and int(plan.col_idx[k]) == c


def test_block_mask_from_rejects_partial_blocks():
    m = torch.zeros(32, 32, dtype=torch.bool)
    m[0, 0] = True
    with pytest.raises(ValueError, match="whole 16x16 blocks"):
        block_mask_from(m, 16)
    with pytest.raises(ValueError, match="not divisible"):
        block_mask_from(torch.zeros(30, 32, dtype=torch.bool), 16)


def test_block_scores_and_expand():
    score = torch.arange(16.0).reshape(4, 4)
    s = block_scores(score, 2)
    assert s.tolist() == [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    assert block_scores(score, (2, 4), reduce="max").tolist() == [[7.0], [15.0]]
    bm = torch.tensor([[True, False], [False, True]])
    m = expand_block_mask(bm, 2)
    assert m.shape == (4, 4) and m[:2, :2].all() and not m[:2, 2:].any() and m[2:, 2:].all()
    with pytest.raises(ValueError, match="unknown reduce"):
        block_scores(score, 2, reduce="median")


def test_n_m_mask(gen):
    score = torch.randn(8, 16, generator=gen)
    m = n_m_mask(score)
    assert is_n_m_sparse(m)
    assert (m.reshape(8, 4, 4).sum(-1) == 2).all()
    kept = torch.where(m, score, torch.full_like(score, -float("inf"))).reshape(8, 4, 4)
    dropped = torch.where(~m, score, torch.full_like(score, float("inf"))).reshape(8, 4, 4)
    assert (kept.topk(2, -1).values.min(-1).values >= dropped.min(-1).values).all()
    assert not is_n_m_sparse(torch.ones(4, 8, dtype=torch.bool))


def test_detect_pattern(gen):
    assert detect_pattern(expand_block_mask(torch.tensor([[True, False], [False, True]]), 64)) == "block64"
    assert detect_pattern(expand_block_mask(torch.tensor([[True, False, True]]), 32)) == "block32"
    assert detect_pattern(n_m_mask(torch.randn(4, 24, generator=gen))) == "2:4"
    assert detect_pattern(torch.rand(48, 48, generator=gen) < 0.5) == "unstructured"


@pytest.mark.parametrize("block", [(16, 16), (16, 32), (2, 4)])
def test_block_helpers_agree_with_sparsecore_selection(gen, block):
    bm = torch.rand(3, 5, generator=gen) < 0.5
    shape = (3 * block[0], 5 * block[1])
    m = expand_block_mask(bm, block)
    assert torch.equal(m, selection.from_blocks(bm, block, shape))
    assert selection.is_block_structured(m, block)
    score = torch.rand(shape, generator=gen)
    torch.testing.assert_close(block_scores(score, block), selection.to_blocks(score, block, "sum"))
    assert block_scores(score.double(), block).dtype == torch.float64  # kernels keep the score's dtype
    if block[0] == block[1]:
        assert torch.equal(block_mask_from(m, block[0]), bm)


def test_block_helpers_go_through_sparsecore_selection(monkeypatch, gen):
    """One implementation of block tiling: a change in sparsecore.selection reaches the kernels."""
    used = set()

    def spying(name, original):
        def spy(*args, **kwargs):
            used.add(name)
            return original(*args, **kwargs)
        return spy

    for name in ("block_view_shape", "to_blocks", "from_blocks", "is_block_structured"):
        monkeypatch.setattr(selection, name, spying(name, getattr(selection, name)))
    bm = torch.tensor([[True, False], [False, True]])
    m = expand_block_mask(bm, 16)
    assert used == {"from_blocks"}
    assert torch.equal(block_mask_from(m, 16), bm) and "to_blocks" in used
    block_scores(torch.rand(32, 32, generator=gen), 16)
    assert "block_view_shape" in used
    assert detect_pattern(m) == "block16" and "is_block_structured" in used
    with pytest.raises(ValueError, match=r"not divisible into blocks of 16x16"):
        block_mask_from(torch.zeros(30, 32, dtype=torch.bool), 16)
