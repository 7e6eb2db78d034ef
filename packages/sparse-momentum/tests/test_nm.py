"""Sparse momentum in an N:M run: no redistribution; each layer prunes its smallest |w| and regrows as many by
|momentum| within the groups that lost weights, so every group keeps exactly N."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import ConfigurationError


def group_view(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` as ``(groups, m)``: dim 1 moved last (computed without the engine's helper)."""
    return t.movedim(1, -1).reshape(-1, m)


def make_model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)), (16,)
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)), (8, 5, 5)


def train(sparsifier, in_shape, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn((16, *in_shape), generator=gen), torch.randint(0, 4, (16,), generator=gen)
        sparsifier.optimizer.zero_grad()
        nn.functional.cross_entropy(sparsifier.model(x), y).backward()
        sparsifier.optimizer.step()


def build(kind="linear", pattern="2:4", **options):
    model, in_shape = make_model(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", pattern=pattern,
                                       total_steps=100, seed=0, **options)
    return sparsifier, in_shape


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
@pytest.mark.parametrize("options", [{}, {"prune": "global_magnitude"}, {"growth": "random"}])
def test_every_group_keeps_exactly_n_through_updates(kind, pattern, options):
    n, m = (int(v) for v in pattern.split(":"))
    sparsifier, in_shape = build(kind, pattern, update_every=2, decay="constant", prune_rate=0.4, **options)
    changed = 0
    for _ in range(5):
        before = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        train(sparsifier, in_shape, 2)
        for name, layer in sparsifier.layers.items():
            assert (group_view(layer.mask, m).sum(1) == n).all(), (name, sparsifier.step)
            assert not bool(layer.weight.detach()[~layer.mask].any())
            changed += int((layer.mask & ~before[name]).sum())
    assert changed > 0
    assert [report.step for report in sparsifier.history] == [2, 4, 6, 8, 10]


class GrowCounts:
    """Records the count the engine asks ``select_grow`` for, per layer (answers nothing)."""

    name = "grow-counts"

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}

    @sparsecore.hookimpl(tryfirst=True)
    def select_grow(self, layer, n):
        self.asked[layer.name] = n


def test_an_update_prunes_the_smallest_weights_of_each_layer_and_regrows_as_many_there():
    recorder = GrowCounts()
    sparsifier, in_shape = build(plugins=[recorder])
    train(sparsifier, in_shape, 3)
    rate = 0.3
    before = {name: (layer.mask.clone(), layer.weight.detach().abs().clone())
              for name, layer in sparsifier.layers.items()}
    report = sparsifier.update_topology(rate)
    for name, layer in sparsifier.layers.items():
        mask, weight = before[name]
        lost = math.ceil(rate * int(mask.sum()))
        assert recorder.asked[name] == lost  # each layer regrows what it lost: no redistribution
        assert report.layers[name].pruned == report.layers[name].grown <= lost  # net of weights regrown in place
        smallest = torch.zeros_like(mask).view(-1)
        active = torch.nonzero(mask.view(-1)).flatten()
        smallest[active[torch.argsort(weight.view(-1)[active], stable=True)[:lost]]] = True
        removed = mask & ~layer.mask  # pruned and not regrown
        assert not bool((removed & ~smallest.view_as(mask)).any())
        assert (group_view(layer.mask, 4).sum(1) == 2).all()
        assert not bool(layer.weight.detach()[layer.mask & ~mask].any())  # grown weights start at 0
    assert sum(u.grown for u in report.layers.values()) > 0


def test_momentum_growth_selection_is_the_per_group_refill():
    sparsifier, in_shape = build()
    train(sparsifier, in_shape, 2)
    layer = sparsifier.layers["2"]
    smallest = sparsecore.selection.smallest(layer.weight.detach().abs(), layer.mask, 40, layer.pattern)
    layer.mask = layer.mask & ~smallest  # as the engine's cycle shows it after pruning
    chosen = sparsifier.algorithm.select_grow(sparsifier, layer, 40)
    momentum = group_view(sparsifier.momentum(layer).abs(), 4)
    inactive, picked, lost = group_view(~layer.mask, 4), group_view(chosen, 4), group_view(smallest, 4).sum(1)
    assert torch.equal(picked.sum(1), lost)
    for g in range(momentum.shape[0]):
        k = int(lost[g])
        candidates = sorted((j for j in range(4) if inactive[g, j]), key=lambda j: (-float(momentum[g, j]), j))
        assert set(torch.nonzero(picked[g]).flatten().tolist()) == set(candidates[:k])


@pytest.mark.parametrize("options, match", [
    ({"growth": "momentum_neuron"}, r"growth='momentum_neuron' does not keep N per group; a pattern='2:4' run"),
    ({"init": "bernoulli"}, r"init='bernoulli' draws single weights; a pattern='2:4' run needs init='exact'"),
])
def test_choices_that_cannot_keep_the_pattern_are_refused(options, match):
    with pytest.raises(ConfigurationError, match=match):
        build(**options)


@pytest.mark.parametrize("redistribution", ["magnitude", "nonzero"])
def test_statistics_read_the_whole_weight(redistribution, monkeypatch):
    """``magnitude`` and ``nonzero`` gather the weight whole first (an FSDP2 weight is a DTensor shard)."""
    import sparse_momentum.algorithm as algorithm_module

    model, in_shape = make_model("linear")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.5, total_steps=100,
                                       redistribution=redistribution)
    gathered = []

    def spy(t):
        gathered.append(t.shape)
        return t

    monkeypatch.setattr(algorithm_module, "full_tensor", spy)
    layer = sparsifier.layers["0"]
    value = sparsifier.algorithm._statistic(sparsifier, layer)
    assert gathered == [layer.shape]
    w = layer.weight.detach()
    expected = float(w.abs()[layer.mask].mean()) if redistribution == "magnitude" else float((w != 0).sum())
    assert value == pytest.approx(expected)
