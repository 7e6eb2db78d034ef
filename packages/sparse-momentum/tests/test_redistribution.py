"""The cycle arithmetic (shares, prune-rate cap, residual loop) on known numbers."""

from __future__ import annotations

import math

import pytest

from sparse_momentum import growth_redistribution, layer_shares
from sparse_momentum.redistribution import MAX_ITERATIONS, adjust_prune_rates


def test_shares_normalise_and_nan_is_zero():
    assert layer_shares({"a": 1.0, "b": 3.0, "c": float("nan")}) == {"a": 0.25, "b": 0.75, "c": 0.0}


def test_shares_all_zero_stay_zero():
    assert layer_shares({"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}


def test_prune_rate_cap_only_for_dense_growing_layers():
    rates = adjust_prune_rates(0.5, {"dense_growing": 0.6, "dense_shrinking": 0.2, "sparse": 0.1, "empty": 0.0},
                               {"dense_growing": 15, "dense_shrinking": 10, "sparse": 90, "empty": 10},
                               {"dense_growing": 100, "dense_shrinking": 100, "sparse": 100, "empty": 100})
    # uniform share 1/4: only "dense_growing" (15 % zeros, share 0.6 > 0.25) is capped; share 0 never is.
    assert rates == {"dense_growing": 0.15, "dense_shrinking": 0.5, "sparse": 0.5, "empty": 0.5}


def test_no_cap_gives_ceil_of_share():
    regrowth = growth_redistribution({"a": 0.25, "b": 0.75}, nnz={"a": 4, "b": 4}, zeros={"a": 6, "b": 6},
                                     prune_rates={"a": 0.5, "b": 0.5}, total_removed=5, adjusted_growth=0.0)
    assert regrowth == {"a": 2, "b": 4}  # ceil(1.25), ceil(3.75)


def test_adjusted_growth_enters_before_the_ceil():
    regrowth = growth_redistribution({"a": 0.5, "b": 0.5}, nnz={"a": 4, "b": 4}, zeros={"a": 6, "b": 6},
                                     prune_rates={"a": 0.5, "b": 0.5}, total_removed=4, adjusted_growth=1.5)
    assert regrowth == {"a": 3, "b": 3}  # ceil(0.5 * 5.5)


def test_cap_and_residual_spread_over_all_layers():
    # "a" asks ceil(0.9 * 2) = 2 but may take 0.99 * (1 + ceil(0.1 * 9)) = 1.98; the 0.02 left over is
    # spread evenly every pass, the part landing on capped "a" is spread again: "b" ends at 1 + 0.02.
    regrowth = growth_redistribution({"a": 0.9, "b": 0.1}, nnz={"a": 9, "b": 1}, zeros={"a": 1, "b": 9},
                                     prune_rates={"a": 0.1, "b": 0.5}, total_removed=2, adjusted_growth=0.0)
    assert regrowth["a"] == 0.99 * 2
    assert regrowth["b"] == pytest.approx(1.02, abs=1e-12)
    assert (math.floor(regrowth["a"]), math.floor(regrowth["b"])) == (1, 1)


def test_all_layers_capped_stop_after_max_iterations():
    # Every layer is full after pruning: the residual never reaches 0, the loop only ends at its bound.
    regrowth = growth_redistribution({"a": 0.5, "b": 0.5}, nnz={"a": 5, "b": 5}, zeros={"a": 0, "b": 0},
                                     prune_rates={"a": 0.2, "b": 0.2}, total_removed=2, adjusted_growth=100.0)
    assert regrowth == {"a": 0.99, "b": 0.99}


def test_residual_loop_runs_exactly_max_iterations_passes():
    # 99 layers with one free slot after pruning each ask ceil(0.01 * 100) = 1 and may take 0.99: each pass
    # they hand back 0.01 of the mean residual they receive, so the residual shrinks by q = 99/100 per pass
    # and never reaches 0. The one roomy layer, "free", collects m * (1 - q**(K - 1)) / (1 - q) over K
    # passes, m = 99 * 0.01 / 100 the residual of the first pass.
    names = [f"capped{i}" for i in range(99)] + ["free"]
    zeros = {name: 0 for name in names}
    zeros["free"] = 1000
    args = dict(shares={name: 0.01 for name in names}, nnz={name: 10 for name in names}, zeros=zeros,
                prune_rates={name: 0.1 for name in names}, total_removed=100, adjusted_growth=0.0)

    def free_after(passes: int) -> float:
        return 1 + 0.0099 * (1 - 0.99 ** (passes - 1)) / 0.01

    assert MAX_ITERATIONS == 1000  # the reference's bound
    regrowth = growth_redistribution(**args)
    assert regrowth["free"] == pytest.approx(free_after(1000), abs=1e-10)
    assert regrowth["capped0"] == 0.99
    assert growth_redistribution(**args, max_iterations=1000) == regrowth
    assert growth_redistribution(**args, max_iterations=1)["free"] == 1.0  # no residual spread yet
    assert growth_redistribution(**args, max_iterations=999)["free"] < regrowth["free"]
    assert growth_redistribution(**args, max_iterations=1001)["free"] > regrowth["free"]


def test_larger_share_never_gets_less_before_caps():
    shares = layer_shares({"a": 0.3, "b": 0.7, "c": 1.1})
    regrowth = growth_redistribution(shares, nnz={k: 10 for k in shares}, zeros={k: 90 for k in shares},
                                     prune_rates={k: 0.5 for k in shares}, total_removed=15, adjusted_growth=0.0)
    assert regrowth["a"] <= regrowth["b"] <= regrowth["c"]
    assert regrowth == {"a": 3, "b": 5, "c": 8}  # ceil(2.14), ceil(5.0), ceil(7.86)
