"""SWAT-M: per-layer weight budgets from normalised mean momentum.

After every optimizer step each layer's share of the overall budget is its
mean ``|momentum|`` over the currently selected weights, normalised over the
layers. Budgets that exceed 99 % of a layer make it fully dense and the
overflow is spread evenly over all layers, in the loop of Sparse Momentum
(SNFS) as SWAT's ``dynamic_sparsity.py`` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sparsecore.selection import spread_overflow


def momentum_shares(means: Mapping[str, float]) -> dict[str, float]:
    """Normalise per-layer mean ``|momentum|`` to shares summing to 1.

    NaN means (a layer with nothing selected) count as 0. If every mean is 0
    the shares are equal.

    Args:
        means: layer name to mean absolute momentum over its selected weights.

    Returns:
        Layer name to share.
    """
    clean = {name: (0.0 if math.isnan(m) else float(m)) for name, m in means.items()}
    total = sum(clean.values())
    if total <= 0.0:
        return {name: 1.0 / len(clean) for name in clean} if clean else {}
    return {name: m / total for name, m in clean.items()}


def momentum_budgets(sizes: Mapping[str, int], shares: Mapping[str, float], density: float,
                     max_iterations: int = 1000) -> dict[str, float]:
    """Per-layer densities from momentum shares, with SNFS's overflow loop.

    Each layer first gets ``ceil(share * density * total)`` weights. A layer
    whose budget exceeds ``0.99 * size`` is set fully dense and its excess is
    added to a residual that is spread evenly (``ceil(residual / L)``) over
    all layers on the next pass, until the residual is at most one weight per
    layer or the assigned total exceeds the target.

    Args:
        sizes: layer name to number of weights.
        shares: layer name to momentum share (from :func:`momentum_shares`).
        density: overall weight density in (0, 1].
        max_iterations: cap on overflow passes.

    Returns:
        Layer name to density in (0, 1].
    """
    total = sum(sizes.values())
    target = density * total
    initial = {name: float(math.ceil(shares[name] * target)) for name in sizes}
    budget = spread_overflow(initial, {name: 0.99 * size for name, size in sizes.items()},
                             clamp_to={name: float(size) for name, size in sizes.items()},
                             tolerance=len(sizes), round_up=True, total=target, max_iterations=max_iterations)
    return {name: min(1.0, max(budget[name], 1.0) / size) for name, size in sizes.items()}
