"""The masking policy: how the engine treats inactive weights during training."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaskingPolicy:
    """What the engine masks, chosen by the active algorithm (its ``masking_policy`` attribute).

    Attributes:
        mask_weights: zero inactive weights after every optimizer step. ``False``
            keeps dense weights (SWAT); the mask then only describes what the
            layer's forward uses.
        mask_gradients: zero the gradients of inactive weights before the
            optimizer updates (RigL, SNIP, DSD). Sparse momentum keeps them dense,
            because growth reads the momentum of zero weights.
        mask_optimizer_state: zero optimizer state (momentum, Adam moments) of
            inactive weights whenever masks change.
        reset_grown_state: zero optimizer state of weights activated by a
            topology update (they also start at value 0).
    """

    mask_weights: bool = True
    mask_gradients: bool = True
    mask_optimizer_state: bool = True
    reset_grown_state: bool = True
