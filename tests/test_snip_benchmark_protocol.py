"""benchmarks/snip/reproduce_mnist.py reports the final-epoch error and snip-public's official figure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from sparsecore.data import DataSplit

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "snip" / "reproduce_mnist.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("snip_reproduce_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(n: int, seed: int) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    return DataSplit(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("official", [False, True])
def test_rows_carry_the_final_error_and_the_best_of_the_retained_checkpoints(bench, monkeypatch, official):
    train, test = _split(400, 0), _split(200, 1)
    evaluated = []
    real_test_error = bench.test_error

    def recording_test_error(model, split, batch_size=1000):
        err = real_test_error(model, split, batch_size)
        evaluated.append(err)
        return err

    monkeypatch.setattr(bench, "test_error", recording_test_error)
    argv = ["--epochs", "3", "--checkpoint-interval", "2", "--checkpoints-kept", "3"] + (["--official"] if official
                                                                                          else [])
    args = bench.parse_args(argv)
    torch.set_num_threads(1)
    row = bench.run(args, train, test, density=0.05, seed=0)
    # 4 steps an epoch, 12 in all: checkpoints after steps 2, 4, ..., 12, then the final evaluation
    assert len(evaluated) == 7
    assert row["test_error"] == round(100 * evaluated[-1], 4)
    retained = [1 - e for e in evaluated[3:6]]                  # the last three checkpoints: steps 8, 10, 12
    assert [s for s, _ in row["checkpoints"]] == [8, 10, 12]
    assert [a for _, a in row["checkpoints"]] == [round(a, 6) for a in retained]
    assert row["official_error"] == round(100 * (1 - max(retained)), 4)
    assert row["method"] == ("snip (official protocol)" if official else "snip")


def test_official_protocol_builds_plain_momentum_and_snip_public_options(bench, monkeypatch):
    built = {}
    real = bench.sparsecore.Sparsifier

    def spy(model, optimizer, **kwargs):
        built["nesterov"] = optimizer.param_groups[0]["nesterov"]
        built["options"] = {k: kwargs[k] for k in ("init", "score_init", "prune_biases", "keep_every_layer",
                                                   "score_bias_init") if k in kwargs}
        built["biases kept"] = (sparsifier := real(model, optimizer, **kwargs)).algorithm.result.bias_kept
        return sparsifier

    monkeypatch.setattr(bench.sparsecore, "Sparsifier", spy)
    official = {"init": "variance_scaling", "score_init": "variance_scaling", "prune_biases": True,
                "keep_every_layer": False}
    row = bench.run(bench.parse_args(["--official", "--epochs", "1"]), _split(200, 0), _split(100, 1), 0.05, 0)
    assert built == {"nesterov": False, "options": {**official, "score_bias_init": "zeros"}, "biases kept": 0}
    assert row["method"] == "snip (official protocol)"
    row = bench.run(bench.parse_args(["--official", "--score-bias-init", "vs", "--epochs", "1"]), _split(200, 0),
                    _split(100, 1), 0.05, 0)
    assert built["options"] == {**official, "score_bias_init": "variance_scaling"} and built["biases kept"] > 0
    assert row["method"] == "snip (official protocol, first release)"
    bench.run(bench.parse_args(["--epochs", "1"]), _split(200, 0), _split(100, 1), 0.05, 0)
    assert built == {"nesterov": True, "options": {"score_init": "actual"}, "biases kept": 0}


def test_official_refuses_its_own_choices_given_twice(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--official", "--init", "vs"])
    assert "--official sets the initialisation and the scored draw itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--score-bias-init", "vs"])
    assert "--score-bias-init applies to the scored draw of --official only" in capsys.readouterr().err
