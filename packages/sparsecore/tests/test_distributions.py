"""Uniform and ERK densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import distributions

SHAPES = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "conv3": (64, 32, 3, 3), "fc": (10, 64)}


def sizes():
    return {n: math.prod(s) for n, s in SHAPES.items()}


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5, 0.9])
def test_erk_meets_budget_and_caps_at_one(density):
    d = distributions.erk(SHAPES, density)
    n = sizes()
    assert sum(d[k] * n[k] for k in n) == pytest.approx(density * sum(n.values()), rel=1e-9)
    assert all(0 < v <= 1 for v in d.values())


def test_erk_ordering_follows_raw_scores():
    d = distributions.erk(SHAPES, 0.1)
    raw = distributions.erk_scores(SHAPES)
    by_raw = sorted(SHAPES, key=lambda k: raw[k])
    dens = [d[k] for k in by_raw]
    assert dens == sorted(dens)


def test_erk_makes_over_budget_layers_dense_and_resolves():
    d = distributions.erk(SHAPES, 0.5)
    assert d["conv1"] == 1.0  # its ERK probability would exceed 1
    n = sizes()
    rest = [k for k in n if d[k] < 1]
    raw = distributions.erk_scores(SHAPES)
    eps = [d[k] / raw[k] for k in rest]
    assert max(eps) == pytest.approx(min(eps))  # one scale for all non-dense layers
    assert sum(d[k] * n[k] for k in n) == pytest.approx(0.5 * sum(n.values()))


def test_erk_known_values():
    # two linear layers 100x10 and 10x100 are symmetric: same density
    shapes = {"a": (100, 10), "b": (10, 100), "c": (50, 50)}
    d = distributions.erk(shapes, 0.2)
    assert d["a"] == pytest.approx(d["b"])
    eps = 0.2 * 4500 / (110 / 1000 * 1000 * 2 + 100 / 2500 * 2500)  # budget / sum(raw * numel)
    assert d["c"] == pytest.approx(eps * 100 / 2500) == pytest.approx(0.1125)


def test_engine_counts_exact_for_uniform_and_within_rounding_for_erk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 64, 3), nn.Flatten(),
                          nn.LazyLinear(10) if False else nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.1, seed=0)
    for layer in sp.layers.values():
        assert layer.nnz == round(0.1 * layer.capacity)
    sp.remove()
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=0.1, distribution="erk", seed=0)
    total = sum(l.capacity for l in sp.layers.values())
    assert abs(sp.nnz - 0.1 * total) <= len(sp.layers) / 2
    assert all(l.nnz == round(l.target_density * l.capacity) for l in sp.layers.values())


def test_explicit_mapping_and_callable():
    d = distributions.resolve({"a": 0.3, "b": 1.0}, {"a": (2, 2), "b": (3, 3)}, 0.5)
    assert d == {"a": 0.3, "b": 1.0}
    d = distributions.resolve(lambda shapes, density: {k: density for k in shapes}, {"a": (2, 2)}, 0.5)
    assert d == {"a": 0.5}
