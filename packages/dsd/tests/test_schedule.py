"""The phase schedule and the learning-rate factor, on their own."""

from __future__ import annotations

import pytest

from sparsecore import ConfigurationError
from sparsecore_dsd import PhaseSchedule, phase_names


def test_phase_names():
    assert phase_names(1) == ("dense", "sparse", "redense")
    assert phase_names(2) == ("dense", "sparse", "redense", "sparse", "redense")


def test_fraction_boundaries_and_phase_per_step():
    s = PhaseSchedule.from_fractions((1 / 3, 1 / 3, 1 / 3), 9, phase_names(1))
    assert s.unit == "step" and s.boundaries == (3, 6)
    assert [s.names[s.index_at(step=k)] for k in range(1, 11)] == \
        ["dense"] * 3 + ["sparse"] * 3 + ["redense"] * 4
    # the phase the next step trains in, once k steps are done
    assert [s.index_after(k) for k in range(0, 8)] == [0, 0, 0, 1, 1, 1, 2, 2]


def test_uneven_fractions_round_to_nearest_step():
    s = PhaseSchedule.from_fractions((0.25, 0.25, 0.2, 0.15, 0.15), 100, phase_names(2))
    assert s.boundaries == (25, 50, 70, 85)


def test_epoch_boundaries_and_conversion():
    s = PhaseSchedule.from_epochs((2, 3, 4), phase_names(1))
    assert s.unit == "epoch" and s.boundaries == (2, 5)
    assert [s.names[s.index_at(epoch=e)] for e in range(7)] == \
        ["dense"] * 2 + ["sparse"] * 3 + ["redense"] * 2
    # steps 1..4 are epoch 0 and 1 with 4 steps... here 2 steps per epoch: steps 5..10 are epochs 2..4
    assert [s.names[s.index_at(step=k, steps_per_epoch=2)] for k in (4, 5, 10, 11)] == \
        ["dense", "sparse", "sparse", "redense"]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        s.index_at(step=3)


def test_step_schedule_epoch_query_uses_last_step_of_epoch():
    s = PhaseSchedule.from_fractions((0.5, 0.25, 0.25), 8, phase_names(1))  # boundaries (4, 6)
    assert [s.names[s.index_at(epoch=e, steps_per_epoch=3)] for e in range(3)] == ["dense", "sparse", "redense"]
    with pytest.raises(ValueError, match="exactly one"):
        s.index_at(step=1, epoch=0)


@pytest.mark.parametrize("fractions, total, match", [
    ((0.5, 0.5), 10, "needs 3 phase lengths"),
    ((0.5, 0.3, 0.3), 10, "must sum to 1"),
    ((0.5, 0.0, 0.5), 10, "positive"),
    ((0.4, 0.2, 0.4), 2, "too small"),
    ("abc", 10, "sequence"),
])
def test_bad_fractions(fractions, total, match):
    with pytest.raises(ConfigurationError, match=match):
        PhaseSchedule.from_fractions(fractions, total, phase_names(1))


def test_bad_epochs():
    with pytest.raises(ConfigurationError, match="positive integer"):
        PhaseSchedule.from_epochs((2, 1.5, 3), phase_names(1))
    with pytest.raises(ConfigurationError, match="needs 5 phase lengths"):
        PhaseSchedule.from_epochs((2, 2, 2), phase_names(2))

