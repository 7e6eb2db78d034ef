"""The sparsecore conformance suite run for ``swat``.

SWAT keeps dense weights (its sparsity lives in the replaced forward), so the
masking contracts do not apply: ``layer.mask`` reports the top-K selection,
refreshed at every epoch end.
"""

from __future__ import annotations

from sparsecore.testing import AlgorithmConformance
from sparsecore_swat import SwatAlgorithm


class TestSwatConformance(AlgorithmConformance):
    """SWAT-U: every sparse layer at the overall density, the first layer dense."""

    algorithm = SwatAlgorithm
    masks_weights = False
    masks_optimizer_state = False
    grows_at_zero = False
    grown_state_at_zero = False
