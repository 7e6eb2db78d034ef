"""Exact-count selection: global top-k, per-layer top-k, ties, and the layer guard."""

from __future__ import annotations

import pytest
import torch
from snip_baseline import global_top_k, keep_every_layer, per_layer_top_k


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_global_top_k_keeps_exactly_k_with_ties_broken_by_position():
    scores = {"a": t(3, 1, 2, 2), "b": t(2, 5)}
    masks, report = global_top_k(scores, 3)
    # 5 (b[1]) and 3 (a[0]) first; the three 2s tie and the earliest position, a[2], wins.
    assert masks["a"].tolist() == [True, False, True, False]
    assert masks["b"].tolist() == [False, True]
    assert report.threshold == 2.0
    assert report.added == {} and report.removed == {}


def test_global_top_k_keeps_shapes_and_counts_over_many_k():
    g = torch.Generator().manual_seed(0)
    scores = {"w1": torch.rand(5, 7, generator=g), "w2": torch.rand(3, 2, 2, generator=g)}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    for k in (0, 1, 10, 23, 47):
        masks, _ = global_top_k(scores, k)
        assert masks["w1"].shape == (5, 7) and masks["w2"].shape == (3, 2, 2)
        kept = torch.cat([m.reshape(-1) for m in masks.values()])
        assert int(kept.sum()) == k
        if 0 < k < flat.numel():
            assert float(flat[kept].min()) > float(flat[~kept].max())


def test_global_top_k_rejects_out_of_range_k():
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        global_top_k({"a": t(1, 2, 3), "b": t(4, 5, 6)}, 7)


def test_guard_gives_a_severed_layer_its_best_weight_and_drops_the_lowest_kept_elsewhere():
    scores = {"a": t(9, 8, 7, 6), "b": t(0.1, 0.2)}
    plain, _ = global_top_k(scores, 3)
    assert not plain["b"].any()  # the top-3 would sever layer b
    masks, report = global_top_k(scores, 3, guard=True)
    assert masks["a"].tolist() == [True, True, False, False]
    assert masks["b"].tolist() == [False, True]
    assert report.added == {"b": 1} and report.removed == {"a": 1}
    assert report.threshold == 7.0  # the plain top-k's smallest kept score


def test_guard_never_takes_a_layers_last_weight():
    # top-3 is a[0]=9, a[1]=8, c[0]=7; b is empty. The lowest kept, c[0], is c's only
    # weight, so the guard skips it and drops a[1] instead.
    scores = {"a": t(9, 8), "b": t(1, 0.5), "c": t(7, 0)}
    masks, report = global_top_k(scores, 3, guard=True)
    assert masks["a"].tolist() == [True, False]
    assert masks["b"].tolist() == [True, False]
    assert masks["c"].tolist() == [True, False]
    assert report.added == {"b": 0} and report.removed == {"a": 1}


def test_guard_breaks_ties_inside_a_severed_layer_by_position():
    scores = {"a": t(9, 8, 7), "b": t(0, 1, 1)}
    masks, _ = global_top_k(scores, 2, guard=True)
    assert masks["b"].tolist() == [False, True, False]
    assert masks["a"].tolist() == [True, False, False]


def test_guard_changes_nothing_when_no_layer_is_severed():
    scores = {"a": t(9, 1, 8), "b": t(7, 2)}
    plain, _ = global_top_k(scores, 3)
    guarded, report = global_top_k(scores, 3, guard=True)
    assert all(torch.equal(plain[n], guarded[n]) for n in scores)
    assert report.added == {} and report.removed == {}


def test_guard_needs_one_kept_weight_per_layer():
    with pytest.raises(ValueError, match="needs at least 3 kept weights, but only 2"):
        global_top_k({"a": t(1, 2), "b": t(3, 4), "c": t(5, 6)}, 2, guard=True)


def test_per_layer_top_k_counts_and_ties():
    scores = {"a": t(1, 3, 3, 2), "b": t(5, 4, 6)}
    masks = per_layer_top_k(scores, {"a": 2, "b": 0})
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [False, False, False]
    masks = per_layer_top_k(scores, {"a": 3, "b": 1})
    assert masks["a"].tolist() == [False, True, True, True]
    assert masks["b"].tolist() == [False, False, True]


def test_per_layer_guard_adds_the_best_weight_of_an_empty_layer_only():
    scores = {"a": t(1, 3, 2), "b": t(5, 4, 6)}
    masks = {"a": torch.tensor([False, True, False]), "b": torch.zeros(3, dtype=torch.bool)}
    fixed, report = keep_every_layer(scores, masks)
    assert fixed["a"].tolist() == [False, True, False]
    assert fixed["b"].tolist() == [False, False, True]
    assert report.added == {"b": 2} and report.removed == {}
