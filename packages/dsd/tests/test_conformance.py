"""The sparsecore conformance suite run for ``dsd``.

DSD changes its density by design: dense, then sparse at the target density,
then dense again (equal thirds of the run by default). The per-layer counts it
promises follow the phase; everything else is held as for any algorithm.
"""

from __future__ import annotations

from sparsecore.testing import AlgorithmConformance
from sparsecore_dsd import DSDAlgorithm


class TestDSDConformance(AlgorithmConformance):
    """Dense, sparse and redense phases of 4 steps each."""

    algorithm = DSDAlgorithm
    needs_total_steps = True  # phase lengths are fractions of total_steps
    initial_at_target_density = False  # starts dense

    def expected_nnz(self, sparsifier, initial):
        """Every weight in the dense phases; ``active_count(target_density)`` per layer in the sparse phase."""
        if sparsifier.algorithm.phase == "sparse":
            return {name: layer.active_count(layer.target_density) for name, layer in sparsifier.layers.items()}
        return {name: layer.capacity for name, layer in sparsifier.layers.items()}


class TestDSDEpochPhasesConformance(TestDSDConformance):
    """Phases counted in epochs, two sparse/redense iterations at decreasing density."""

    options = {"phase_epochs": [1, 1, 1, 1, 1], "iterations": [0.5, 0.25]}
    needs_total_steps = False

    def expected_nnz(self, sparsifier, initial):
        """The sparse phases keep ``active_count`` at their own iteration's density."""
        dsd = sparsifier.algorithm
        if dsd.phase == "sparse":
            densities = dsd.sparse_densities[dsd.iteration - 1]
            return {name: layer.active_count(densities[name]) for name, layer in sparsifier.layers.items()}
        return {name: layer.capacity for name, layer in sparsifier.layers.items()}
