"""``Sparsifier.run_flops``: training FLOPs summed over a run's steps, against a step-by-step reference."""

from __future__ import annotations

import pytest
import sparsecore
import torch
from core_helpers import convnet
from sparsecore.reporting import FlopsLedger, RunFlops
from torch import nn


def _batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def _train_with_reference(sparsifier: sparsecore.Sparsifier, model: nn.Module, optimizer, steps: int,
                          start: int = 0) -> tuple[int, int]:
    """Train ``steps`` steps; the reference sums ``report()``'s per-step cost with the masks of each step."""
    train = dense = 0
    for i, (x, y) in enumerate(_batches(start + steps)):
        if i < start:
            continue
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        report = sparsifier.report()  # the masks this step trains with
        train += report.train_flops
        dense += report.dense_train_flops
        optimizer.step()
    return train, dense


def _engine(algorithm: str, **options):
    model = convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, seed=0, **options)
    return model, optimizer, sparsifier


@pytest.mark.parametrize(("algorithm", "options"), [
    ("set", {"density": 0.3, "total_steps": 30, "update_every": 5}),          # masked gradients, moving masks
    ("sparse-momentum", {"density": 0.3, "total_steps": 30, "update_every": 5}),  # dense weight gradients
    ("dsd", {"density": 0.5, "total_steps": 30, "dense_first_layer": False}),  # dense -> sparse -> dense phases
])
def test_the_run_total_equals_the_sum_of_each_steps_report(algorithm, options):
    model, optimizer, sparsifier = _engine(algorithm, **options)
    train, dense = _train_with_reference(sparsifier, model, optimizer, 30)
    assert len(sparsifier.history) >= 2  # the masks changed during the run
    flops = sparsifier.run_flops()
    assert flops == RunFlops(steps=30, train_flops=train, dense_train_flops=dense)
    assert flops.ratio == pytest.approx(train / dense)
    assert 0 < flops.ratio < 1


def test_a_dsd_run_is_charged_its_dense_phases():
    model, optimizer, sparsifier = _engine("dsd", density=0.5, total_steps=30, dense_first_layer=False)
    _train_with_reference(sparsifier, model, optimizer, 30)
    per_step_now = sparsifier.report().train_flops_ratio  # back to dense at the end
    assert per_step_now == 1.0
    assert sparsifier.run_flops().ratio < 1.0  # the sparse phase made the run cheaper than dense


def test_rigl_pays_the_dense_gradient_of_its_updates_and_nothing_after_the_last():
    model, optimizer, sparsifier = _engine("rigl", density=0.3, total_steps=40, update_every=10, update_end=0.5)
    _train_with_reference(sparsifier, model, optimizer, 40)
    update_steps = [r.step for r in sparsifier.history if r.reason == "update"]
    assert update_steps == [10, 20]  # updates stop at 0.5 * 40 (the schedule's own rule)
    # RigL keeps every layer's count: 6 nnz P per step, plus 2 numel P / 10 amortised over the 20 steps up to
    # the last update
    base = sum(6 * layer.nnz * layer.output_positions for layer in sparsifier.layers.values())
    amortised = sum((2 * layer.capacity * layer.output_positions) // 10 for layer in sparsifier.layers.values())
    dense = sum(6 * layer.capacity * layer.output_positions for layer in sparsifier.layers.values())
    assert sparsifier.run_flops() == RunFlops(steps=40, train_flops=40 * base + 20 * amortised,
                                              dense_train_flops=40 * dense)
    assert sparsifier.report().train_flops == base  # the per-step report has no update left to pay for


def test_a_resumed_engine_counts_the_whole_run():
    model, optimizer, sparsifier = _engine("set", density=0.3, total_steps=30, update_every=5)
    _train_with_reference(sparsifier, model, optimizer, 12)
    state = sparsifier.state_dict()
    straight_model, straight_optimizer, straight = _engine("set", density=0.3, total_steps=30, update_every=5)
    _train_with_reference(straight, straight_model, straight_optimizer, 30)

    model2 = convnet()
    model2.load_state_dict(model.state_dict())
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    optimizer2.load_state_dict(optimizer.state_dict())
    resumed = sparsecore.Sparsifier.resume(model2, optimizer2, state, algorithm="set", density=0.3, total_steps=30,
                                           update_every=5, seed=0)
    _train_with_reference(resumed, model2, optimizer2, 18, start=12)
    assert resumed.run_flops() == straight.run_flops()


def test_a_state_saved_without_the_count_leaves_the_total_unknown():
    model, optimizer, sparsifier = _engine("set", density=0.3, total_steps=30, update_every=5)
    _train_with_reference(sparsifier, model, optimizer, 6)
    state = sparsifier.state_dict()
    del state["run_flops"]
    sparsifier.load_state_dict(state)
    assert sparsifier.run_flops() is None
    _train_with_reference(sparsifier, model, optimizer, 6, start=6)
    assert sparsifier.run_flops() is None


def test_no_steps_cost_nothing_and_an_unknown_segment_makes_the_total_unknown():
    ledger = FlopsLedger()
    assert ledger.total(0, lambda: pytest.fail("no steps: the cost is not asked for")) == RunFlops(0, 0, 0)
    assert RunFlops(0, 0, 0).ratio is None
    ledger.close(4, lambda: (10, 30))
    assert ledger.total(6, lambda: (20, 30)) == RunFlops(6, 4 * 10 + 2 * 20, 6 * 30)
    ledger.close(6, lambda: None)  # e.g. a sparse layer that never ran forward
    assert ledger.total(9, lambda: (1, 1)) is None


def test_the_harness_records_the_run_ratio_each_epoch_and_in_the_summary(tmp_path):
    from sparsecore.train import TrainConfig, run_training

    tiny = {"model": "lenet-5-caffe", "dataset": "random", "limit_train": 100, "limit_test": 50, "batch_size": 50,
            "epochs": 3, "threads": 1, "quiet": True, "plots": False, "runs_dir": str(tmp_path)}
    result = run_training(TrainConfig(algorithm="dsd", density=0.5, **tiny))
    ratios = [m["run_train_flops_ratio"] for m in result.metrics]
    assert ratios[0] == 1.0  # DSD's first phase is dense
    assert ratios[-1] == result.run_train_flops_ratio == result.sparsifier.run_flops().ratio < 1.0
    summary = (result.run_dir / "summary.md").read_text()
    assert (f"training FLOPs (sparse layers): {result.train_flops_ratio:.3f}x dense per step now, "
            f"{result.run_train_flops_ratio:.3f}x dense over the run") in summary
    report = result.sparsifier.report()  # DSD ends dense: inference costs what dense does
    assert result.forward_flops_ratio == report.forward_flops_ratio == 1.0
    assert f"inference FLOPs (sparse layers): {result.forward_flops_ratio:.3f}x dense" in summary
    dense = run_training(TrainConfig(dense=True, **tiny))
    assert dense.run_train_flops_ratio == 1.0 and [m["run_train_flops_ratio"] for m in dense.metrics] == [1.0] * 3


def test_the_forward_flops_ratio_counts_each_layers_active_weights_times_its_output_positions():
    model, optimizer, sparsifier = _engine("set", density=0.3, total_steps=30, update_every=5)
    _train_with_reference(sparsifier, model, optimizer, 3)
    layers = sparsifier.layers.values()
    sparse = sum(2 * layer.nnz * layer.output_positions for layer in layers)
    dense = sum(2 * layer.capacity * layer.output_positions for layer in layers)
    report = sparsifier.report()
    assert report.forward_flops == sparse
    assert report.forward_flops_ratio == sparse / dense
    assert report.as_dict()["forward_flops_ratio"] == sparse / dense
