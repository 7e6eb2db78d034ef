"""Non-finite numbers: refused as flags; a loss or weights that become non-finite stop the run, keeping its checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import sparsecore
import torch
from sparsecore import cli
from sparsecore.plugins import registry
from sparsecore.train import TrainConfig, TrainingDivergedError, load_checkpoint, run_training, train_epoch

TINY = {"algorithm": "static", "dataset": "random", "limit_train": 40, "limit_test": 20, "batch_size": 20,
        "density": 0.3, "threads": 1, "quiet": True, "plots": False}


@pytest.mark.parametrize(("flag", "value"), [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-inf"),
                                             ("--weight-decay", "nan"), ("--momentum", "inf"),
                                             ("--lr-gamma", "nan"), ("--density", "nan"), ("--density", "inf")])
def test_non_finite_flags_are_refused_when_parsing(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", f"{flag}={value}"])  # the = form: argparse reads a bare -inf as an option
    assert exc.value.code == 2
    assert f"sparsecore train: error: argument {flag}: expected a finite number, got '{value}'" in \
        capsys.readouterr().err.splitlines()


def test_a_float_flag_that_is_no_number_is_named(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--lr", "fast"])
    assert "sparsecore train: error: argument --lr: expected a number, got 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr", math.inf, "--lr must be a finite number, got inf"),
    ("weight_decay", math.nan, "--weight-decay must be a finite number, got nan"),
    ("momentum", -math.inf, "--momentum must be a finite number, got -inf"),
    ("lr_gamma", math.nan, "--lr-gamma must be a finite number, got nan"),
    ("lr", "0.1", "--lr must be a finite number, got '0.1'"),
    ("lr", 10**400, "--lr must be a finite number"),
    ("seed", -1, "--seed must be an integer from 0 to 2**63 - 2, got -1"),
    ("seed", 2**64, "--seed must be an integer from 0 to 2**63 - 2"),
])
def test_config_refuses_non_finite_numbers(field, value, message):
    with pytest.raises(sparsecore.ConfigurationError) as exc:
        TrainConfig(**{field: value}).validate()
    assert str(exc.value).startswith(message)


def test_huge_seed_on_the_command_line_is_one_line(capsys):
    assert cli.main(["train", "--seed", str(2**70), "--quiet"]) == 2
    assert capsys.readouterr().err == f"sparsecore train: error: --seed must be an integer from 0 to 2**63 - 2, got {2**70}\n"


class _PoisonAfter:
    """A plugin that makes every weight nan after optimizer step ``after`` (a blow-up in mid-run)."""

    def __init__(self, after: int = 2) -> None:
        self.after = after

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step) -> None:
        if step == self.after + 1:
            with torch.no_grad():
                for param in sparsifier.model.parameters():
                    param.fill_(math.nan)


@pytest.fixture
def poison():
    registry.register_plugin("poison-after", _PoisonAfter)
    yield "poison-after"
    registry.unregister("poison-after")


def test_divergence_in_mid_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, poison):
    with pytest.raises(TrainingDivergedError) as exc:
        run_training(TrainConfig(epochs=3, runs_dir=str(tmp_path), plugins=[poison], **TINY))
    (run_dir,) = tmp_path.iterdir()
    assert str(exc.value) == (f"training diverged in epoch 2/3: the training loss became nan within the first 2 steps "
                              f"of the epoch; {run_dir} keeps the checkpoint of epoch 1/3 (a lower --lr usually helps)")
    assert (exc.value.epoch, exc.value.checkpoint_epoch) == (2, 1)
    state, _ = load_checkpoint(run_dir)
    assert state["epoch"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and math.isfinite(records[0]["train_loss"])
    assert not (run_dir / "summary.md").exists()


def test_divergence_through_the_cli_is_one_line_and_non_zero(tmp_path, capsys):
    code = cli.main(["train", "--algorithm", "static", "--dataset", "random", "--limit-train", "40", "--limit-test",
                     "20", "--batch-size", "20", "--epochs", "2", "--threads", "1", "--no-plots", "--quiet",
                     "--lr", "1e30", "--runs-dir", str(tmp_path)])
    (run_dir,) = tmp_path.iterdir()
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        ("sparsecore train: error: training diverged in epoch 1/2: the training loss became nan within the first 2 "
        "steps of the epoch; no checkpoint was written (a lower --lr usually helps)")]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.jsonl"]


def test_weights_that_blow_up_on_the_last_step_are_caught_after_the_epoch(tmp_path):
    registry.register_plugin("poison-last", lambda: _PoisonAfter(after=1))
    try:
        with pytest.raises(TrainingDivergedError, match="diverged in epoch 1/1: the weights of fc1.weight are no "
                                                         "longer finite; no checkpoint was written"):
            run_training(TrainConfig(epochs=1, runs_dir=str(tmp_path), plugins=["poison-last"], **TINY))
    finally:
        registry.unregister("poison-last")


def test_train_epoch_raises_on_a_non_finite_loss():
    split = sparsecore.data.random_dataset((4,), 3, n_train=30, n_test=0).train
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(math.inf)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDivergedError, match="the training loss became nan within the first 1 steps"):
        train_epoch(model, optimizer, None, split, 10, torch.Generator().manual_seed(0))
