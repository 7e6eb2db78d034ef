"""The conformance suite run for the core's own algorithms, ``static`` and ``set``."""

from __future__ import annotations

from sparsecore.algorithms import SetAlgorithm, StaticAlgorithm
from sparsecore.testing import AlgorithmConformance


class TestStaticConformance(AlgorithmConformance):
    """``static``: a fixed random mask at the target density."""

    algorithm = StaticAlgorithm
    changes_topology = False


class TestSetConformance(AlgorithmConformance):
    """``set``: magnitude prune and random regrowth after every epoch but the last."""

    algorithm = SetAlgorithm
    needs_total_steps = True  # the cosine decay of the prune rate spans total_steps


class TestSetStepUpdatesConformance(AlgorithmConformance):
    """``set`` with updates every 2 steps, at a lower density with ERK."""

    algorithm = SetAlgorithm
    needs_total_steps = True  # the cosine decay of the prune rate spans total_steps
    options = {"update_every": 2, "prune_rate": 0.5}
    setup_kwargs = {"distribution": "erk"}
    density = 0.2
