"""The ``warmup_steps`` option (a deviation, off by default): the learning rate ramps back after each update."""

from __future__ import annotations

import types

import pytest
import torch

import sparsecore
from sparse_momentum import SparseMomentumAlgorithm
from sm_helpers import build, chain

W0 = [0.1, -0.5, 0.3, 0.9, 0, 0, 0, 0, 0, 0]
W1 = [0.2, 0.4, -0.6, 0.8, 0, 0, 0, 0, 0, 0]
M0 = [1, -1, 1, 1, 0.1, 0.2, -5.0, 0.3, 0.4, 0.5]
M1 = [1.5, -6.5, 2, 2, 0.5, 6, 0.1, -7, 2, 8]


def two_layers(**options):
    return build(chain((5, 2), (2, 5)), density=0.4, masks={"0": range(4), "1": range(4)},
                 weights={"0": W0, "1": W1}, momenta={"0": M0, "1": M1}, **options)


class FactorRecorder:
    """Records ``sparsifier.lr_factor`` and the param group's lr as each optimizer step used them."""

    def __init__(self) -> None:
        self.factors: list[float] = []
        self.group_lrs: list[float] = []

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step) -> None:
        self.factors.append(round(sparsifier.lr_factor, 6))
        self.group_lrs.append(sparsifier.optimizer.param_groups[0]["lr"])


def _train(steps: int, **options) -> FactorRecorder:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    recorder = FactorRecorder()
    sparsecore.Sparsifier(model, optimizer, algorithm=SparseMomentumAlgorithm(update_every=4, **options),
                          density=0.5, total_steps=100, seed=0, plugins=[recorder])
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return recorder


def test_warmup_ramps_the_rate_after_every_update():
    recorder = _train(10, warmup_steps=3)
    # updates after steps 4 and 8: the three steps after each run at 1/3, 2/3 and 1 of the rate.
    assert recorder.factors == [1.0, 1.0, 1.0, 1.0, 0.333333, 0.666667, 1.0, 1.0, 0.333333, 0.666667]
    assert recorder.group_lrs == [0.1] * 10  # the engine restores the user's rate after every step


def test_without_warmup_the_rate_is_untouched():
    assert _train(10).factors == [1.0] * 10


def test_warmup_resumes_from_the_last_update_step():
    algorithm = SparseMomentumAlgorithm(warmup_steps=4)
    algorithm.load_state_dict({"baseline_nonzero": 8.0, "adjusted_growth": 0.0, "adjustments": [0.0],
                               "last_update_step": 20})
    engine = types.SimpleNamespace(lr_factor=1.0)
    algorithm.before_optimizer_step(engine, 21)  # the second step after the update
    assert engine.lr_factor == pytest.approx(0.5)
    algorithm.load_state_dict({"baseline_nonzero": 8.0, "adjusted_growth": 0.0, "adjustments": []})  # 0.4.0 state
    assert algorithm.last_update_step is None


def test_state_dict_holds_the_last_update_step():
    sparsifier = two_layers(warmup_steps=2)
    sparsifier.update_topology(0.5)
    assert sparsifier.algorithm.state_dict()["last_update_step"] == sparsifier.step


@pytest.mark.parametrize(("options", "message"), [
    ({"warmup_steps": -1}, "warmup_steps must be an int >= 0, got -1"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an int >= 0, got 2.5"),
    ({"warmup_steps": True}, "warmup_steps must be an int >= 0, got True"),
])
def test_bad_values_are_configuration_errors(options, message):
    with pytest.raises(sparsecore.ConfigurationError, match=f"sparse-momentum: {message}"):
        SparseMomentumAlgorithm(**options)
