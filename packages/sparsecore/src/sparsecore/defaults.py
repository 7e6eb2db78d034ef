"""Built-in hook implementations, registered ``trylast`` in every run.

They answer every first-result hook no algorithm answered: magnitude prune,
random growth, no redistribution, random initial masks with exact counts, the
fully masking policy, ``floor(rate * nnz)`` prune counts.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from sparsecore import selection
from sparsecore.hookspecs import hookimpl
from sparsecore.layers import SparseLayer
from sparsecore.policy import MaskingPolicy


class BuiltinDefaults:
    """The defaults every algorithm and user plugin can override hook by hook."""

    name = "sparsecore-defaults"

    @hookimpl(trylast=True)
    def engine_defaults(self) -> Mapping[str, object]:
        """No engine defaults beyond the Sparsifier's own."""
        return {}

    @hookimpl(trylast=True)
    def masking_policy(self) -> MaskingPolicy:
        """Mask weights, gradients and optimizer state (RigL/SNIP/DSD style)."""
        return MaskingPolicy()

    @hookimpl(trylast=True)
    def init_masks(self, sparsifier, layers: Mapping[str, SparseLayer]) -> dict[str, torch.Tensor]:
        """Exactly ``round(target_density * numel)`` active entries per layer (whole blocks for block layers)."""
        return {
            name: selection.random_mask(layer.shape, layer.active_count(layer.target_density),
                                        sparsifier.generator, layer.weight.device, layer.block)
            for name, layer in layers.items()
        }

    @hookimpl(trylast=True)
    def prune_counts(self, layers: Mapping[str, SparseLayer], rate: float) -> dict[str, int]:
        """``floor(rate * nnz)`` per layer (in whole blocks for block layers)."""
        return {name: int(math.floor(rate * layer.nnz / layer.block_size)) * layer.block_size
                for name, layer in layers.items()}

    @hookimpl(trylast=True)
    def select_prune(self, layer: SparseLayer, n: int) -> torch.Tensor:
        """The ``n`` active weights of smallest magnitude."""
        return selection.smallest(layer.weight.detach().abs(), layer.mask, n, layer.block)

    @hookimpl(trylast=True)
    def redistribute(self, removed: Mapping[str, int]) -> dict[str, int]:
        """Each layer regrows what it lost."""
        return dict(removed)

    @hookimpl(trylast=True)
    def select_grow(self, sparsifier, layer: SparseLayer, n: int) -> torch.Tensor:
        """``n`` inactive weights drawn uniformly from ``sparsifier.generator``."""
        return selection.random_choice(~layer.mask, n, sparsifier.generator, layer.block)
