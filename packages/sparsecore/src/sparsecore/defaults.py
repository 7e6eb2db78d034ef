"""Built-in hook implementations, registered ``trylast`` in every run.

They answer every first-result hook no algorithm answered: random initial
masks with exact counts, ``floor(rate * nnz)`` prune counts, magnitude prune,
no redistribution, random growth. Each follows the run's pattern
(``layer.pattern``): whole blocks in block runs; in N:M runs exactly N random
weights per group at first, the smallest active weights of the layer pruned,
and every group refilled at random with what it lost.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sparsecore import selection
from sparsecore.hookspecs import hookimpl
from sparsecore.layers import SparseLayer
from sparsecore.topology import TopologyUpdate, UpdatePlan, default_prune_counts


class BuiltinDefaults:
    """The defaults every algorithm and user plugin can override hook by hook."""

    name = "sparsecore-defaults"

    @hookimpl(trylast=True)
    def init_masks(self, sparsifier, layers: Mapping[str, SparseLayer]) -> dict[str, torch.Tensor]:
        """Exactly ``round(target_density * numel)`` active entries per layer, at random in the run's pattern."""
        return {
            name: selection.random_mask(layer.shape, layer.active_count(layer.target_density),
                                        sparsifier.generator, layer.weight.device, layer.pattern)
            for name, layer in layers.items()
        }

    @hookimpl(trylast=True)
    def plan_update(self, layers: Mapping[str, SparseLayer], update: TopologyUpdate) -> UpdatePlan:
        """Prune ``floor(rate * nnz)`` per layer (whole blocks); growth left to ``redistribute``."""
        return UpdatePlan(prune=default_prune_counts(layers, update.rate))

    @hookimpl(trylast=True)
    def select_prune(self, layer: SparseLayer, n: int) -> torch.Tensor:
        """The ``n`` active weights of smallest magnitude."""
        return selection.smallest(layer.weight.detach().abs(), layer.mask, n, layer.pattern)

    @hookimpl(trylast=True)
    def redistribute(self, removed: Mapping[str, int]) -> dict[str, int]:
        """Each layer regrows what it lost."""
        return dict(removed)

    @hookimpl(trylast=True)
    def select_grow(self, sparsifier, layer: SparseLayer, n: int) -> torch.Tensor:
        """``n`` inactive weights drawn uniformly from ``sparsifier.generator`` (per group in N:M runs)."""
        return selection.random_choice(~layer.mask, n, sparsifier.generator, layer.pattern)
