"""The harness's hooks: ``on_run_start`` with the run folder, ``on_epoch_metrics`` with each metrics.jsonl record."""

from __future__ import annotations

import json

import pytest

import sparsecore
from sparsecore.plugins import registry
from sparsecore.train import TrainConfig, resume_training, run_training

TINY = dict(algorithm="set", dataset="random", limit_train=40, limit_test=20, batch_size=20, density=0.3,
            epochs=3, threads=1, quiet=True, plots=False)


class Recorder:
    """Records the harness hooks it receives, and the step each came at."""

    calls: list[tuple] = []

    @sparsecore.hookimpl
    def on_run_start(self, sparsifier, run_dir, start_epoch) -> None:
        self.calls.append(("start", run_dir, start_epoch, sparsifier.step))

    @sparsecore.hookimpl
    def on_epoch_end(self, epoch) -> None:
        self.calls.append(("epoch_end", epoch))

    @sparsecore.hookimpl
    def on_epoch_metrics(self, sparsifier, epoch, metrics) -> None:
        self.calls.append(("metrics", epoch, metrics, sparsifier.step))
        metrics["train_loss"] = -1.0  # a copy: the run's record stays as it was


@pytest.fixture
def recorder():
    registry.load()
    registry.register_plugin("recorder", Recorder, distribution="<test>")
    Recorder.calls = []
    yield Recorder.calls
    registry.unregister("recorder")


def test_run_start_then_one_metrics_call_per_epoch_with_the_recorded_record(tmp_path, recorder):
    result = run_training(TrainConfig(runs_dir=str(tmp_path), plugins=["recorder"], **TINY))
    assert recorder[0] == ("start", result.run_dir, 0, 0)
    assert [c[:2] for c in recorder[1:]] == [("epoch_end", 0), ("metrics", 0), ("epoch_end", 1), ("metrics", 1),
                                             ("epoch_end", 2), ("metrics", 2)]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics_calls = [c for c in recorder if c[0] == "metrics"]
    for (_, _, metrics, step), record in zip(metrics_calls, records, strict=True):
        assert step == record["step"] == 2 * record["epoch"]
        assert {**metrics, "train_loss": record["train_loss"]} == record
    assert [m["train_loss"] for m in result.metrics] == [r["train_loss"] for r in records]
    assert all(r["train_loss"] > 0 for r in records)


def test_resume_calls_run_start_with_the_checkpoint_epoch(tmp_path, recorder):
    stopped = run_training(TrainConfig(runs_dir=str(tmp_path), plugins=["recorder"], **TINY), stop_after=2)
    recorder.clear()
    resume_training(stopped.run_dir)
    assert recorder[0] == ("start", stopped.run_dir, 2, 4)
    assert [c[:2] for c in recorder[1:]] == [("epoch_end", 2), ("metrics", 2)]

