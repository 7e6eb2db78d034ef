"""The sparsecore conformance suite run for ``sparse-momentum``.

Sparse momentum moves weights between layers (redistribution by mean
momentum) and fixes its own regrowth in ``plan_update``, rounded down and
corrected for drift, so only the total number of active weights is held, and
within a few weights. Inactive weights stay 0, but their gradients and
momentum are kept (growth reads them), so grown weights start at 0 with the
momentum they accumulated.
"""

from __future__ import annotations

from sparse_momentum import SparseMomentumAlgorithm
from sparsecore.testing import AlgorithmConformance


class TestSparseMomentumConformance(AlgorithmConformance):
    """The reference settings: momentum redistribution and growth, updates after every epoch but the last."""

    algorithm = SparseMomentumAlgorithm
    needs_total_steps = True
    nnz_scope = "total"
    masks_optimizer_state = False
    grown_state_at_zero = False
    keeps_budget = False

    def nnz_tolerance(self, sparsifier):
        """Regrowth is rounded down per layer (in whole blocks); the drift correction carries the shortfall over."""
        return len(sparsifier.layers) * next(iter(sparsifier.layers.values())).block_size


class TestRandomGrowthStepUpdatesConformance(TestSparseMomentumConformance):
    """Random growth, redistribution by magnitude, updates every 2 steps."""

    options = {"growth": "random", "redistribution": "magnitude", "update_every": 2}
