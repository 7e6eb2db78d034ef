"""checkpoint.pt carries a sha256 beside it: corruption, truncation and emptiness are refused; saves are atomic."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil

import pytest
import sparsecore
import torch
from sparsecore import cli
from sparsecore.train import RunFolderError, TrainConfig, load_checkpoint, resume_training, run_training
from sparsecore.train import checkpoint as checkpoint_module

TINY = {"algorithm": "set", "dataset": "random", "limit_train": 40, "limit_test": 20, "batch_size": 20,
        "density": 0.3, "threads": 1, "quiet": True, "plots": False}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 2-epoch run stopped after epoch 1 (a resumable run folder to copy and damage)."""
    root = tmp_path_factory.mktemp("stopped")
    return run_training(TrainConfig(epochs=2, runs_dir=str(root), **TINY), stop_after=1).run_dir


@pytest.fixture
def run_dir(stopped_run, tmp_path):
    return shutil.copytree(stopped_run, tmp_path / "run")


def _resume_cli(run_dir, capsys) -> tuple[int, list[str]]:
    code = cli.main(["train", "--resume", str(run_dir), "--quiet"])
    return code, capsys.readouterr().err.splitlines()


def test_checkpoint_has_its_sha256_beside_it_and_loads_weights_only(run_dir):
    file = run_dir / "checkpoint.pt"
    line = (run_dir / "checkpoint.pt.sha256").read_text()
    assert line == f"{hashlib.sha256(file.read_bytes()).hexdigest()}  checkpoint.pt\n"  # sha256sum -c format
    assert torch.load(file, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256", "config.json",
                                                          "metrics.jsonl", "summary.md"]


def test_corrupted_bytes_in_the_middle_are_refused(run_dir, capsys):
    file = run_dir / "checkpoint.pt"
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    file.write_bytes(bytes(data))
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(f"sparsecore train: error: checkpoint {file} is corrupted or truncated ({len(data)} bytes)")
    assert "recorded in checkpoint.pt.sha256" in err[0]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained, nothing rewritten


def test_truncated_checkpoint_is_refused(run_dir, capsys):
    file = run_dir / "checkpoint.pt"
    file.write_bytes(file.read_bytes()[:1000])
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2 and len(err) == 1
    assert f"checkpoint {file} is corrupted or truncated (1000 bytes)" in err[0]


def test_empty_checkpoint_gives_a_reason(run_dir, capsys):
    (run_dir / "checkpoint.pt").write_bytes(b"")
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2
    assert err == [(f"sparsecore train: error: checkpoint {run_dir / 'checkpoint.pt'} is empty (0 bytes): "
                   f"it was never written completely")]


def test_a_digest_file_that_holds_no_digest_is_named(run_dir, capsys):
    (run_dir / "checkpoint.pt.sha256").write_text("garbage\n")
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2 and len(err) == 1
    assert f"{run_dir / 'checkpoint.pt.sha256'} does not hold a sha256" in err[0]


def test_checkpoint_without_digest_loads_with_a_warning(run_dir):
    (run_dir / "checkpoint.pt.sha256").unlink()
    with pytest.warns(UserWarning, match="has no checkpoint.pt.sha256 .* loaded without verifying its integrity"):
        state, folder = load_checkpoint(run_dir)
    assert (state["epoch"], folder) == (1, run_dir)
    result = resume_training(run_dir)  # resumable; the new checkpoint gets a digest
    assert result.epochs_done == 2 and (run_dir / "checkpoint.pt.sha256").is_file()
    assert load_checkpoint(run_dir)[0]["epoch"] == 2


def test_run_folder_without_checkpoint_says_why(run_dir, capsys):
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        (run_dir / name).unlink()
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2
    assert err == [(f"sparsecore train: error: {run_dir} has no checkpoint.pt, so there is nothing to resume (a run "
                    f"stopped before its first epoch finished has none; start it again)")]


def test_foreign_pickle_is_one_line(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a zip file at all")
    code, err = _resume_cli(tmp_path, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"sparsecore train: error: cannot read checkpoint {tmp_path / 'checkpoint.pt'}: ")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(run_dir, monkeypatch, capsys):
    before = {name: (run_dir / name).read_bytes() for name in ("checkpoint.pt", "checkpoint.pt.sha256")}

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    code = cli.main(["train", "--resume", str(run_dir), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [(f"sparsecore train: error: cannot write the checkpoint {run_dir / 'checkpoint.pt'}: "
                   f"No space left on device; {run_dir} keeps the checkpoint of epoch 1/2 "
                   f"(continue with --resume {run_dir})")]
    assert sorted(p.name for p in run_dir.iterdir() if ".tmp" in p.name) == []
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    assert load_checkpoint(run_dir)[0]["epoch"] == 1
    assert resume_training(run_dir).epochs_done == 2  # the metrics line of the failed epoch is replaced


def test_save_killed_between_its_renames_is_finished_by_the_next_load(run_dir, monkeypatch):
    real_replace = os.replace

    def killed_before_checkpoint_rename(src, dst):
        if str(src).endswith("checkpoint.pt.tmp"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", killed_before_checkpoint_rename)
    with pytest.raises(KeyboardInterrupt):
        resume_training(run_dir)
    monkeypatch.undo()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the old one, new digest
    assert (run_dir / "checkpoint.pt.tmp").is_file()
    with pytest.warns(UserWarning, match="finished the interrupted save of .*checkpoint.pt"):
        state, _ = load_checkpoint(run_dir)
    assert state["epoch"] == 2
    assert not (run_dir / "checkpoint.pt.tmp").exists()
    assert load_checkpoint(run_dir)[0]["epoch"] == 2  # verified against its digest, no warning left


def test_leftover_tmp_of_an_unfinished_write_is_ignored(run_dir):
    (run_dir / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    state, _ = load_checkpoint(run_dir)
    assert state["epoch"] == 1


def test_checkpoint_that_does_not_fit_its_model_is_refused(run_dir, capsys):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["model"]["fc1.weight"] = torch.zeros(3, 3)
    checkpoint_module.save_checkpoint(run_dir, state)
    code, err = _resume_cli(run_dir, capsys)
    assert code == 2 and len(err) == 1
    assert f"the checkpoint in {run_dir} does not fit the run its config describes" in err[0]


def test_save_failure_is_a_run_folder_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "file_sha256", lambda path: (_ for _ in ()).throw(
        OSError(errno.EIO, os.strerror(errno.EIO))))
    with pytest.raises(RunFolderError, match="cannot write the checkpoint .*: Input/output error"):
        checkpoint_module.save_checkpoint(tmp_path, {"format": 1})
    assert list(tmp_path.iterdir()) == []
    assert issubclass(RunFolderError, sparsecore.SparsecoreError)
