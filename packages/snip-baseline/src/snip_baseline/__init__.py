"""SNIP for sparsecore: single-shot pruning at initialization by connection sensitivity.

Installing the distribution ``snip-baseline`` registers the algorithm
``"snip"``; activate it per run::

    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="snip", density=0.05,
                                       loader=train_loader)

The scoring data goes in the factory option named by
:data:`SCORING_DATA_OPTION` (``loader``) or as ``batch=(x, y)``.
"""

from snip_baseline.__about__ import __version__
from snip_baseline.algorithm import (
    INITS,
    SCORE_INITS,
    SCORING_BATCHES_OPTION,
    SCORING_DATA_OPTION,
    Snip,
    SnipAlgorithm,
    SnipResult,
)
from snip_baseline.init import fan_in, variance_scaling_, variance_scaling_init_
from snip_baseline.masks import GuardReport, global_top_k, keep_every_layer, per_layer_top_k
from snip_baseline.protocol import OFFICIAL_CHECKPOINT_INTERVAL, OFFICIAL_CHECKPOINTS_KEPT, RetainedCheckpoints
from snip_baseline.scoring import connection_sensitivity, eval_mode, fresh_copy, normalize, variance_scaling_copy

__all__ = [
    "INITS",
    "OFFICIAL_CHECKPOINTS_KEPT",
    "OFFICIAL_CHECKPOINT_INTERVAL",
    "SCORE_INITS",
    "SCORING_BATCHES_OPTION",
    "SCORING_DATA_OPTION",
    "GuardReport",
    "RetainedCheckpoints",
    "Snip",
    "SnipAlgorithm",
    "SnipResult",
    "__version__",
    "connection_sensitivity",
    "eval_mode",
    "fan_in",
    "fresh_copy",
    "global_top_k",
    "keep_every_layer",
    "normalize",
    "per_layer_top_k",
    "variance_scaling_",
    "variance_scaling_copy",
    "variance_scaling_init_",
]
