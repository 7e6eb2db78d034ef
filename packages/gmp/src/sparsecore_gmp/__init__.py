"""Gradual magnitude pruning (Zhu & Gupta 2017) as a sparsecore algorithm.

Installing the distribution registers the algorithm ``"gmp"``: the run starts
dense and prunes the smallest-magnitude weights on a cubic schedule down to the
engine's ``density``::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="gmp", density=0.05,
                                       total_steps=len(loader) * epochs, start=0.1, end=0.5)
"""

from sparsecore_gmp.__about__ import __version__
from sparsecore_gmp.algorithm import PRUNE_MODES, GMPAlgorithm
from sparsecore_gmp.flops import RunFlops, integrate_flops
from sparsecore_gmp.schedule import ROUNDINGS, PruningSchedule, cubic_density, kept_count

__all__ = [
    "PRUNE_MODES",
    "ROUNDINGS",
    "GMPAlgorithm",
    "PruningSchedule",
    "RunFlops",
    "__version__",
    "cubic_density",
    "integrate_flops",
    "kept_count",
]
