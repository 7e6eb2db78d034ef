"""Fixtures of the RigL tests, on top of ``sparsecore.testing``'s.

The algorithm is registered for each test through ``register_algorithm``, so the
tests run the same whether entry-point loading is on or off.
"""

from __future__ import annotations

import math

import pytest
import torch

import sparsecore
from sparsecore_rigl import RigLAlgorithm


class Recorder:
    """An extra plugin that records what the engine asks of ``select_prune`` / ``select_grow`` and answers ``None``.

    Attributes (per update, in order; each a dict keyed by layer name):
        prune_counts, grow_counts: the ``n`` asked for.
        weights, momenta: the weight and its momentum when pruning starts (after that step's optimizer update).
        masks_before: the masks before the update.
        masks_after: the masks after the update.
    """

    def __init__(self) -> None:
        self.prune_counts: list[dict[str, int]] = []
        self.grow_counts: list[dict[str, int]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.momenta: list[dict[str, torch.Tensor | None]] = []
        self.masks_before: list[dict[str, torch.Tensor]] = []
        self.masks_after: list[dict[str, torch.Tensor]] = []
        self.steps: list[int] = []

    @sparsecore.hookimpl
    def plan_update(self, sparsifier, layers, update) -> None:
        self.steps.append(update.step)
        for table in (self.prune_counts, self.grow_counts, self.weights, self.momenta):
            table.append({})
        self.masks_before.append({name: layer.mask.clone() for name, layer in layers.items()})
        for name, layer in layers.items():
            self.weights[-1][name] = layer.weight.detach().clone()
            momentum = sparsifier.momentum(layer)
            self.momenta[-1][name] = None if momentum is None else momentum.detach().clone()

    @sparsecore.hookimpl
    def select_prune(self, layer, n: int) -> None:
        self.prune_counts[-1][layer.name] = n

    @sparsecore.hookimpl
    def select_grow(self, layer, n: int) -> None:
        self.grow_counts[-1][layer.name] = n

    @sparsecore.hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        if report.reason == "update":
            self.masks_after.append({name: layer.mask.clone() for name, layer in sparsifier.layers.items()})


@pytest.fixture
def rigl(register_algorithm, sparsifier_factory):
    """``rigl(**kwargs)``: a sparsifier running ``"rigl"`` on the tiny model (``make_sparsifier`` keywords).

    Defaults: density 0.3, ``total_steps=40``, seed 0.
    """
    register_algorithm("rigl", RigLAlgorithm, replace=True)

    def build(**kwargs):
        kwargs.setdefault("density", 0.3)
        kwargs.setdefault("total_steps", 40)
        return sparsifier_factory("rigl", **kwargs)

    return build


@pytest.fixture
def recorder() -> Recorder:
    """A fresh :class:`Recorder` to pass in ``plugins=[...]``."""
    return Recorder()


def expected_drop_fraction(step: int, total_steps: int, alpha: float = 0.3, update_end: float = 0.75) -> float:
    """The paper's ``alpha (1 + cos(pi t / T_end)) / 2`` with ``T_end = int(update_end * total_steps)``."""
    t_end = int(update_end * total_steps)
    return alpha * (1 + math.cos(math.pi * min(step, t_end) / t_end)) / 2


@pytest.fixture
def drop_fraction():
    """:func:`expected_drop_fraction`, the reference formula."""
    return expected_drop_fraction
