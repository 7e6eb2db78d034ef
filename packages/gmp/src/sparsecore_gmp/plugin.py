"""Entry-point module: registers the ``gmp`` algorithm with sparsecore."""

from __future__ import annotations

import sparsecore
from sparsecore_gmp.algorithm import GMPAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register ``"gmp"`` (factory :class:`~sparsecore_gmp.GMPAlgorithm`)."""
    register("gmp", GMPAlgorithm)
