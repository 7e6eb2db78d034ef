"""The sparsecore conformance suite run for ``gmp``.

GMP starts dense and only prunes: every layer holds the count its cubic
schedule prescribes at the current step (checked after every step and epoch
end), never regrows, and zeroes the weights and optimizer state of what it
prunes. With the suite's 12-step run, ``start=0.1, end=0.75, update_every=2``
prunes after steps 1, 3, 5, 7 and 9. In the suite's N:M runs (2:4 and 1:4)
every group holds the count the ramp gives it (``nm_group_count``).
"""

from __future__ import annotations

import pytest

from sparsecore import ConfigurationError
from sparsecore.testing import AlgorithmConformance
from sparsecore_gmp import GMPAlgorithm


class TestGMPConformance(AlgorithmConformance):
    """Per-layer magnitude pruning on a short cubic ramp."""

    algorithm = GMPAlgorithm
    options = {"start": 0.1, "end": 0.75, "update_every": 2}
    initial_at_target_density = False  # dense start (sets_initial_density = True)
    keeps_budget = False               # pruning only: nothing is regrown
    grows_at_zero = False              # nothing is ever grown
    grown_state_at_zero = False
    needs_total_steps = True           # start and end are fractions of total_steps

    def expected_nnz(self, sparsifier, initial):
        """The schedule's count at the current step (dense before the first pruning step)."""
        return sparsifier.algorithm.scheduled_counts(sparsifier.layers, sparsifier.step)


class TestGlobalGMPConformance(TestGMPConformance):
    """One magnitude threshold over all layers: only the total follows the schedule."""

    options = {**TestGMPConformance.options, "prune": "global_magnitude"}
    nnz_scope = "total"

    def test_nm_pattern_is_honoured_or_refused(self):
        """One threshold over all layers has nothing to choose when every group holds the same count: refused."""
        for spec in self.nm_patterns:
            with pytest.raises(ConfigurationError, match=rf"gmp: prune='global_magnitude' cannot apply in a "
                                                         rf"pattern='{spec}' run"):
                self.build(pattern=spec, density=None, distribution=None)
