"""The sparsecore conformance suite run for ``rigl``.

RigL drops by ``|w|`` and grows by the dense gradient inside each layer, so
every layer keeps its count exactly; grown weights and their optimizer state
start at 0. With the suite's 12-step run, ``update_every=2`` and
``update_end=0.75`` update after steps 2, 4, 6 and 8. Block and N:M runs are
accepted (``patterns``). RigL refuses ``update_topology`` calls outside its
schedule (it has no dense gradient for them), so the suite checks its
scheduled updates only (``manual_updates = False``).
"""

from __future__ import annotations

from sparsecore.testing import AlgorithmConformance
from sparsecore_rigl import RigLAlgorithm


class TestRigLConformance(AlgorithmConformance):
    """ERK (the default distribution), updates every 2 steps."""

    algorithm = RigLAlgorithm
    options = {"update_every": 2}
    needs_total_steps = True  # the drop fraction decays to update_end * total_steps
    manual_updates = False    # growth needs the dense gradient kept on the schedule's own update steps


class TestRigLUniformConformance(TestRigLConformance):
    """Uniform densities with every layer sparse, a larger drop fraction, at a lower density."""

    options = {"update_every": 2, "prune_rate": 0.5}
    setup_kwargs = {"distribution": "uniform", "dense_first_layer": False}
    density = 0.25
