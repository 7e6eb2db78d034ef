"""sparsecore-dsd: Dense-Sparse-Dense training (Han et al., ICLR 2017) for sparsecore.

Activate it by name: ``sparsecore.Sparsifier(model, optimizer, algorithm="dsd",
total_steps=...)`` (the sparse phase keeps ``density=0.7`` unless another is given).
"""

from sparsecore_dsd.__about__ import __version__
from sparsecore_dsd.algorithm import DSD, DSDAlgorithm
from sparsecore_dsd.schedule import DENSE, REDENSE, SPARSE, PhaseSchedule, phase_names

__all__ = ["DENSE", "DSD", "REDENSE", "SPARSE", "DSDAlgorithm", "PhaseSchedule", "__version__", "phase_names"]
