"""Property tests (hypothesis) of the topology update invariants.

A recorder around the run manager's first-result calls captures what the
plugins answered (the prune and grow selections, the regrowth counts) and the
mask each ``select_grow`` call saw; the tests then check what the engine did
with those answers against the masks and weights before and after the update.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparsecore
from sparsecore import hookimpl, selection


class RandomRedistribute:
    """Spreads the removed total over layers at random, within each layer's free slots."""

    name = "random-redistribute"
    keeps_budget = False  # a layer's free slots may cap its share, so the total can come out lower

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


class RegrowPrunedFirst:
    """Grows the inactive weights of largest magnitude: the ones pruned in this update come first."""

    name = "regrow-pruned-first"

    @hookimpl
    def select_grow(self, layer, n):
        return selection.largest(layer.weight.detach().abs(), ~layer.mask, n)


class Recorder:
    """Records every answer of the topology hooks, whoever gave it, without changing it.

    It shadows ``manager.call_first_or_none`` (through which ``call_first`` answers too)
    on one run's manager.
    """

    def __init__(self, manager):
        self.pruned, self.grown, self.seen_at_grow, self.regrow = {}, {}, {}, None
        self._call = manager.call_first_or_none
        manager.call_first_or_none = self.call_first_or_none

    def call_first_or_none(self, hook_name, **kwargs):
        if hook_name == "select_grow":
            self.seen_at_grow[kwargs["layer"].name] = kwargs["layer"].mask.clone()
        result, who = self._call(hook_name, **kwargs)
        if hook_name == "select_prune":
            self.pruned[kwargs["layer"].name] = result.clone()
        elif hook_name == "select_grow":
            self.grown[kwargs["layer"].name] = result.clone()
        elif hook_name == "redistribute":
            self.regrow = dict(result)
        return result, who


@pytest.mark.filterwarnings("ignore:sparse layer.*start with no active weight")  # tiny layers at low density
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       density=st.floats(0.05, 1.0),
       rate=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16),
       redistribute=st.booleans(),
       regrow_pruned=st.booleans())
def test_topology_update_invariants(widths, density, rate, seed, redistribute, regrow_pruned):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plugins = [RandomRedistribute(seed)] if redistribute else []
    plugins += [RegrowPrunedFirst()] if regrow_pruned else []
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=density, seed=seed, plugins=plugins)
    recorder = Recorder(sp.manager)
    before = {n: l.mask.clone() for n, l in sp.layers.items()}
    weights = {n: l.weight.detach().clone() for n, l in sp.layers.items()}
    total_before = sp.nnz
    report = sp.update_topology(rate)
    assert list(recorder.pruned) == list(recorder.grown) == list(sp.layers)
    removed_total = 0
    for name, layer in sp.layers.items():
        old, new = before[name], layer.mask
        chosen_prune, chosen_grow = recorder.pruned[name], recorder.grown[name]
        n_prune = int(rate * old.sum().item())  # floor, the default prune count
        removed_total += n_prune
        # the answers: exactly n_prune active weights pruned, regrow[name] weights grown
        assert int(chosen_prune.sum()) == n_prune and not (chosen_prune & ~old).any()
        assert int(chosen_grow.sum()) == recorder.regrow[name]
        # the engine pruned before growing: select_grow saw the mask minus this update's prunes
        assert torch.equal(recorder.seen_at_grow[name], old & ~chosen_prune)
        assert not (chosen_grow & recorder.seen_at_grow[name]).any()  # grown only where inactive
        # and applied exactly those two answers
        assert torch.equal(new, (old & ~chosen_prune) | chosen_grow)
        assert 0 <= layer.nnz <= layer.capacity
        # weights pruned and regrown in this update count as neither; they keep their value
        regrown = chosen_prune & chosen_grow
        newly_grown = chosen_grow & ~old
        assert report.layers[name].pruned == int((chosen_prune & ~chosen_grow).sum()) == int((old & ~new).sum())
        assert report.layers[name].grown == int(newly_grown.sum()) == int((new & ~old).sum())
        assert torch.equal(layer.weight.detach()[regrown], weights[name][regrown])
        assert torch.all(layer.weight[newly_grown] == 0)
        assert torch.all(layer.weight[~new] == 0)
        if regrow_pruned and not redistribute:
            # every layer regrows what it lost, so the largest inactive weights are exactly the pruned ones
            assert torch.equal(regrown, chosen_prune) and torch.equal(new, old)
        if not redistribute:
            assert layer.nnz == old.sum().item()  # default: every layer regrows what it lost
    assert sum(recorder.regrow.values()) <= removed_total
    if redistribute:
        assert total_before - removed_total <= sp.nnz <= total_before
    else:
        assert sp.nnz == total_before
