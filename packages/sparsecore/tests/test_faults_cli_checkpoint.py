"""``sparsecore train --resume`` of damaged or foreign checkpoints, beyond ``test_train_checkpoint.py``.

A checkpoint without its digest (an old run) resumes with a note and bit for bit; a digest that does not match,
the checkpoint of another run (another algorithm, density or model), a checkpoint whose parts disagree, flags
that would change the run, and a checkpoint written by a newer sparsecore are refused with one line and exit
status 2, and leave every file of the run folder as it was.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from sparsecore import cli
from sparsecore.train import checkpoint as checkpoint_module

from test_faults_cli_kill import assert_same_run

RUN = ["train", "--dataset", "random", "--limit-train", "40", "--limit-test", "20", "--batch-size", "20",
       "--epochs", "2", "--seed", "3", "--threads", "1", "--no-plots", "--algorithm", "set", "--density", "0.3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders in one runs directory: 'stopped' (set, epoch 1 of 2), runs differing from it in one flag
    stopped the same way, and 'straight' (the stopped run trained to the end without stopping)."""
    root = tmp_path_factory.mktemp("runs")
    variants = {"stopped": [], "algorithm": ["--algorithm", "static"], "density": ["--density", "0.5"],
                "model": ["--model", "lenet-5-caffe"]}
    folders = {}
    for name, flags in variants.items():
        before = set(root.iterdir())
        assert cli.main([*RUN, *flags, "--stop-after", "1", "--runs-dir", str(root)]) == 0
        (folders[name],) = set(root.iterdir()) - before
    straight_root = tmp_path_factory.mktemp("straight")
    assert cli.main([*RUN, "--runs-dir", str(straight_root)]) == 0
    (folders["straight"],) = straight_root.iterdir()
    return folders


@pytest.fixture
def run_dir(runs, tmp_path) -> Path:
    """A copy of the stopped run to damage (in a folder of its own: the copy is its run folder)."""
    return Path(shutil.copytree(runs["stopped"], tmp_path / runs["stopped"].name))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def resume(run_dir: Path, capsys, *flags: str) -> tuple[int, list[str]]:
    """``sparsecore train --resume run_dir flags`` in this process: exit status, stderr lines (no progress bars)."""
    capsys.readouterr()
    code = cli.main(["train", "--resume", str(run_dir), *flags])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith("epoch ")]


def assert_refused_and_untouched(run_dir: Path, capsys, expected: str, *flags: str) -> None:
    before = files(run_dir)
    code, err = resume(run_dir, capsys, *flags)
    assert (code, len(err)) == (2, 1), err
    assert err[0] == f"sparsecore train: error: {expected}"
    assert files(run_dir) == before


def edit_checkpoint(run_dir: Path, change) -> None:
    """Change the checkpoint's state and save it again, with a digest that matches."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(state)
    checkpoint_module.save_checkpoint(run_dir, state)


def test_a_run_without_digest_resumes_with_a_note_and_bit_for_bit(run_dir, runs, capsys):
    (run_dir / "checkpoint.pt.sha256").unlink()
    code, err = resume(run_dir, capsys)
    assert code == 0, err
    assert err == [f"note: {run_dir / 'checkpoint.pt'} has no checkpoint.pt.sha256 (written by an older "
                   f"sparsecore), so it is loaded without verifying its integrity"]
    assert_same_run(run_dir, runs["straight"], "resumed without a digest")  # and the new checkpoint has one


def test_a_digest_of_other_bytes_is_refused(run_dir, capsys):
    other = hashlib.sha256(b"another checkpoint").hexdigest()
    (run_dir / "checkpoint.pt.sha256").write_text(f"{other}  checkpoint.pt\n")
    actual = hashlib.sha256((run_dir / "checkpoint.pt").read_bytes()).hexdigest()
    size = (run_dir / "checkpoint.pt").stat().st_size
    assert_refused_and_untouched(
        run_dir, capsys, f"checkpoint {run_dir / 'checkpoint.pt'} is corrupted or truncated ({size} bytes): its "
                         f"sha256 {actual[:16]}... differs from {other[:16]}... recorded in checkpoint.pt.sha256 "
                         f"when it was written")


def test_an_upper_case_digest_is_the_same_digest(run_dir, runs, capsys):
    digest = run_dir / "checkpoint.pt.sha256"
    digest.write_text(digest.read_text().upper().replace("CHECKPOINT.PT", "checkpoint.pt"))
    assert resume(run_dir, capsys) == (0, [])
    assert_same_run(run_dir, runs["straight"], "resumed with an upper-case digest")


@pytest.mark.parametrize(("other", "differs"), [
    ("algorithm", "algorithm 'static' (config.json: 'set')"),
    ("density", "density 0.5 (config.json: 0.3)"),
    ("model", "model 'lenet-5-caffe' (config.json: 'lenet-300-100')"),
])
def test_the_checkpoint_of_another_run_is_refused(run_dir, runs, capsys, other, differs):
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):  # a verified checkpoint, of the other run
        shutil.copy(runs[other] / name, run_dir / name)
    assert_refused_and_untouched(
        run_dir, capsys, f"the checkpoint in {run_dir} is not one of the run its config.json describes: its "
                         f"{differs}; resume the run folder it came from")


@pytest.mark.parametrize(("flag", "value"), [("--algorithm", "static"), ("--density", "0.5"),
                                             ("--model", "lenet-5-caffe"), ("--dataset", "mnist")])
def test_flags_that_would_make_it_another_run_are_refused(run_dir, capsys, flag, value):
    assert_refused_and_untouched(
        run_dir, capsys, f"{flag} cannot change when resuming: a resumed run keeps its configuration (changeable: "
                         f"--epochs, --stop-after, --device, --threads, --channels-last, --quiet, --no-plots)", flag, value)


def _weights_of(run: Path):
    def change(state):
        state["model"] = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    return change


@pytest.mark.parametrize(("change", "reason"), [
    (lambda s: s["sparsifier"].update(algorithm="static"), "checkpoint is of algorithm 'static', this run uses 'set'"),
    (lambda s: s["sparsifier"].update(density=0.5), "checkpoint is of density 0.5, this run uses 0.3"),
    ("model", "Error(s) in loading state_dict for LeNet300100:"),
], ids=["engine-state-of-another-algorithm", "engine-state-of-another-density", "weights-of-another-model"])
def test_a_checkpoint_whose_parts_disagree_is_refused(run_dir, runs, capsys, change, reason):
    edit_checkpoint(run_dir, _weights_of(runs["model"]) if change == "model" else change)
    assert_refused_and_untouched(
        run_dir, capsys, f"the checkpoint in {run_dir} does not fit the run its config describes: {reason}")


def test_a_checkpoint_of_a_newer_format_is_refused(run_dir, capsys):
    edit_checkpoint(run_dir, lambda s: s.update(format=2))
    assert_refused_and_untouched(
        run_dir, capsys, f"{run_dir / 'checkpoint.pt'} was written by a newer sparsecore (checkpoint format 2; this "
                         f"version reads format 1): upgrade sparsecore to resume it")


def test_a_config_with_fields_of_a_newer_version_is_refused(run_dir, capsys):
    edit_checkpoint(run_dir, lambda s: s["config"].update(mixed_precision="bf16", ema_decay=0.999))
    assert_refused_and_untouched(
        run_dir, capsys, f"the checkpoint in {run_dir} was written by a newer sparsecore: its config has "
                         f"'ema_decay', 'mixed_precision', which this version does not know; upgrade sparsecore to "
                         f"resume it")


def test_an_engine_state_of_a_newer_format_is_refused(run_dir, capsys):
    edit_checkpoint(run_dir, lambda s: s["sparsifier"].update(format=2))
    assert_refused_and_untouched(
        run_dir, capsys, f"the checkpoint in {run_dir} does not fit the run its config describes: unsupported "
                         f"sparsifier state format 2 (expected 1)")


def test_a_config_value_this_version_refuses_names_the_checkpoint(run_dir, capsys):
    edit_checkpoint(run_dir, lambda s: s["config"].update(batch_size=0))
    assert_refused_and_untouched(
        run_dir, capsys, f"the checkpoint in {run_dir} holds a configuration this sparsecore refuses: --batch-size "
                         f"must be a positive integer, got 0")
