"""Entry-point module: registers the ``sparse-momentum`` algorithm with sparsecore."""

from __future__ import annotations

import sparsecore
from sparse_momentum.algorithm import SparseMomentumAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register ``"sparse-momentum"`` (factory :class:`~sparse_momentum.SparseMomentumAlgorithm`)."""
    register("sparse-momentum", SparseMomentumAlgorithm)
