"""sparsecore-swat: Sparse Weight Activation Training (Raihan & Aamodt, NeurIPS 2020) for sparsecore.

Use it through the engine (``Sparsifier(model, optimizer, algorithm="swat",
density=0.1)``), or install the autograd path on single modules with
:func:`install`.
"""

from sparsecore_swat.__about__ import __version__
from sparsecore_swat.budget import momentum_budgets, momentum_shares
from sparsecore_swat.compress import SparseActivation, compress, decompress
from sparsecore_swat.export import hard_prune
from sparsecore_swat.functional import (
    SwatConvFunction,
    SwatForward,
    SwatLinearFunction,
    install,
    swat_conv,
    swat_linear,
    uninstall,
)
from sparsecore_swat.plugin import SwatAlgorithm
from sparsecore_swat.state import TopKState

__all__ = [
    "SparseActivation",
    "SwatAlgorithm",
    "SwatConvFunction",
    "SwatForward",
    "SwatLinearFunction",
    "TopKState",
    "__version__",
    "compress",
    "decompress",
    "hard_prune",
    "install",
    "momentum_budgets",
    "momentum_shares",
    "swat_conv",
    "swat_linear",
    "uninstall",
]
