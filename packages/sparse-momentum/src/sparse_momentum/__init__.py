"""Sparse Momentum (SNFS, Dettmers & Zettlemoyer 2019) as a sparsecore algorithm.

Installing the distribution registers the algorithm ``"sparse-momentum"``::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum",
                                       density=0.05, total_steps=len(loader) * epochs)
"""

from sparse_momentum.__about__ import __version__
from sparse_momentum.algorithm import (
    GROWTH_MODES,
    PRUNE_MODES,
    REDISTRIBUTION_MODES,
    SparseMomentum,
    SparseMomentumAlgorithm,
)
from sparse_momentum.redistribution import growth_redistribution, layer_shares

__all__ = [
    "GROWTH_MODES",
    "PRUNE_MODES",
    "REDISTRIBUTION_MODES",
    "SparseMomentum",
    "SparseMomentumAlgorithm",
    "__version__",
    "growth_redistribution",
    "layer_shares",
]
