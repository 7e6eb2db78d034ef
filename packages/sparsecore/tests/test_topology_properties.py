"""Property tests (hypothesis) of the topology update invariants."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparsecore
from sparsecore import hookimpl


class RandomRedistribute:
    """Spreads the removed total over layers at random, within each layer's free slots."""

    name = "random-redistribute"

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    @hookimpl
    def redistribute(self, layers, removed):
        remaining = sum(removed.values())
        out = {}
        for name, layer in layers.items():
            free = layer.capacity - layer.nnz
            take = min(free, int(torch.randint(0, remaining + 1, (1,), generator=self.gen))) if remaining else 0
            out[name] = take
            remaining -= take
        return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       density=st.floats(0.05, 1.0),
       rate=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16),
       redistribute=st.booleans())
def test_topology_update_invariants(widths, density, rate, seed, redistribute):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(a, b))
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plugins = [RandomRedistribute(seed)] if redistribute else []
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=density, seed=seed, plugins=plugins)
    before = {n: l.mask.clone() for n, l in sp.layers.items()}
    total_before = sp.nnz
    report = sp.update_topology(rate)
    removed_total = 0
    for name, layer in sp.layers.items():
        old, new = before[name], layer.mask
        n_prune = int(rate * old.sum().item())  # floor, the default prune count
        removed_total += n_prune
        assert 0 <= layer.nnz <= layer.capacity  # capacity
        pruned, grown = old & ~new, new & ~old
        assert not (pruned & grown).any()  # disjoint
        assert report.layers[name].pruned == pruned.sum().item()
        assert report.layers[name].grown == grown.sum().item()
        assert torch.all(layer.weight[~new] == 0)
        if not redistribute:
            assert layer.nnz == old.sum().item()  # default: every layer regrows what it lost
    if redistribute:
        assert total_before - removed_total <= sp.nnz <= total_before
    else:
        assert sp.nnz == total_before
