import math

from sparsecore_swat.budget import momentum_budgets, momentum_shares


def test_shares_normalise_and_treat_nan_as_zero():
    shares = momentum_shares({"a": 1.0, "b": 3.0, "c": float("nan")})
    assert shares == {"a": 0.25, "b": 0.75, "c": 0.0}


def test_budgets_follow_shares_and_meet_the_overall_density():
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    densities = momentum_budgets(sizes, {"a": 0.5, "b": 0.25, "c": 0.25}, 0.1)
    assert densities["a"] > densities["b"]
    kept = sum(densities[n] * sizes[n] for n in sizes)
    assert math.isclose(kept, 0.1 * 4000, abs_tol=3)


def test_a_layer_above_99_percent_goes_dense_and_its_overflow_is_spread():
    sizes = {"small": 100, "big": 10000}
    densities = momentum_budgets(sizes, {"small": 0.9, "big": 0.1}, 0.1)   # small wants 909 > 99
    assert densities["small"] == 1.0
    assert densities["big"] * 10000 > math.ceil(0.1 * 0.1 * 10100)         # received the overflow
    assert 0 < densities["big"] < 1
