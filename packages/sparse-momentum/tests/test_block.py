"""Sparse momentum in a block-sparse run: every choice comes in whole blocks (the engine's shared selection)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecore
from sparsecore import selection


def _run(block=(2, 2), **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.25, block=block,
                               total_steps=100, seed=0, **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return sp


@pytest.mark.parametrize("options", [{}, {"prune": "global_magnitude"}, {"growth": "random"},
                                     {"redistribution": "none"}])
def test_an_update_in_a_block_sparse_run_keeps_whole_blocks(options):
    sp = _run(**options)
    before = {name: layer.nnz for name, layer in sp.layers.items()}
    report = sp.update_topology(0.5)
    for name, layer in sp.layers.items():
        assert selection.is_block_structured(layer.mask, (2, 2)), name
        assert layer.nnz % 4 == 0 and report.layers[name].pruned % 4 == 0 and report.layers[name].grown % 4 == 0
        assert not bool(layer.weight[~layer.mask].any())
    assert sum(u.pruned for u in report.layers.values()) > 0
    assert abs(sp.nnz - sum(before.values())) <= 4 * len(before)  # regrowth rounds down to whole blocks


def test_momentum_growth_picks_the_blocks_of_largest_summed_momentum():
    sp = _run()
    layer = sp.layers["2"]
    momentum = sp.momentum(layer).abs()
    chosen = sp.algorithm.select_grow(sp, layer, 8)
    expected = selection.largest(momentum, ~layer.mask, 8, (2, 2))
    assert torch.equal(chosen, expected) and int(chosen.sum()) == 8


def test_per_neuron_growth_is_refused_in_a_block_sparse_run():
    with pytest.raises(sparsecore.ConfigurationError, match="momentum_neuron.*block"):
        _run(growth="momentum_neuron")
