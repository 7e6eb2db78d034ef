"""``sparsecore train --resume RUN --stop-after N``: a resumed run can stop early again and still resume exactly."""

from __future__ import annotations

import shutil

import torch
from sparsecore import cli
from sparsecore.train import TrainConfig, resume_training, run_training

TINY = {"algorithm": "set", "dataset": "random", "limit_train": 40, "limit_test": 20, "batch_size": 20,
        "density": 0.3, "threads": 1, "quiet": True, "plots": False}


def test_resume_with_stop_after_trains_that_many_more_epochs_then_resumes_to_the_straight_run(tmp_path):
    config = TrainConfig(epochs=4, runs_dir=str(tmp_path / "a"), **TINY)
    stopped = run_training(config, stop_after=1)
    again = resume_training(stopped.run_dir, stop_after=2)
    assert (again.epochs_done, again.completed) == (3, False)
    finished = resume_training(stopped.run_dir)
    straight = run_training(TrainConfig(epochs=4, runs_dir=str(tmp_path / "b"), **TINY))
    assert finished.completed and finished.epochs_done == 4
    for (name, a), (_, b) in zip(finished.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_command_line_accepts_stop_after_with_resume(tmp_path, capsys):
    stopped = run_training(TrainConfig(epochs=3, runs_dir=str(tmp_path), **TINY), stop_after=1)
    run_dir = shutil.copytree(stopped.run_dir, tmp_path / "copy")
    assert cli.main(["train", "--resume", str(run_dir), "--stop-after", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert cli.main(["train", "--resume", str(run_dir), "--quiet"]) == 0
