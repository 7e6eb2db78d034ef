"""A run killed after its last checkpoint but before summary.md is completed by --resume."""

from __future__ import annotations

import pytest
from sparsecore import cli
from sparsecore.train import TrainConfig, run_training, rundir

TINY = {"algorithm": "set", "dataset": "random", "limit_train": 40, "limit_test": 20, "batch_size": 20,
        "density": 0.3, "threads": 1, "quiet": True}


def _killed_before_summary(monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "write_summary", killed)


def _snapshot(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("checkpoint.pt", "checkpoint.pt.sha256", "metrics.jsonl")}


def test_resume_writes_the_missing_summary_and_plots(tmp_path, monkeypatch, capsys):
    _killed_before_summary(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(epochs=2, runs_dir=str(tmp_path), plots=False, **TINY))
    monkeypatch.undo()
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / "summary.md").exists()
    before = _snapshot(run_dir)

    code = cli.main(["train", "--resume", str(run_dir)])  # quiet and without plots, as the checkpoint's config says
    assert code == 0
    assert capsys.readouterr().out == ""
    summary = (run_dir / "summary.md").read_text()
    assert "- epochs: 2/2\n" in summary and "| 2 | " in summary
    assert _snapshot(run_dir) == before  # nothing retrained

    code = cli.main(["train", "--resume", str(run_dir), "--quiet"])
    assert code == 2
    assert "has already trained 2/2 epochs" in capsys.readouterr().err


def test_resume_writes_the_plots_too(tmp_path, monkeypatch, capsys):
    _killed_before_summary(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(epochs=1, runs_dir=str(tmp_path), **{**TINY, "quiet": False}))
    monkeypatch.undo()
    (run_dir,) = tmp_path.iterdir()
    for png in run_dir.glob("*.png"):
        png.unlink()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert (f"the run in {run_dir} trained all 1 epochs but stopped before writing its summary; writing it now"
            in capsys.readouterr().out)
    assert sorted(p.name for p in run_dir.glob("*.png")) == ["curves.png", "density.png"]
    assert "![curves.png](curves.png)" in (run_dir / "summary.md").read_text()


def test_a_stopped_runs_summary_goes_once_training_continues(tmp_path, monkeypatch):
    stopped = run_training(TrainConfig(epochs=2, runs_dir=str(tmp_path), plots=False, **TINY), stop_after=1)
    assert "- epochs: 1/2 (stopped;" in (stopped.run_dir / "summary.md").read_text()
    _killed_before_summary(monkeypatch)
    assert cli.main(["train", "--resume", str(stopped.run_dir)]) == 130
    monkeypatch.undo()
    assert not (stopped.run_dir / "summary.md").exists()  # it described epoch 1; the checkpoint holds epoch 2
    assert cli.main(["train", "--resume", str(stopped.run_dir)]) == 0
    assert "- epochs: 2/2\n" in (stopped.run_dir / "summary.md").read_text()
