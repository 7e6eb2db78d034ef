"""The TensorBoard observer writes exactly the scalars and histograms it documents; the event files are read back."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import sparsecore
from sparsecore import cli
from sparsecore.plugins import registry
from sparsecore.train import TrainConfig, resume_training, run_training
from sparsecore_tensorboard import DEFAULT_LOG_DIR, TensorBoardLogger
from sparsecore_tensorboard.plugin import sparsecore_register_plugins

RUN = {"density": 0.25, "total_steps": 8, "update_every": 2}  # set: updates after steps 2, 4 and 6
TRAIN = dict(algorithm="set", dataset="random", limit_train=40, limit_test=20, batch_size=20, density=0.3,
             epochs=3, threads=1, quiet=True, plots=False)


def read_events(log_dir) -> EventAccumulator:
    """Every event of ``log_dir`` (no sampling), as TensorBoard reads them."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def f32(value: float) -> float:
    """``value`` as TensorBoard stores it (float32)."""
    return float(np.float32(value))


class WeightSums:
    """Records sum and max of ``|w|`` over every layer's active weights at each topology update."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[float, float, int]] = {}

    @sparsecore.hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        for name, layer in sparsifier.layers.items():
            active = layer.weight.detach()[layer.mask].abs().double()
            self.seen[(name, report.step)] = (float(active.sum()), float(active.max()), active.numel())


@pytest.fixture
def by_name():
    """``tensorboard`` registered for one test, whatever the autoload setting."""
    registry.load()
    saved = registry.plugins.pop("tensorboard", None)
    registry.register_plugin("tensorboard", TensorBoardLogger, distribution="<test>")
    yield
    registry.plugins.pop("tensorboard", None)
    if saved is not None:
        registry.plugins["tensorboard"] = saved


def test_the_entry_point_registers_the_plugin() -> None:
    (entry_point,) = [ep for ep in entry_points(group="sparsecore") if ep.name == "tensorboard"]
    assert entry_point.value == "sparsecore_tensorboard.plugin"
    registered: dict = {}
    sparsecore_register_plugins(register=lambda name, factory: registered.update({name: factory}))
    assert registered == {"tensorboard": TensorBoardLogger}


def test_hand_loop_writes_topology_counts_histograms_and_epoch_density(sparsifier_factory, train_steps,
                                                                        tmp_path) -> None:
    logger, sums = TensorBoardLogger(log_dir=tmp_path / "tb"), WeightSums()
    sparsifier = sparsifier_factory("set", plugins=[logger, sums], **RUN)
    train_steps(sparsifier, 5)
    sparsifier.epoch_end(0)
    train_steps(sparsifier, 3, seed=1)
    logger.close()

    events = read_events(tmp_path / "tb")
    names = list(sparsifier.layers)
    assert sorted(events.Tags()["scalars"]) == sorted(
        ["density/overall", "topology/pruned", "topology/grown", "topology/density"]
        + [f"density_by_layer/{n}" for n in names] + [f"pruned_by_layer/{n}" for n in names]
        + [f"grown_by_layer/{n}" for n in names])
    assert sorted(events.Tags()["histograms"]) == sorted(f"weights_abs/{n}" for n in names)

    history = sparsifier.history
    assert [r.step for r in history] == [2, 4, 6]
    assert scalars(events, "topology/pruned") == [(r.step, sum(u.pruned for u in r.layers.values()))
                                                  for r in history]
    assert scalars(events, "topology/grown") == scalars(events, "topology/pruned")  # set regrows what it prunes
    assert all(value > 0 for _, value in scalars(events, "topology/pruned"))
    assert scalars(events, "topology/density") == [(r.step, f32(r.nnz / 1376)) for r in history]
    for name in names:
        assert scalars(events, f"pruned_by_layer/{name}") == [(r.step, r.layers[name].pruned) for r in history]
        assert scalars(events, f"grown_by_layer/{name}") == [(r.step, r.layers[name].grown) for r in history]
        assert scalars(events, f"density_by_layer/{name}") == [(5, f32(sparsifier.layers[name].density))]
        for event in events.Histograms(f"weights_abs/{name}"):
            total, largest, count = sums.seen[(name, event.step)]
            assert event.histogram_value.num == count == history[event.step // 2 - 1].layers[name].nnz
            assert event.histogram_value.sum == pytest.approx(total, rel=1e-6)
            assert event.histogram_value.max == pytest.approx(largest, rel=1e-6)
        assert [e.step for e in events.Histograms(f"weights_abs/{name}")] == [2, 4, 6]
    assert scalars(events, "density/overall") == [(5, f32(sparsifier.nnz / 1376))]


def test_options_turn_off_histograms_and_per_layer_scalars(sparsifier_factory, train_steps, tmp_path) -> None:
    logger = TensorBoardLogger(log_dir=str(tmp_path), histograms=False, per_layer=False)
    sparsifier = sparsifier_factory("set", plugins=[logger], **RUN)
    train_steps(sparsifier, 8)
    sparsifier.epoch_end(0)
    logger.close()
    events = read_events(tmp_path)
    assert sorted(events.Tags()["scalars"]) == ["density/overall", "topology/density", "topology/grown",
                                                "topology/pruned"]
    assert events.Tags()["histograms"] == []
    assert [step for step, _ in scalars(events, "density/overall")] == [8]


def test_by_name_with_options_and_the_default_directory(by_name, sparsifier_factory, train_steps, tmp_path,
                                                        monkeypatch) -> None:
    sparsifier = sparsifier_factory("set", plugins=[("tensorboard", {"per_layer": False})], **RUN)
    (logger,) = sparsifier.plugins
    assert isinstance(logger, TensorBoardLogger) and logger.per_layer is False and logger.log_dir is None
    monkeypatch.chdir(tmp_path)
    train_steps(sparsifier, 3)
    logger.close()
    assert logger.log_dir == tmp_path.joinpath(DEFAULT_LOG_DIR).relative_to(tmp_path)
    assert scalars(read_events(tmp_path / DEFAULT_LOG_DIR), "topology/pruned")[0][0] == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"log_dir": ""}, "plugin 'tensorboard': log_dir must be a directory name or None, got ''"),
    ({"log_dir": 3}, "plugin 'tensorboard': log_dir must be a directory name or None, got 3"),
    ({"histograms": "no"}, "plugin 'tensorboard': histograms must be true or false, got 'no'"),
    ({"per_layer": 1}, "plugin 'tensorboard': per_layer must be true or false, got 1"),
])
def test_bad_options_are_refused_naming_plugin_and_option(options, message) -> None:
    with pytest.raises(sparsecore.ConfigurationError) as exc:
        TensorBoardLogger(**options)
    assert str(exc.value) == message


def test_sparsecore_train_logs_the_run_into_its_folder(by_name, tmp_path, capsys) -> None:
    code = cli.main(["train", "--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test",
                     "20", "--batch-size", "20", "--density", "0.3", "--epochs", "2", "--threads", "1", "--quiet",
                     "--no-plots", "--runs-dir", str(tmp_path), "--plugins", "tensorboard"])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = read_events(run_dir / "tensorboard")
    for tag, key in [("loss/train", "train_loss"), ("loss/test", "test_loss"), ("accuracy/train", "train_acc"),
                     ("accuracy/test", "test_acc"), ("lr", "lr"), ("density/overall", "density"),
                     ("flops/run_vs_dense", "run_train_flops_ratio")]:
        assert scalars(events, tag) == [(r["step"], f32(r[key])) for r in records], tag
    for name, density in records[-1]["layer_densities"].items():
        assert scalars(events, f"density_by_layer/{name}")[-1] == (4, f32(density))
    assert not [t for t in events.Tags()["scalars"] if t.startswith("metrics/")]  # set has no metrics of its own


def test_log_dir_option_from_the_command_line(by_name, tmp_path) -> None:
    log_dir = tmp_path / "elsewhere"
    code = cli.main(["train", "--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test",
                     "20", "--batch-size", "20", "--epochs", "1", "--threads", "1", "--quiet", "--no-plots",
                     "--runs-dir", str(tmp_path / "runs"), "--plugins", "tensorboard",
                     "--plugin-option", f"tensorboard.log_dir={log_dir}"])
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "tensorboard").exists()
    assert [step for step, _ in scalars(read_events(log_dir), "loss/train")] == [2]


def test_resumed_run_logs_what_an_uninterrupted_run_logs(by_name, tmp_path) -> None:
    whole = run_training(TrainConfig(runs_dir=str(tmp_path / "whole"), plugins=["tensorboard"], **TRAIN))
    stopped = run_training(TrainConfig(runs_dir=str(tmp_path / "split"), plugins=["tensorboard"], **TRAIN),
                           stop_after=2)
    # the interrupted process had gone on logging part of epoch 3 before it died
    with SummaryWriter(str(stopped.run_dir / "tensorboard")) as stray:
        stray.add_scalar("topology/pruned", 12345.0, 5)
        stray.add_scalar("loss/train", 99.0, 6)
    resume_training(stopped.run_dir)

    expected, resumed = read_events(whole.run_dir / "tensorboard"), read_events(stopped.run_dir / "tensorboard")
    assert sorted(resumed.Tags()["scalars"]) == sorted(expected.Tags()["scalars"])
    for tag in expected.Tags()["scalars"]:
        assert scalars(resumed, tag) == scalars(expected, tag), tag
    assert [s for s, _ in scalars(resumed, "loss/train")] == [2, 4, 6]


def test_only_rank_zero_writes(sparsifier_factory, train_steps, tmp_path, monkeypatch) -> None:
    sparsifier = sparsifier_factory("set", **RUN)
    train_steps(sparsifier, 2)
    logger = TensorBoardLogger(log_dir=tmp_path / "tb")
    monkeypatch.setattr(sparsecore.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    logger.on_topology_update(sparsifier, sparsifier.history[-1])
    logger.on_epoch_end(sparsifier)
    assert logger.writer is None and not (tmp_path / "tb").exists()
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    logger.on_epoch_end(sparsifier)
    logger.close()
    assert scalars(read_events(tmp_path / "tb"), "density/overall") == [(2, f32(sparsifier.nnz / 1376))]
