"""Gradual N:M pruning: the cubic ramp on the count per group, from M (dense) to exactly N at ``end_step``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import sparsecore
from sparsecore import ConfigurationError
from sparsecore.testing import make_tiny_model, train_steps

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (5, 8)]


def group_counts(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Active entries per group of ``m`` consecutive entries along dim 1 (without the engine's helper)."""
    return mask.movedim(1, -1).reshape(-1, m).sum(1)


def reference_k(n: int, m: int, step: int, t0: int, t1: int, dt: int, initial_density: float = 1.0,
                rounding=round) -> int:
    """The count per group after ``step``, written from Zhu & Gupta's ramp in sparsities: ``max(N, r(M (1 - s_t)))``."""
    done = [t for t in range(t0, t1, dt) if t <= step] + ([t1] if t1 <= step else [])
    if not done:
        return m
    p = 1.0 if t1 == t0 else (done[-1] - t0) / (t1 - t0)
    s_f = 1.0 - n / m
    s_i = 1.0 - max(initial_density, n / m)
    s_t = s_f + (s_i - s_f) * (1.0 - p) ** 3
    return max(n, rounding(m * (1.0 - s_t)))


class Recorder:
    """Keeps the weights and masks each update will see (tryfirst on_step, before GMP's own) and the reports."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.reports: list = []

    @sparsecore.hookimpl(tryfirst=True)
    def on_step(self, sparsifier, step):
        self.before[step] = {name: (layer.weight.detach().clone(), layer.mask.clone())
                             for name, layer in sparsifier.layers.items()}

    @sparsecore.hookimpl
    def on_topology_update(self, report):
        self.reports.append(report)


def make_model(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A small model whose sparse layers' input dimensions divide by 8, and its input shape."""
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), (16,)
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)), (8, 5, 5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["linear", "conv"]),
       nm=st.sampled_from(PATTERNS),
       t0=st.integers(0, 4),
       span=st.integers(0, 8),
       dt=st.integers(1, 4),
       initial_density=st.sampled_from([1.0, 0.9, 0.6]),
       rounding=st.sampled_from(["round", "floor", "ceil"]),
       seed=st.integers(0, 2**16))
def test_every_group_holds_exactly_k_t_after_every_update(kind, nm, t0, span, dt, initial_density, rounding, seed):
    """After set-up and every step: every group holds k(t) (M before t0, N from end_step on); masks only
    shrink, each pruning step keeps the k(t) largest |w| of every group, pruned weights and momentum are 0."""
    n, m = nm
    torch.set_num_threads(1)
    t1, steps = t0 + span, t0 + span + 3
    model, in_shape = make_model(kind, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    recorder = Recorder()
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="gmp", pattern=f"{n}:{m}", total_steps=steps,
                                       seed=seed, plugins=[recorder], start_step=t0, end_step=t1, update_every=dt,
                                       initial_density=initial_density, rounding=rounding)
    round_with = {"round": round, "floor": math.floor, "ceil": math.ceil}[rounding]
    try:
        gen = torch.Generator().manual_seed(seed)
        previous = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        for step in range(steps + 1):
            if step:
                x = torch.randn((4, *in_shape), generator=gen)
                y = torch.randint(0, 4, (4,), generator=gen)
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            k = reference_k(n, m, step, t0, t1, dt, initial_density, round_with)
            for name, layer in sparsifier.layers.items():
                assert (group_counts(layer.mask, m) == k).all(), (name, step, k)
                assert sparsifier.algorithm.nm_group_count(sparsifier, layer) == k
                assert not bool((layer.mask & ~previous[name]).any()), f"layer {name} grew at step {step}"
                assert not layer.weight.detach()[~layer.mask].any()
                momentum = sparsifier.momentum(layer)
                if momentum is not None:
                    assert not momentum[~layer.mask].any()
                if step in recorder.before:  # the survivors of a pruning step are the k largest |w| per group
                    weight, old = recorder.before[step][name]
                    removed = old & ~layer.mask
                    if removed.any():
                        w = weight.abs().movedim(1, -1).reshape(-1, m)
                        kept_min = torch.where(layer.mask.movedim(1, -1).reshape(-1, m), w, math.inf).min(1).values
                        removed_max = torch.where(removed.movedim(1, -1).reshape(-1, m), w, -math.inf).max(1).values
                        assert bool((removed_max <= kept_min).all())
                previous[name] = layer.mask.clone()
        assert all(u.grown == 0 for report in recorder.reports for u in report.layers.values())
        assert max((r.step for r in recorder.reports), default=0) <= t1  # frozen after end_step
    finally:
        sparsifier.remove()


def test_two_four_ramp_on_the_tiny_model_step_by_step():
    """2:4, start 4, end 20, every 4: k = 4, 4, 3, 2, 2, 2 at steps 0, 4, 8, 12, 16, 20 (the cubic ramp of 1 -> 0.5
    is 1, 0.711, 0.563, 0.508, 0.5 at p = 0, .25, .5, .75, 1)."""
    model = make_tiny_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="gmp", pattern="2:4", total_steps=30, seed=0,
                                       start_step=4, end_step=20, update_every=4)
    seen = {}
    for step in range(0, 31):
        if step:
            train_steps(sparsifier, 1, batch_size=8, seed=step)
        counts = {int(c) for layer in sparsifier.layers.values() for c in layer.pattern.group_counts(layer.mask)}
        assert len(counts) == 1, (step, counts)
        seen[step] = counts.pop()
    assert [seen[t] for t in (0, 3, 4, 7, 8, 11, 12, 16, 20, 30)] == [4, 4, 4, 4, 3, 3, 2, 2, 2, 2]
    assert sparsifier.nnz == sum(layer.capacity // 2 for layer in sparsifier.layers.values())
    assert [r.step for r in sparsifier.history] == [4, 8, 12, 16, 20]
    assert [sum(u.pruned for u in r.layers.values()) for r in sparsifier.history] == [0, 344, 344, 0, 0]


def test_pruning_at_step_zero_keeps_the_largest_of_every_group_at_set_up():
    model = make_tiny_model(0)
    weights = {name: module.weight.detach().abs().clone() for name, module in model.named_children()
               if isinstance(module, nn.Linear)}
    sparsifier = sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="gmp",
                                       pattern="1:4", total_steps=10, start_step=0, end_step=0)
    for name, layer in sparsifier.layers.items():
        assert torch.equal(layer.mask, sparsecore.selection.top_per_group(weights[name], layer.pattern))


def test_global_magnitude_is_refused_in_an_nm_run():
    model = make_tiny_model(0)
    with pytest.raises(ConfigurationError, match=r"gmp: prune='global_magnitude' cannot apply in a pattern='2:4' "
                                                 r"run.*use prune='magnitude'"):
        sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="gmp", pattern="2:4",
                              total_steps=10, prune="global_magnitude")


def test_scheduled_counts_are_k_times_the_groups():
    model = make_tiny_model(0)
    sparsifier = sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="gmp",
                                       pattern="1:4", total_steps=30, start_step=4, end_step=20, update_every=4)
    algorithm = sparsifier.algorithm
    groups = {name: layer.capacity // 4 for name, layer in sparsifier.layers.items()}
    for step in (0, 8, 12, 20, 30):
        k = reference_k(1, 4, step, 4, 20, 4)
        assert algorithm.scheduled_counts(sparsifier.layers, step) == {name: k * g for name, g in groups.items()}
