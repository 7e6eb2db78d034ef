"""N:M structured sparsity for sparsecore: ``sr-ste`` and ``asp``.

Installing the distribution ``sparsecore-nm`` registers two algorithms that
run on the engine's N:M pattern (``pattern="2:4"`` by default)::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sr-ste",
                                       total_steps=len(loader) * epochs)         # 2:4
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="asp", pattern="1:4",
                                       total_steps=len(loader) * epochs, dense_fraction=0.5)
"""

from sparsecore_nm.__about__ import __version__
from sparsecore_nm.algorithm import AspAlgorithm, SrSteAlgorithm
from sparsecore_nm.functional import magnitude_masks, masked_forward, masked_weight, prune_weights

__all__ = [
    "AspAlgorithm",
    "SrSteAlgorithm",
    "__version__",
    "magnitude_masks",
    "masked_forward",
    "masked_weight",
    "prune_weights",
]
