"""The arithmetic of one sparse-momentum cycle, as pure functions over per-layer numbers.

These follow ``sparselearning/core.py`` of the reference code
(``gather_statistics``, ``adjust_prune_rate``, ``calc_growth_redistribution``)
line by line, with two guards the reference lacks: a layer whose statistic is
NaN (no active weight) gets share 0 instead of crashing in ``ceil(NaN)``, and
a layer with share 0 never counts as "growing" (the reference divides by it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sparsecore.selection import spread_overflow

#: A layer may regrow at most this fraction of its free slots.
GROWTH_CAP = 0.99
#: A layer sparser than this (fraction of zeros) is "dense" for the prune-rate cap.
DENSE_SPARSITY = 0.2
#: Iterations of the residual loop before giving up, as in the reference.
MAX_ITERATIONS = 1000


def layer_shares(statistics: Mapping[str, float]) -> dict[str, float]:
    """Normalise per-layer redistribution statistics into shares.

    NaN statistics are left out of the total and get share 0. When the total
    is 0 the statistics are returned unnormalised (the reference prints
    "Total variance was zero!" and does the same), so every share is 0.

    Args:
        statistics: layer name to its unnormalised statistic (mean |momentum|
            over active weights, mean |weight|, non-zero count, or size).

    Returns:
        Layer name to share; the shares sum to 1 unless every statistic is 0 or NaN.
    """
    total = sum(v for v in statistics.values() if not math.isnan(v))
    shares = {}
    for name, value in statistics.items():
        if math.isnan(value):
            shares[name] = 0.0
        else:
            shares[name] = value / total if total != 0 else float(value)
    return shares


def adjust_prune_rates(rate: float, shares: Mapping[str, float], zeros: Mapping[str, int],
                       capacity: Mapping[str, int]) -> dict[str, float]:
    """Per-layer prune rates with the reference's cap for dense, growing layers.

    A layer with fewer than 20 % zeros whose share exceeds the uniform share
    ``1 / L`` ("growing") prunes at most its fraction of zeros:
    ``p_l = min(zeros_l / n_l, rate)``.

    Args:
        rate: the scheduled prune rate.
        shares: layer name to its redistribution share (:func:`layer_shares`).
        zeros: layer name to its number of inactive weights.
        capacity: layer name to its number of weights.

    Returns:
        Layer name to prune rate.
    """
    expected = 1.0 / len(shares) if shares else 0.0
    rates = {}
    for name, share in shares.items():
        p = rate
        sparsity = zeros[name] / float(capacity[name])
        if sparsity < DENSE_SPARSITY and share > 0 and expected / share < 1.0:
            p = min(sparsity, p)
        rates[name] = p
    return rates


def growth_redistribution(shares: Mapping[str, float], nnz: Mapping[str, int], zeros: Mapping[str, int],
                          prune_rates: Mapping[str, float], total_removed: float, adjusted_growth: float,
                          cap: float = GROWTH_CAP, max_iterations: int = MAX_ITERATIONS) -> dict[str, float]:
    """How many weights each layer regrows, before rounding (the reference's residual loop).

    Each layer first receives ``ceil(share_l * (total_removed + adjusted_growth))``.
    A layer asking for more than ``cap`` of its free slots after pruning,
    ``zeros_l + ceil(p_l * nnz_l)``, is clamped there and the excess is spread
    evenly over all layers in the next pass, until nothing is left over or
    ``max_iterations`` passes ran. Callers grow ``floor`` of the result.

    Args:
        shares: layer name to share (:func:`layer_shares`).
        nnz: layer name to active weights before pruning.
        zeros: layer name to inactive weights before pruning.
        prune_rates: layer name to its prune rate (:func:`adjust_prune_rates`).
        total_removed: weights removed over all layers in this cycle.
        adjusted_growth: the drift correction carried from earlier cycles.
        cap: the fraction of free slots a layer may fill.
        max_iterations: passes of the residual loop.

    Returns:
        Layer name to its (fractional) regrowth.
    """
    initial = {name: float(math.ceil(share * (total_removed + adjusted_growth))) for name, share in shares.items()}
    limits = {name: cap * (zeros[name] + math.ceil(prune_rates[name] * nnz[name])) for name in shares}
    return spread_overflow(initial, limits, max_iterations=max_iterations)
