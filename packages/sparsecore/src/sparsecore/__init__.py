"""sparsecore: sparse training for PyTorch.

The engine (:class:`Sparsifier`) keeps a model's weights sparse from the first
step to the last and runs the active algorithm's hooks (:mod:`sparsecore.hookspecs`).
Algorithms and kernel backends are plugins, discovered through the entry-point
group ``sparsecore``.
"""

from sparsecore.__about__ import __version__
from sparsecore.algorithm import Algorithm
from sparsecore.errors import (
    AmbiguousNameError,
    CheckpointError,
    ConfigurationError,
    HookResultError,
    NoPrunableLayersError,
    SparsecoreError,
    UnknownAlgorithmError,
)
from sparsecore.hookspecs import hookimpl
from sparsecore.layers import SparseLayer
from sparsecore.plugins import available_algorithms, available_plugins, registry
from sparsecore.policy import MaskingPolicy
from sparsecore.reporting import DensityReport, TopologyReport
from sparsecore.schedules import UpdateSchedule
from sparsecore.sparsifier import Sparsifier
from sparsecore.topology import TopologyUpdate, UpdatePlan

__all__ = [
    "Algorithm",
    "AmbiguousNameError",
    "CheckpointError",
    "ConfigurationError",
    "DensityReport",
    "HookResultError",
    "MaskingPolicy",
    "NoPrunableLayersError",
    "SparseLayer",
    "SparsecoreError",
    "Sparsifier",
    "TopologyReport",
    "TopologyUpdate",
    "UnknownAlgorithmError",
    "UpdatePlan",
    "UpdateSchedule",
    "__version__",
    "available_algorithms",
    "available_plugins",
    "hookimpl",
    "registry",
]
