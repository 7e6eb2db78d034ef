"""GMP through the engine: exact counts on the cubic schedule, shrinking masks, zeroed state, global mode,
block sparsity, FLOPs, checkpoints, options and registration."""

from __future__ import annotations

import importlib.metadata
import io
import math

import pytest
import torch

import sparsecore
from sparsecore import CheckpointError, ConfigurationError
from sparsecore.reporting import RunFlops
from sparsecore.testing import make_tiny_model, train_steps
from sparsecore_gmp import GMPAlgorithm

# The tiny model's sparse layers and sizes (sparsecore.testing.make_tiny_model).
SIZES = {"0": 512, "2": 768, "4": 96}


def pruning_steps(t0: int, t1: int, dt: int) -> list[int]:
    """t0, t0 + dt, ... below t1, and t1."""
    steps, t = [], t0
    while t < t1:
        steps.append(t)
        t += dt
    return steps + [t1]


def expected_nnz(n: int, final_density: float, step: int, t0: int, t1: int, dt: int,
                 initial_sparsity: float = 0.0) -> int:
    """Zhu & Gupta's count, written from the paper's formula in sparsities: k = round(n (1 - s_t))."""
    done = [t for t in pruning_steps(t0, t1, dt) if t <= step]
    if not done:
        return n
    p = 1.0 if t1 == t0 else (done[-1] - t0) / (t1 - t0)
    s_f = 1.0 - final_density
    s_t = s_f + (initial_sparsity - s_f) * (1.0 - p) ** 3
    return max(round(n * (1.0 - s_t)), round(n * final_density))


class Recorder:
    """Extra plugin: after every optimizer step, *before* GMP's own ``on_step`` (tryfirst), keeps the
    weights and masks the update will see; keeps every topology report."""

    def __init__(self):
        self.before: dict[int, dict] = {}
        self.reports = []

    @sparsecore.hookimpl(tryfirst=True)
    def on_step(self, sparsifier, step):
        self.before[step] = {name: (layer.weight.detach().clone(), layer.mask.clone())
                             for name, layer in sparsifier.layers.items()}

    @sparsecore.hookimpl
    def on_topology_update(self, report):
        self.reports.append(report)


def build(density=0.1, total_steps=60, optimizer="sgd", recorder=None, model_seed=0, **options):
    model = make_tiny_model(model_seed)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    return sparsecore.Sparsifier(model, opt, algorithm="gmp", density=density, total_steps=total_steps, seed=0,
                                 plugins=[recorder] if recorder else [], **options)


def nnz(sparsifier) -> dict[str, int]:
    return {name: layer.nnz for name, layer in sparsifier.layers.items()}


def step_once(sparsifier, i: int) -> None:
    train_steps(sparsifier, 1, batch_size=8, seed=i)


# ----------------------------------------------------------------------
# registration and defaults
# ----------------------------------------------------------------------
def test_entry_point_registers_gmp():
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="sparsecore") if ep.name == "gmp"]
    assert entry.value == "sparsecore_gmp.plugin"
    assert "gmp" in sparsecore.available_algorithms()
    assert sparsecore.registry.algorithms["gmp"].distribution == "sparsecore-gmp"
    sparsifier = build()
    assert isinstance(sparsifier.algorithm, GMPAlgorithm)
    assert sparsifier.schedule is None  # GMP drives its own pruning steps


def test_run_starts_dense_and_the_engine_density_is_the_final_one():
    sparsifier = build(density=0.1)
    assert all(bool(layer.mask.all()) for layer in sparsifier.layers.values())
    assert [layer.target_density for layer in sparsifier.layers.values()] == [0.1, 0.1, 0.1]
    with torch.no_grad():
        sparsifier.model(torch.zeros(1, 16))  # output sizes are known after a forward
    assert sparsifier.report().train_flops_ratio == 1.0  # the snapshot cost of a dense step


def test_default_span_is_ten_to_seventy_five_percent_every_hundred_steps():
    schedule = build(total_steps=1000).algorithm.pruning_schedule
    assert (schedule.start_step, schedule.end_step, schedule.update_every, schedule.power) == (100, 750, 100, 3.0)


# ----------------------------------------------------------------------
# the schedule, step by step
# ----------------------------------------------------------------------
@pytest.mark.parametrize("options, t0, t1, dt", [
    ({"start_step": 5, "end_step": 45, "update_every": 7}, 5, 45, 7),   # end off the grid
    ({"start": 0.1, "end": 0.5, "update_every": 10}, 6, 30, 10),        # fractions of total_steps=60
    ({"start_step": 3, "end": 0.25, "update_every": 4}, 3, 15, 4),      # a step and a fraction
])
def test_exact_nnz_per_layer_at_every_step_follows_the_cubic_formula(options, t0, t1, dt):
    recorder = Recorder()
    sparsifier = build(density=0.1, total_steps=60, recorder=recorder, **options)
    for i in range(60):
        step_once(sparsifier, i)
        step = i + 1
        assert nnz(sparsifier) == {name: expected_nnz(n, 0.1, step, t0, t1, dt) for name, n in SIZES.items()}, step
    assert [r.step for r in recorder.reports] == pruning_steps(t0, t1, dt)  # no update off the schedule
    assert all(u.grown == 0 for r in recorder.reports for u in r.layers.values())


def test_initial_sparsity_is_applied_at_the_first_pruning_step():
    sparsifier = build(density=0.1, start_step=4, end_step=20, update_every=4, initial_density=0.6)
    step_once(sparsifier, 0)
    assert nnz(sparsifier) == SIZES  # dense before t0
    for i in range(1, 20):
        step_once(sparsifier, i)
        assert nnz(sparsifier) == {n: expected_nnz(s, 0.1, i + 1, 4, 20, 4, initial_sparsity=0.4)
                                   for n, s in SIZES.items()}
    assert nnz(sparsifier) == {"0": 51, "2": 77, "4": 10}


def test_pruning_at_step_zero_happens_at_set_up():
    sparsifier = build(density=0.1, start_step=0, end_step=20, update_every=5, initial_density=0.5)
    assert nnz(sparsifier) == {"0": 256, "2": 384, "4": 48}
    for name, layer in sparsifier.layers.items():  # the largest |w| of the initialisation survive
        w = layer.weight.detach().abs()
        assert float(w[layer.mask].min()) >= float(w[~layer.mask].max())
    one_shot = build(density=0.1, start_step=0, end_step=0)
    assert nnz(one_shot) == {"0": 51, "2": 77, "4": 10}


def test_masks_only_shrink_and_drop_the_smallest_active_magnitudes():
    recorder = Recorder()
    sparsifier = build(density=0.05, total_steps=40, recorder=recorder, start_step=2, end_step=30, update_every=4)
    train_steps(sparsifier, 40, batch_size=8)
    assert len(recorder.reports) == 8
    for report in recorder.reports:
        before = recorder.before[report.step]
        after = recorder.before.get(report.step + 1)
        for name in SIZES:
            weight, old = before[name]
            new = after[name][1] if after else sparsifier.layers[name].mask
            assert not bool((new & ~old).any()), f"layer {name} grew at step {report.step}"
            removed = old & ~new
            if removed.any():
                assert float(weight.abs()[removed].max()) <= float(weight.abs()[new].min())


def test_final_density_exactly_reached_at_the_end_step_then_frozen():
    recorder = Recorder()
    sparsifier = build(density=0.05, total_steps=50, recorder=recorder, start_step=10, end_step=37, update_every=10)
    train_steps(sparsifier, 36, batch_size=8)
    assert sparsifier.nnz > sum(layer.active_count(0.05) for layer in sparsifier.layers.values())
    train_steps(sparsifier, 1, batch_size=8)
    final = {name: layer.active_count(layer.target_density) for name, layer in sparsifier.layers.items()}
    assert nnz(sparsifier) == final == {"0": 26, "2": 38, "4": 5}
    masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
    train_steps(sparsifier, 13, batch_size=8, seed=1)
    assert recorder.reports[-1].step == 37
    assert all(torch.equal(masks[n], l.mask) for n, l in sparsifier.layers.items())


def test_erk_final_distribution_per_layer():
    sparsifier = build(density=0.2, distribution="erk", total_steps=30, start_step=5, end_step=25, update_every=5,
                       initial_density=0.5)
    targets = {name: layer.target_density for name, layer in sparsifier.layers.items()}
    assert len(set(targets.values())) == 3 and targets["4"] > 0.5  # the small last layer stays above 0.5
    train_steps(sparsifier, 25, batch_size=8)
    assert nnz(sparsifier) == {name: layer.active_count(targets[name]) for name, layer in sparsifier.layers.items()}
    assert sparsifier.nnz == pytest.approx(0.2 * sum(SIZES.values()), abs=2)


@pytest.mark.parametrize("rounding, function", [("floor", math.floor), ("ceil", math.ceil)])
def test_rounding_is_configurable(rounding, function):
    sparsifier = build(density=0.1, start_step=1, end_step=9, update_every=2, rounding=rounding)
    train_steps(sparsifier, 3, batch_size=8)
    d = 0.1 + 0.9 * (1 - 2 / 8) ** 3  # density after pruning step 3
    assert nnz(sparsifier) == {name: function(d * n) for name, n in SIZES.items()}


def test_power_one_is_a_linear_ramp():
    sparsifier = build(density=0.1, start_step=0, end_step=10, update_every=5, power=1)
    train_steps(sparsifier, 5, batch_size=8)
    assert nnz(sparsifier) == {name: round(0.55 * n) for name, n in SIZES.items()}


# ----------------------------------------------------------------------
# pruned weights and their optimizer state
# ----------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, state_keys", [("sgd", {"momentum_buffer"}), ("adamw", {"exp_avg", "exp_avg_sq"})])
def test_pruned_weights_and_optimizer_state_stay_zero(optimizer, state_keys):
    sparsifier = build(density=0.1, total_steps=40, optimizer=optimizer, start_step=3, end_step=20, update_every=3)
    start = {name: layer.weight.detach().clone() for name, layer in sparsifier.layers.items()}
    for i in range(40):
        step_once(sparsifier, i)
        for name, layer in sparsifier.layers.items():
            inactive = ~layer.mask
            state = sparsifier.optimizer_state(layer)
            assert set(state) == state_keys
            assert not bool(layer.weight.detach()[inactive].any()), (name, i)
            for key, tensor in state.items():
                assert not bool(tensor[inactive].any()), (name, key, i)
    for name, layer in sparsifier.layers.items():  # the survivors did train
        assert layer.nnz < SIZES[name]
        assert not torch.equal(layer.weight.detach()[layer.mask], start[name][layer.mask])


# ----------------------------------------------------------------------
# global magnitude
# ----------------------------------------------------------------------
def reference_global_prune(before: dict, total_target: int) -> dict[str, torch.Tensor]:
    """The masks a single threshold over all layers gives: keep the `total_target` largest active |w|
    (ties: earlier layer, then lower flat index, pruned first)."""
    names = list(before)
    values, owners = [], []
    for name in names:
        weight, mask = before[name]
        flat = mask.reshape(-1).nonzero().squeeze(1)
        values += weight.abs().reshape(-1)[flat].tolist()
        owners += [(name, int(i)) for i in flat]
    order = sorted(range(len(values)), key=lambda k: (values[k], k))
    drop = order[:len(values) - total_target]
    masks = {name: before[name][1].clone().reshape(-1) for name in names}
    for k in drop:
        name, i = owners[k]
        masks[name][i] = False
    return {name: masks[name].view_as(before[name][1]) for name in names}


def test_global_mode_prunes_the_globally_smallest_magnitudes():
    recorder = Recorder()
    sparsifier = build(density=0.1, total_steps=30, recorder=recorder, prune="global_magnitude", start_step=2,
                       end_step=20, update_every=6)
    train_steps(sparsifier, 30, batch_size=8)
    assert [r.step for r in recorder.reports] == [2, 8, 14, 20]
    for report in recorder.reports[1:]:  # the first pruning step (initial density 1) removes nothing
        total = sum(expected_nnz(n, 0.1, report.step, 2, 20, 6) for n in SIZES.values())
        expected = reference_global_prune(recorder.before[report.step], total)
        after = recorder.before.get(report.step + 1)
        for name in SIZES:
            assert torch.equal(after[name][1], expected[name]), (report.step, name)
        assert report.nnz == total
        before = recorder.before[report.step]
        kept = torch.cat([w.abs()[after[n][1]] for n, (w, _) in before.items()])
        pruned = torch.cat([w.abs()[m & ~after[n][1]] for n, (w, m) in before.items()])
        assert float(kept.min()) >= float(pruned.max())
    densities = [layer.density for layer in sparsifier.layers.values()]
    assert len(set(densities)) == 3  # one threshold: layer densities differ
    assert sparsifier.nnz == sum(round(0.1 * n) for n in SIZES.values())


# ----------------------------------------------------------------------
# block sparsity
# ----------------------------------------------------------------------
@pytest.mark.parametrize("prune", ["magnitude", "global_magnitude"])
def test_block_sparse_runs_prune_whole_blocks(prune):
    sparsifier = build(density=0.25, total_steps=20, block=(2, 4), prune=prune, start_step=2, end_step=14,
                       update_every=4)
    for i in range(20):
        step_once(sparsifier, i)
        for layer in sparsifier.layers.values():
            assert sparsecore.selection.is_block_structured(layer.mask, (2, 4))
            assert layer.nnz % 8 == 0
        if prune == "magnitude":
            assert nnz(sparsifier) == {
                name: max(round(d * n / 8), round(0.25 * n / 8)) * 8
                for name, n in SIZES.items()
                for d in [sparsifier.algorithm.pruning_schedule.density(i + 1, 1.0, 0.25)]}
    assert sparsifier.nnz == sum(round(0.25 * n / 8) * 8 for n in SIZES.values())


# ----------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------
def test_report_is_a_snapshot_and_train_flops_integrates_the_run():
    total, t0, t1, dt = 50, 10, 30, 5
    sparsifier = build(density=0.1, total_steps=total, start_step=t0, end_step=t1, update_every=dt)
    train_steps(sparsifier, 1, batch_size=8)  # records the output sizes
    assert sparsifier.report().train_flops_ratio == 1.0
    # independent sum: step t trains with the masks of the last pruning step <= t - 1; 6 FLOPs per weight (P = 1)
    sparse = sum(6 * expected_nnz(n, 0.1, t - 1, t0, t1, dt) for t in range(1, total + 1) for n in SIZES.values())
    dense = total * 6 * sum(SIZES.values())
    flops = sparsifier.algorithm.train_flops(sparsifier)  # per-layer mode: known before the run
    assert (flops.steps, flops.train_flops, flops.dense_train_flops) == (total, sparse, dense)
    assert flops.ratio == pytest.approx(sparse / dense) and flops.mean_density == pytest.approx(sparse / dense)
    train_steps(sparsifier, total - 1, batch_size=8)
    report = sparsifier.report()
    assert report.train_flops == 6 * sparsifier.nnz and report.train_flops_ratio == pytest.approx(0.1, abs=1e-3)
    assert sparsifier.algorithm.train_flops(sparsifier) == flops
    # the engine's count of the steps actually trained agrees with the schedule's prediction
    assert sparsifier.run_flops() == RunFlops(steps=total, train_flops=sparse, dense_train_flops=dense)


def test_train_flops_of_a_fine_ramp_match_the_papers_mean_sparsity():
    # s_bar = [t0 s_i + (t_end - t0)(3 s_f + s_i) / 4 + (T - t_end) s_f] / T, dense (s_i = 0) before t0
    total, t0, t1 = 2000, 200, 1400
    sparsifier = build(density=0.1, total_steps=total, start_step=t0, end_step=t1, update_every=1)
    with torch.no_grad():
        sparsifier.model(torch.zeros(1, 16))
    flops = sparsifier.algorithm.train_flops(sparsifier)
    s_bar = ((t1 - t0) * 3 * 0.9 / 4 + (total - t1) * 0.9) / total
    assert flops.ratio == pytest.approx(1 - s_bar, abs=2e-3)
    assert flops.ratio == pytest.approx(0.325, abs=1e-3)


def test_global_train_flops_needs_the_pruning_steps_to_have_run():
    sparsifier = build(density=0.1, total_steps=30, prune="global_magnitude", start_step=2, end_step=20,
                       update_every=6)
    train_steps(sparsifier, 10, batch_size=8)
    with pytest.raises(RuntimeError, match="gmp: .*global_magnitude.*next: 14"):
        sparsifier.algorithm.train_flops(sparsifier)
    counts = {}
    for i in range(10, 30):
        counts[i + 1] = sparsifier.nnz  # masks of step i + 1 (before its update)
        step_once(sparsifier, i)
    flops = sparsifier.algorithm.train_flops(sparsifier)
    head = 2 * sum(SIZES.values()) + 6 * sum(SIZES.values()) + 2 * sum(
        expected_nnz(n, 0.1, 8, 2, 20, 6) for n in SIZES.values())  # steps 1..10 (P = 1)
    assert flops.train_flops == 6 * head + 6 * sum(counts.values())


def test_train_flops_before_a_forward_pass_is_refused():
    sparsifier = build()
    with pytest.raises(RuntimeError, match="first forward pass"):
        sparsifier.algorithm.train_flops(sparsifier)


# ----------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------
def _save(sparsifier) -> dict:
    buffer = io.BytesIO()
    torch.save({"model": sparsifier.model.state_dict(), "opt": sparsifier.optimizer.state_dict(),
                "sp": sparsifier.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("prune", ["magnitude", "global_magnitude"])
def test_checkpoint_round_trip_is_bit_exact(prune):
    options = dict(density=0.1, total_steps=40, start_step=4, end_step=28, update_every=4, prune=prune,
                   optimizer="adamw")
    reference = build(**options)
    for i in range(13):
        step_once(reference, i)
    ckpt = _save(reference)
    for i in range(13, 40):
        step_once(reference, i)
    resumed = build(model_seed=5, **options)
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["opt"])
    resumed.load_state_dict(ckpt["sp"])
    for i in range(13, 40):
        step_once(resumed, i)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for name, layer in reference.layers.items():
        assert torch.equal(layer.mask, resumed.layers[name].mask)
        for key, tensor in reference.optimizer_state(layer).items():
            assert torch.equal(tensor, resumed.optimizer_state(resumed.layers[name])[key])
    assert resumed.step == 40 and reference.nnz == resumed.nnz
    if prune == "global_magnitude":
        assert reference.algorithm.train_flops(reference) == resumed.algorithm.train_flops(resumed)


def test_checkpoint_of_another_schedule_is_refused():
    state = build(start_step=4, end_step=28).state_dict()
    with pytest.raises(CheckpointError, match="gmp: checkpoint schedule"):
        build(start_step=4, end_step=32).load_state_dict(state)
    with pytest.raises(CheckpointError, match="gmp: checkpoint prune"):
        build(start_step=4, end_step=28, prune="global_magnitude").load_state_dict(state)


# ----------------------------------------------------------------------
# options
# ----------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [
    ({"initial_density": 0}, "gmp: initial_density must be a number in"),
    ({"initial_density": 1.5}, "gmp: initial_density"),
    ({"initial_density": float("nan")}, "gmp: initial_density"),
    ({"start": -0.1}, "gmp: start must be"),
    ({"end": 1.2}, "gmp: end must be"),
    ({"start": "0.1"}, "gmp: start must be"),
    ({"start": 0.6, "end": 0.4}, "gmp: start .* after end"),
    ({"start": 0.8}, "gmp: start .* after end"),  # after the default end, 0.75
    ({"start_step": -1}, "gmp: start_step must be an int >= 0"),
    ({"end_step": 2.5}, "gmp: end_step must be an int"),
    ({"start_step": 10, "end_step": 5}, "gmp: start_step .* after end_step"),
    ({"start": 0.1, "start_step": 3}, "gmp: give start .* or start_step"),
    ({"end": 0.5, "end_step": 3}, "gmp: give end .* or end_step"),
    ({"update_every": 0}, "gmp: update_every must be a positive int"),
    ({"update_every": True}, "gmp: update_every"),
    ({"power": 0}, "gmp: power must be a positive number"),
    ({"prune": "global"}, "gmp: unknown prune 'global'"),
    ({"rounding": "nearest"}, "gmp: unknown rounding 'nearest'"),
])
def test_bad_options_name_gmp_and_the_option(options, match):
    with pytest.raises(ConfigurationError, match=match):
        GMPAlgorithm(**options)
    with pytest.raises(ConfigurationError, match=match):
        build(**options)


def test_fractions_need_total_steps_and_steps_do_not():
    with pytest.raises(ConfigurationError, match="gmp: start and end are fractions of total_steps"):
        build(total_steps=None)
    sparsifier = build(total_steps=None, start_step=2, end_step=6, update_every=2)
    train_steps(sparsifier, 6, batch_size=8)
    assert nnz(sparsifier) == {"0": 51, "2": 77, "4": 10}


def test_span_past_the_end_of_the_run_is_refused_without_touching_the_model():
    model = make_tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ConfigurationError, match="gmp: the last pruning step 80 is after the run's last step"):
        sparsecore.Sparsifier(model, opt, algorithm="gmp", density=0.1, total_steps=50, start_step=10, end_step=80)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    sparsecore.Sparsifier(model, opt, algorithm="gmp", density=0.1, total_steps=50, start_step=10,
                          end_step=50).remove()  # set-up left nothing attached


def test_metrics_report_the_current_density():
    sparsifier = build(density=0.1, start_step=1, end_step=1)
    assert sparsifier.algorithm_metrics() == {"density": 1.0}
    train_steps(sparsifier, 1, batch_size=8)
    assert sparsifier.algorithm_metrics() == {"density": round(138 / 1376, 6)}
