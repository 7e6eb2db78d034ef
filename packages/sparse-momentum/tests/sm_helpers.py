"""Hand-built models with hand-set masks, weights and momentum for the sparse-momentum tests."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

import sparsecore
from sparse_momentum import SparseMomentum


def chain(*shapes: tuple[int, int], bias: bool = False) -> nn.Sequential:
    """``nn.Sequential`` of ``Linear(in, out)`` layers named ``"0"``, ``"1"``, ... with zero weights."""
    model = nn.Sequential(*[nn.Linear(i, o, bias=bias) for i, o in shapes])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def build(model: nn.Module, density: float, masks: Mapping[str, Sequence[int]],
          weights: Mapping[str, Sequence[float]], momenta: Mapping[str, Sequence[float]],
          optimizer: torch.optim.Optimizer | None = None, total_steps: int = 100, seed: int = 0,
          plugins: Sequence[object] = (), **options) -> sparsecore.Sparsifier:
    """A sparsifier whose layers have exactly the given flat active indices, weights and momentum.

    ``weights`` and ``momenta`` are full flat tensors per layer (weights at
    inactive positions must be 0). Momentum goes into SGD's ``momentum_buffer``.
    ``seed`` seeds ``sparsifier.generator``; ``plugins`` are extra plugins
    (e.g. a :class:`SelectionCountRecorder`).
    """
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=SparseMomentum(**options), density=density,
                                       total_steps=total_steps, seed=seed, plugins=list(plugins))
    layer_masks = {}
    for name, layer in sparsifier.layers.items():
        flat = torch.zeros(layer.capacity, dtype=torch.bool)
        flat[list(masks[name])] = True
        layer_masks[name] = flat.view(layer.shape)
    sparsifier.set_masks(layer_masks)
    with torch.no_grad():
        for name, layer in sparsifier.layers.items():
            w = torch.tensor(weights[name], dtype=torch.float32).view(layer.shape)
            assert not bool((w[~layer.mask] != 0).any()), "hand-set weights must be 0 at inactive positions"
            layer.weight.copy_(w)
            if momenta.get(name) is not None:
                optimizer.state[layer.weight]["momentum_buffer"] = torch.tensor(
                    momenta[name], dtype=torch.float32).view(layer.shape)
    return sparsifier


def active(layer) -> list[int]:
    """Flat indices of a layer's active weights."""
    return layer.mask.reshape(-1).nonzero().squeeze(1).tolist()


class SelectionCountRecorder:
    """An extra plugin that records the ``n`` the engine asks ``select_prune`` and ``select_grow`` for.

    It answers ``None``, so the algorithm still makes every choice. After an
    update, ``pruned`` and ``grown`` hold, per layer, how many weights were
    pruned and regrown in the cycle, including weights pruned and regrown in
    the same cycle, which the engine's report does not count.
    """

    def __init__(self) -> None:
        self.pruned: dict[str, int] = {}
        self.grown: dict[str, int] = {}

    @sparsecore.hookimpl
    def select_prune(self, layer, n: int) -> None:
        """Record the prune count of ``layer`` and let the algorithm choose."""
        self.pruned[layer.name] = n
        return None

    @sparsecore.hookimpl
    def select_grow(self, layer, n: int, update) -> None:
        """Record the regrowth count of ``layer`` (and every layer's prune count, which a plan may have fixed
        without asking ``select_prune``) and let the algorithm choose."""
        self.pruned.update(update.removed)
        self.grown[layer.name] = n
        return None
