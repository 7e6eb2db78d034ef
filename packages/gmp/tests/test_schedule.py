"""The cubic schedule as pure functions: the paper's reference points, pruning steps, counts."""

from __future__ import annotations

import pytest

from sparsecore_gmp import PruningSchedule, cubic_density, kept_count


@pytest.mark.parametrize("progress, sparsity", [(0.25, 0.520), (0.5, 0.788), (0.75, 0.886)])
def test_reference_points_of_the_cubic_ramp(progress, sparsity):
    # s_i = 0, s_f = 0.9 (tfmot / the reference notes): s = 0.9 (1 - (1 - p)^3)
    assert 1 - cubic_density(progress, initial=1.0, final=0.1) == pytest.approx(sparsity, abs=1e-3)


def test_ramp_ends_exactly_at_the_final_density_and_is_clamped():
    assert cubic_density(1.0, 1.0, 0.05) == 0.05
    assert cubic_density(3.0, 1.0, 0.05) == 0.05
    assert cubic_density(-1.0, 0.7, 0.05) == pytest.approx(0.7)
    assert cubic_density(0.5, 1.0, 0.2, power=1) == pytest.approx(0.6)


def test_pruning_steps_include_the_end_step_off_the_grid():
    schedule = PruningSchedule(start_step=10, end_step=45, update_every=10)
    assert schedule.pruning_steps() == [10, 20, 30, 40, 45]
    assert [t for t in range(60) if schedule.is_pruning_step(t)] == [10, 20, 30, 40, 45]
    assert [schedule.last_pruning_step(t) for t in (0, 9, 10, 19, 20, 44, 45, 99)] == [None, None, 10, 10, 20, 40,
                                                                                         45, 45]


def test_one_shot_schedule_has_one_pruning_step_at_full_progress():
    schedule = PruningSchedule(start_step=7, end_step=7, update_every=3)
    assert schedule.pruning_steps() == [7]
    assert schedule.progress(7) == 1.0 and schedule.progress(6) == 0.0
    assert schedule.density(6, 1.0, 0.1) == 1.0 and schedule.density(7, 1.0, 0.1) == 0.1


def test_density_is_piecewise_constant_between_pruning_steps():
    schedule = PruningSchedule(start_step=0, end_step=100, update_every=25)
    assert schedule.density(30, 1.0, 0.1) == schedule.density(25, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.75 ** 3)


@pytest.mark.parametrize("start, end, every", [(5, 4, 1), (-1, 4, 1), (0, 4, 0)])
def test_inconsistent_schedule_is_refused(start, end, every):
    with pytest.raises(ValueError):
        PruningSchedule(start, end, every)


def test_kept_count_rounding_and_blocks():
    assert kept_count(10, 0.25) == 2           # round half to even, as SparseLayer.active_count
    assert kept_count(10, 0.35) == 4
    assert kept_count(10, 0.25, rounding="ceil") == 3
    assert kept_count(10, 0.29, rounding="floor") == 2
    assert kept_count(64, 0.3, block_size=4) == 20   # round(4.8) = 5 blocks
    assert kept_count(64, 1.5) == 64 and kept_count(64, -0.1) == 0
