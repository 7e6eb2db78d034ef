import pytest
import torch
from sparsecore import ConfigurationError
from sparsecore_swat import topk


def test_keep_count_is_ceil_without_float_noise():
    assert topk.keep_count(10, 0.2) == 2          # 0.2 * 10 == 2.0000000000000004
    assert topk.keep_count(10, 0.21) == 3
    assert topk.keep_count(10, 1e-9) == 1         # at least one
    assert topk.keep_count(7, 1.0) == 7


def test_topk_mask_keeps_exactly_k_without_ties(distinct):
    x = distinct(5, 13)
    mask = topk.topk_mask(x, 0.3)
    k = topk.keep_count(65, 0.3)
    assert int(mask.sum()) == k
    assert x.abs()[mask].min() > x.abs()[~mask].max()


def test_ties_at_the_threshold_are_all_kept():
    x = torch.tensor([5.0, -3.0, 3.0, 3.0, 1.0, 0.5])
    mask = topk.topk_mask(x, 0.5)               # k = 3, threshold 3, four entries reach it
    assert mask.tolist() == [True, True, True, True, False, False]


def test_exact_zeros_are_never_kept():
    x = torch.tensor([0.0, 0.0, 0.0, 2.0, 0.0, -1.0])
    mask = topk.topk_mask(x, 0.8)               # threshold 0: only the nonzeros
    assert mask.tolist() == [False, False, False, True, False, True]


def test_keep_one_keeps_every_nonzero(distinct):
    x = distinct(4, 4)
    assert bool(topk.topk_mask(x, 1.0).all())


def test_channel_structure_keeps_whole_kernel_slices_by_l1_norm(distinct):
    w = distinct(6, 5, 3, 3)
    thr = topk.weight_threshold(w, 0.3, "channel")
    mask = topk.weight_mask(w, thr, "channel")
    per_slice = mask.flatten(2)
    assert bool((per_slice.all(-1) | ~per_slice.any(-1)).all())          # all-or-nothing
    kept = per_slice.all(-1)
    assert int(kept.sum()) == topk.keep_count(30, 0.3)
    norms = w.abs().sum((2, 3))
    assert norms[kept].min() > norms[~kept].max()


def test_filter_structure_keeps_whole_output_filters(distinct):
    w = distinct(8, 3, 3, 3)
    mask = topk.weight_mask(w, topk.weight_threshold(w, 0.25, "filter"), "filter")
    per_filter = mask.flatten(1)
    assert bool((per_filter.all(-1) | ~per_filter.any(-1)).all())
    assert int(per_filter.all(-1).sum()) == 2


def test_structure_is_element_wise_for_linear_weights(distinct):
    w = distinct(6, 10)
    assert torch.equal(topk.weight_mask(w, topk.weight_threshold(w, 0.2, "channel"), "channel"),
                       topk.topk_mask(w, 0.2))


def test_unknown_structure_is_rejected():
    with pytest.raises(ConfigurationError, match="structure"):
        topk.check_structure("rows")


@pytest.mark.parametrize("order", ["random", "sorted", "ties", "nan"])
@pytest.mark.parametrize("keep", [0.001, 0.1, 0.5, 0.9])
def test_large_tensors_get_the_same_threshold_as_a_full_selection(order, keep):
    n = topk.SAMPLED_SELECTION_MIN + 12345
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(n, generator=g)
    if order == "sorted":  # a strided sample of sorted scores brackets well; reversed halves defeat it
        scores = torch.cat([scores.sort().values[n // 2:], scores.sort().values[: n // 2]])
    elif order == "ties":
        scores = (scores * 50).floor()
    elif order == "nan":
        scores[::7] = float("nan")
    k = topk.keep_count(n, keep)
    expected = torch.kthvalue(scores, n - k + 1).values
    got = topk.kth_largest(scores, keep)
    assert torch.equal(got, expected) or (got.isnan() and expected.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("structure, shape", [(None, (24, 17)), (None, (6, 4, 3, 3)), ("channel", (6, 4, 3, 3))])
def test_selected_weight_equals_weight_times_mask(dtype, structure, shape):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=g).to(dtype)
    weight.view(-1)[:4] = 0.0
    for keep in (0.05, 0.3, 1.0):
        threshold = topk.weight_threshold(weight, keep, structure)
        if structure is None:  # entries exactly at the threshold, with either sign, are kept
            weight.view(-1)[4], weight.view(-1)[5] = threshold, -threshold
        expected = weight * topk.weight_mask(weight, threshold, structure)
        got = topk.selected_weight(weight, threshold, structure)
        assert torch.equal(got, expected)
        assert torch.equal(got != 0, topk.weight_mask(weight, threshold, structure) & (weight != 0))
