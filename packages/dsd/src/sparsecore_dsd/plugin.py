"""Entry-point module of sparsecore-dsd: registers the ``dsd`` algorithm."""

from __future__ import annotations

import sparsecore
from sparsecore_dsd.algorithm import DSDAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register ``dsd`` (Dense-Sparse-Dense training)."""
    register("dsd", DSDAlgorithm)
