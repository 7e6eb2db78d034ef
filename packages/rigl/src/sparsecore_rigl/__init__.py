"""RigL (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners") as a sparsecore algorithm.

Installing the distribution registers the algorithm ``"rigl"``::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="rigl", density=0.1,
                                       total_steps=len(loader) * epochs)
"""

from sparsecore_rigl.__about__ import __version__
from sparsecore_rigl.algorithm import RigLAlgorithm, rigl_train_flops

__all__ = ["RigLAlgorithm", "__version__", "rigl_train_flops"]
