"""SNIP for sparsecore: single-shot pruning at initialization by connection sensitivity.

Installing the distribution ``snip-baseline`` registers the algorithm
``"snip"``; activate it per run::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="snip", density=0.05,
                                       loader=train_loader)

The scoring data goes in the factory option named by
:data:`SCORING_DATA_OPTION` (``loader``) or as ``batch=(x, y)``.
"""

from snip_baseline.__about__ import __version__
from snip_baseline.algorithm import SCORING_BATCHES_OPTION, SCORING_DATA_OPTION, Snip, SnipAlgorithm, SnipResult
from snip_baseline.masks import GuardReport, global_top_k, keep_every_layer, per_layer_top_k
from snip_baseline.scoring import connection_sensitivity, eval_mode, fresh_copy, normalize

__all__ = [
    "SCORING_BATCHES_OPTION",
    "SCORING_DATA_OPTION",
    "GuardReport",
    "Snip",
    "SnipAlgorithm",
    "SnipResult",
    "__version__",
    "connection_sensitivity",
    "eval_mode",
    "fresh_copy",
    "global_top_k",
    "keep_every_layer",
    "normalize",
    "per_layer_top_k",
]
