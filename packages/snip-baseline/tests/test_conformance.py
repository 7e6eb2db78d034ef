"""The sparsecore conformance suite run for ``snip``.

SNIP scores connections once, on data, before the first step, and never
changes the masks afterwards. Global SNIP (the default) keeps the top-κ over
all layers, so each layer's count follows the scores rather than its target
density; ``per_layer=True`` keeps each layer's own target count.
"""

from __future__ import annotations

from snip_baseline import SnipAlgorithm
from sparsecore.testing import AlgorithmConformance, tiny_batches


class TestSnipConformance(AlgorithmConformance):
    """Global SNIP scored on one batch (the sparsifier's ``data``)."""

    algorithm = SnipAlgorithm
    setup_kwargs = {"data": tiny_batches()}
    initial_at_target_density = False  # the global top-κ sets each layer's count
    changes_topology = False


class TestSnipPerLayerConformance(TestSnipConformance):
    """RigL's SNIP baseline: the top of each layer at its ERK density, scored on two batches."""

    options = {"per_layer": True, "num_batches": 2}
    setup_kwargs = {"data": tiny_batches(2), "distribution": "erk"}
    initial_at_target_density = True
