"""When RigL updates and how much: the cosine drop fraction, T_end, the final step, exact counts."""

from __future__ import annotations

import math

import pytest

from sparsecore.testing import train_steps


def test_updates_every_delta_t_until_75_percent_never_after(rigl, recorder):
    # total 48 steps, T_end = 36: updates after steps 4, 8, ..., 36; none at 40, 44 or 48.
    sparsifier = rigl(update_every=4, total_steps=48, plugins=[recorder])
    train_steps(sparsifier, 48)
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert recorder.steps == [4, 8, 12, 16, 20, 24, 28, 32, 36]


def test_no_update_at_the_final_step(rigl):
    sparsifier = rigl(update_every=5, update_end=1.0, total_steps=20)
    train_steps(sparsifier, 20)
    assert [r.step for r in sparsifier.history if r.reason == "update"] == [5, 10, 15]


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.3),
    (12, 0.3 * (1 + math.cos(math.pi / 3)) / 2),   # 0.225
    (18, 0.15),                                     # half way to T_end
    (27, 0.3 * (1 + math.cos(math.pi * 0.75)) / 2),
    (36, 0.0),                                      # T_end
    (44, 0.0),                                      # after T_end
])
def test_drop_fraction_follows_the_cosine_formula(rigl, step, expected):
    sparsifier = rigl(update_every=4, total_steps=48)
    assert sparsifier.algorithm.drop_fraction(step) == pytest.approx(expected, abs=1e-12)


def test_each_update_drops_floor_of_the_cosine_fraction_and_keeps_every_layer_count(rigl, recorder, drop_fraction):
    sparsifier = rigl(update_every=4, total_steps=48, plugins=[recorder])
    initial = {name: layer.nnz for name, layer in sparsifier.layers.items()}
    assert initial == {name: round(layer.target_density * layer.capacity) for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 48)
    updates = [r for r in sparsifier.history if r.reason == "update"]
    assert len(updates) == 9 == len(recorder.masks_after)
    for i, report in enumerate(updates):
        assert report.rate == pytest.approx(drop_fraction(report.step, 48))
        for name in initial:
            n = math.floor(drop_fraction(report.step, 48) * initial[name])
            assert recorder.prune_counts[i][name] == n, (report.step, name)
            assert recorder.grow_counts[i][name] == n, (report.step, name)
            assert report.layers[name].nnz == initial[name]
            assert int(recorder.masks_after[i][name].sum()) == initial[name]
    assert recorder.prune_counts[0]["2"] > 0  # the first updates really move weights


def test_metrics_give_the_drop_fraction_of_the_next_update(rigl, drop_fraction):
    sparsifier = rigl(update_every=4, total_steps=48)
    assert sparsifier.algorithm_metrics() == {"drop_fraction": pytest.approx(drop_fraction(4, 48))}
    train_steps(sparsifier, 10)
    assert sparsifier.algorithm_metrics() == {"drop_fraction": pytest.approx(drop_fraction(12, 48))}
    train_steps(sparsifier, 26)  # step 36 = T_end: no update is left
    assert sparsifier.algorithm_metrics() == {"drop_fraction": 0.0}


def test_constant_decay_keeps_the_fraction(rigl):
    sparsifier = rigl(decay="constant", prune_rate=0.5, update_every=4, total_steps=48)
    train_steps(sparsifier, 12)
    assert [r.rate for r in sparsifier.history if r.reason == "update"] == [0.5, 0.5, 0.5]
