"""Options of the built-in algorithms are validated at construction, and SET's step schedule."""

from __future__ import annotations

import math

import pytest
import torch

import sparsecore
from sparsecore.algorithms import SetAlgorithm

from core_helpers import mlp, train_steps


def build(algorithm="set", total_steps=100, **options):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm=algorithm, density=0.3, total_steps=total_steps, seed=0,
                                 **options)


RATE = "set: prune_rate must be a number in (0, 1], got {!r}"
ETA = "set: eta_min must be a number in [0, 1], got {!r}"
EVERY = "set: update_every must be 'epoch' or a positive int, got {!r}"
END = "set: update_end must be a number in (0, 1], got {!r}"


@pytest.mark.parametrize(("options", "message"), [
    ({"prune_rate": "0.3"}, RATE.format("0.3")),
    ({"prune_rate": "abc"}, RATE.format("abc")),
    ({"prune_rate": None}, RATE.format(None)),
    ({"prune_rate": True}, RATE.format(True)),
    ({"prune_rate": 0}, RATE.format(0)),
    ({"prune_rate": 1.5}, RATE.format(1.5)),
    ({"prune_rate": math.nan}, RATE.format(math.nan)),
    ({"eta_min": -0.1}, ETA.format(-0.1)),
    ({"eta_min": 1.5}, ETA.format(1.5)),
    ({"eta_min": "0"}, ETA.format("0")),
    ({"eta_min": False}, ETA.format(False)),
    ({"eta_min": math.nan}, ETA.format(math.nan)),
    ({"prune_rate": 0.3, "eta_min": 0.5},
     "set: eta_min (0.5) must not exceed prune_rate (0.3); the rate decays from prune_rate to eta_min"),
    ({"update_every": True}, EVERY.format(True)),
    ({"update_every": False}, EVERY.format(False)),
    ({"update_every": 0}, EVERY.format(0)),
    ({"update_every": -3}, EVERY.format(-3)),
    ({"update_every": 2.5}, EVERY.format(2.5)),
    ({"update_every": 10.0}, EVERY.format(10.0)),
    ({"update_every": "10"}, EVERY.format("10")),
    ({"update_every": "steps"}, EVERY.format("steps")),
    ({"update_end": 0.0}, END.format(0.0)),
    ({"update_end": 1.5}, END.format(1.5)),
    ({"update_end": "all"}, END.format("all")),
    ({"decay": "exponential"}, "set: decay must be one of 'cosine', 'linear', 'constant', got 'exponential'"),
])
def test_bad_set_options_are_configuration_errors_at_construction(options, message):
    with pytest.raises(sparsecore.ConfigurationError) as info:
        SetAlgorithm(**options)
    assert str(info.value) == message
    with pytest.raises(sparsecore.ConfigurationError) as info:  # the same through the engine
        build(**options)
    assert str(info.value) == message


def test_good_set_options_are_kept():
    import numpy  # a dependency of sparsecore
    algo = SetAlgorithm(prune_rate=1, eta_min=1, update_every=numpy.int64(7), update_end=0.75, decay="linear")
    assert (algo.prune_rate, algo.eta_min, algo.update_every, algo.update_end, algo.decay) == (1.0, 1.0, 7, 0.75,
                                                                                                "linear")
    assert type(algo.update_every) is int and type(algo.prune_rate) is float
    assert SetAlgorithm(prune_rate=0.2, eta_min=0.2).eta_min == 0.2
    assert SetAlgorithm(update_every="epoch").update_every == "epoch"


@pytest.mark.parametrize(("options", "message"), [
    ({"prune_rate": 0.3}, "algorithm 'static' does not accept option(s) ['prune_rate']; it takes no options"),
    ({"update_every": 10, "eta_min": 0.0},
     "algorithm 'static' does not accept option(s) ['eta_min', 'update_every']; it takes no options"),
])
def test_static_takes_no_options(options, message):
    with pytest.raises(sparsecore.ConfigurationError) as info:
        build(algorithm="static", **options)
    assert str(info.value) == message


def test_set_unknown_option_lists_the_accepted_ones():
    with pytest.raises(sparsecore.ConfigurationError) as info:
        build(prune=0.3)
    assert str(info.value) == ("algorithm 'set' does not accept option(s) ['prune']; accepted: "
                               "['prune_rate', 'decay', 'eta_min', 'update_every', 'update_end']")


@pytest.mark.parametrize(("total_steps", "update_every", "update_end", "steps", "expected"), [
    (20, 10, 1.0, 20, [10]),  # not at the final step: its regrown weights would never train
    (20, 10, 1.0, 25, [10]),  # nor after it
    (21, 10, 1.0, 21, [10, 20]),
    (30, 10, 1.0, 30, [10, 20]),
    (40, 10, 0.5, 40, [10, 20]),  # update_end still stops earlier
    (None, 10, 1.0, 30, [10, 20, 30]),  # without total_steps there is no final step
])
def test_set_step_schedule_skips_the_final_step(total_steps, update_every, update_end, steps, expected):
    kwargs = {"decay": "constant"} if total_steps is None else {}
    sp = build(total_steps=total_steps, update_every=update_every, update_end=update_end, **kwargs)
    train_steps(sp.model, sp.optimizer, steps)
    assert sp.step == steps
    assert [r.step for r in sp.history] == expected


def test_set_epoch_schedule_skips_the_final_epoch():
    sp = build(total_steps=20)
    for epoch in range(4):
        train_steps(sp.model, sp.optimizer, 5, seed=epoch)
        sp.epoch_end(epoch)
    assert [r.step for r in sp.history] == [5, 10, 15]
