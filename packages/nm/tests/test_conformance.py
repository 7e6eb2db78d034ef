"""sparsecore's conformance suite for ``sr-ste`` and ``asp`` (2:4 on the suite's tiny MLP)."""

from __future__ import annotations

from collections.abc import Mapping

from sparsecore.testing import AlgorithmConformance
from sparsecore_nm import AspAlgorithm, SrSteAlgorithm


class TestSrSteConformance(AlgorithmConformance):
    """SR-STE keeps dense weights and state; its masks follow |W| every step, so pruned weights come back
    with the values they kept."""

    algorithm = SrSteAlgorithm
    masks_weights = False
    masks_optimizer_state = False
    grows_at_zero = False
    grown_state_at_zero = False


class TestAspConformance(AlgorithmConformance):
    """ASP: dense for the first half of the run (6 of 12 steps), 2:4 from then on."""

    algorithm = AspAlgorithm
    initial_at_target_density = False
    needs_total_steps = True

    def expected_nnz(self, sparsifier, initial: Mapping[str, int]) -> dict[str, int]:
        if not sparsifier.algorithm.pruned:
            return dict(initial)
        return {name: layer.active_count(layer.target_density) for name, layer in sparsifier.layers.items()}
