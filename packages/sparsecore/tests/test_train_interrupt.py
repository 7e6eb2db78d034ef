"""Ctrl-C says what the run folder really keeps: nothing, no checkpoint yet, or the checkpoint of epoch N."""

from __future__ import annotations

import pytest
from sparsecore import cli
from sparsecore.train import TrainingInterrupted, job, load_checkpoint

ARGS = ["train", "--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
        "--batch-size", "20", "--density", "0.3", "--epochs", "2", "--threads", "1", "--no-plots", "--quiet"]


def _interrupt_epoch(monkeypatch, number: int) -> None:
    """Ctrl-C during the ``number``-th epoch trained from now on."""
    real, calls = job.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "train_epoch", train_epoch)


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_interrupt_before_the_first_checkpoint_promises_none(tmp_path, monkeypatch, capsys):
    _interrupt_epoch(monkeypatch, 1)
    assert cli.main([*ARGS, "--runs-dir", str(tmp_path)]) == 130
    (run_dir,) = tmp_path.iterdir()
    assert _stderr_lines(capsys) == [(f"sparsecore train: interrupted; no checkpoint was written, so {run_dir} cannot "
                                     f"be resumed (start the run again)")]
    assert not (run_dir / "checkpoint.pt").exists()


def test_interrupt_after_a_checkpoint_names_its_epoch(tmp_path, monkeypatch, capsys):
    _interrupt_epoch(monkeypatch, 2)
    assert cli.main([*ARGS, "--runs-dir", str(tmp_path)]) == 130
    (run_dir,) = tmp_path.iterdir()
    assert _stderr_lines(capsys) == [(f"sparsecore train: interrupted; {run_dir} keeps the checkpoint of epoch 1/2 "
                                     f"(continue with --resume {run_dir})")]
    assert load_checkpoint(run_dir)[0]["epoch"] == 1
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert load_checkpoint(run_dir)[0]["epoch"] == 2


def test_interrupt_of_a_resumed_run_names_the_checkpoint_it_started_from(tmp_path, monkeypatch, capsys):
    assert cli.main([*ARGS, "--epochs", "3", "--stop-after", "1", "--runs-dir", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    _interrupt_epoch(monkeypatch, 1)
    assert cli.main(["train", "--resume", str(run_dir)]) == 130
    assert _stderr_lines(capsys) == [(f"sparsecore train: interrupted; {run_dir} keeps the checkpoint of epoch 1/3 "
                                     f"(continue with --resume {run_dir})")]


def test_interrupt_while_loading_data_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "_load_data", interrupted)
    assert cli.main([*ARGS, "--runs-dir", str(tmp_path / "runs")]) == 130
    assert _stderr_lines(capsys) == [("sparsecore train: interrupted before the run folder was created; nothing was "
                                     "written")]
    assert list(tmp_path.iterdir()) == []


def test_the_interrupt_is_a_keyboard_interrupt_with_the_facts(tmp_path, monkeypatch):
    _interrupt_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt) as exc:
        job.run_training(runs_dir=str(tmp_path), algorithm="set", dataset="random", limit_train=40, limit_test=20,
                         batch_size=20, density=0.3, epochs=2, threads=1, quiet=True, plots=False)
    assert isinstance(exc.value, TrainingInterrupted)
    assert (exc.value.run_dir.parent, exc.value.checkpoint_epoch, exc.value.epochs) == (tmp_path, 1, 2)
