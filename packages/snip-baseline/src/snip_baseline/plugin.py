"""Entry point of ``snip-baseline``: registers the ``snip`` algorithm with sparsecore."""

from __future__ import annotations

import sparsecore
from snip_baseline.algorithm import SnipAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register :class:`~snip_baseline.SnipAlgorithm` under the name ``"snip"``."""
    register("snip", SnipAlgorithm)
