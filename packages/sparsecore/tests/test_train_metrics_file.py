"""metrics.jsonl: a line cut short by a dying process is dropped with a warning; other damage is named."""

from __future__ import annotations

import json

import pytest
from sparsecore import cli
from sparsecore.train import RunFolderError, TrainConfig, resume_training, run_training, rundir


@pytest.fixture
def stopped(tmp_path):
    """A 3-epoch run stopped after epoch 2."""
    config = TrainConfig(algorithm="set", dataset="random", limit_train=40, limit_test=20, batch_size=20, density=0.3,
                         epochs=3, threads=1, quiet=True, plots=False, runs_dir=str(tmp_path))
    return run_training(config, stop_after=2)


def test_partial_last_line_is_dropped_with_a_warning_that_names_the_file(stopped, capsys):
    path = stopped.run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[1][:40])  # the process died writing a third line
    result = resume_training(stopped.run_dir, quiet=False, plots=False)
    assert result.epochs_done == 3
    err = capsys.readouterr().err.splitlines()
    assert f"warning: dropped the incomplete last line 3 of {path} (the process writing it was stopped)" in err
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert path.read_text().startswith("".join(lines))


def test_read_metrics_drops_an_unreadable_last_line(stopped):
    path = stopped.run_dir / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text + '{"epoch": 3, "train_lo\n')
    warnings = []
    assert [r["epoch"] for r in rundir.read_metrics(stopped.run_dir, warn=warnings.append)] == [1, 2]
    assert warnings == [f"warning: dropped the unreadable last line 3 of {path} (the process writing it was stopped)"]
    with pytest.warns(UserWarning, match="dropped the unreadable last line 3 of"):
        assert len(rundir.read_metrics(stopped.run_dir)) == 2
    assert path.read_text() == text + '{"epoch": 3, "train_lo\n'  # reading changes nothing


def test_corrupt_line_before_the_last_is_an_error_naming_file_and_line(stopped, capsys):
    path = stopped.run_dir / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    damaged = first[:30] + "\n" + second + "\n"
    path.write_text(damaged)
    code = cli.main(["train", "--resume", str(stopped.run_dir), "--quiet"])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sparsecore train: error: {path} line 1 is not a JSON record: ")
    assert line.endswith("; repair or delete that line")
    assert path.read_text() == damaged  # left as it was, for the user to repair


def test_record_that_is_not_an_epoch_object_is_an_error(stopped):
    path = stopped.run_dir / "metrics.jsonl"
    second = path.read_text().splitlines()[1]
    path.write_text("[1, 2]\n" + second + "\n")
    with pytest.raises(RunFolderError, match=f"{path} line 1 is not an epoch record"):
        rundir.read_metrics(stopped.run_dir)


def test_resume_says_when_metrics_are_missing(stopped, capsys):
    (stopped.run_dir / "metrics.jsonl").unlink()
    result = resume_training(stopped.run_dir, quiet=False, plots=False)
    assert [m["epoch"] for m in result.metrics] == [3]
    assert (f"note: {stopped.run_dir / 'metrics.jsonl'} has records of 0 of the 2 epochs in the checkpoint; "
            f"the summary and plots show only those") in capsys.readouterr().err
