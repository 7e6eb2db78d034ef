"""``sparsecore train`` killed with SIGKILL at a seeded "random" point, then ``--resume``: the run ends bit for bit
as the uninterrupted one (weights, masks, optimizer, schedules, RNG state and ``metrics.jsonl``), for every
algorithm registered in this process.

The killed run is a second process: this file run as a script,
``python test_faults_cli_kill.py POINT MARKER ARGV...``, runs ``sparsecore train ARGV`` and at the point POINT
names writes the file MARKER and waits; the test then sends it SIGKILL. The points:

- ``step:N``: after the N-th optimizer step of the process;
- ``metrics-half:K``: the K-th ``metrics.jsonl`` line half written; ``metrics-written:K``: just written;
- ``checkpoint-half:K``: the K-th ``checkpoint.pt.tmp`` half written; ``checkpoint-unhashed:K``: written and
  synced, its digest not yet computed; ``checkpoint-renaming:K``: the new digest renamed into place, the
  checkpoint not yet; ``checkpoint-saved:K``: both renamed;
- ``summary-half``: ``summary.md.tmp`` half written.

The points come from a seeded RNG (:data:`FAULT_SEED`, or ``SPARSECORE_FAULT_SEED`` to explore others); every
assertion message names the seed and the point, so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

#: Seed of the kill points.
FAULT_SEED = int(os.environ.get("SPARSECORE_FAULT_SEED", "20250117"))
EPOCHS, BATCH, TRAIN_SAMPLES = 3, 20, 160
STEPS_PER_EPOCH = TRAIN_SAMPLES // BATCH
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
#: Each algorithm of this repository with step-scheduled updates where it has them (8 steps an epoch).
ALGORITHM_FLAGS = {
    "static": ["--density", "0.3"],
    "set": ["--density", "0.3", "--option", "update_every=3"],
    "sparse-momentum": ["--density", "0.3", "--option", "update_every=3"],
    "dsd": ["--density", "0.5", "--option", "phases=[0.3, 0.4, 0.3]"],  # phases change inside epochs 1 and 3
    "snip": ["--density", "0.3"],
    "swat": ["--density", "0.3", "--model", "lenet-5-caffe", "--option", "period=3"],  # top-K reused 3 calls
    "rigl": ["--density", "0.3", "--option", "update_every=3"],
    "gmp": ["--density", "0.3", "--option", "update_every=3", "--option", "start=0.1", "--option", "end=0.8"],
}
REQUIRED_ALGORITHMS = ("static", "set", "sparse-momentum", "dsd", "snip", "swat")
#: Paused processes wait at most this long for their SIGKILL; a run waits this long to reach its point.
PATIENCE_S = 600


def registered_algorithms() -> list[str]:
    """Every algorithm this process has, plus the ones of this repository that must be there."""
    import sparsecore

    return sorted(set(REQUIRED_ALGORITHMS) | set(sparsecore.available_algorithms()))


def train_argv(algorithm: str, runs_dir: Path, epochs: int = EPOCHS, train_samples: int = TRAIN_SAMPLES) -> list[str]:
    """The ``sparsecore train`` arguments of a small offline run of ``algorithm`` (its own flags, else its defaults)."""
    return ["train", "--algorithm", algorithm, "--dataset", "random", "--limit-train", str(train_samples),
            "--limit-test", "40", "--batch-size", str(BATCH), "--epochs", str(epochs), "--seed", "5",
            "--threads", "1", "--no-plots", "--run-name", "run", "--runs-dir", str(runs_dir),
            *ALGORITHM_FLAGS.get(algorithm, [])]


# ---------------------------------------------------------------------------------------------------------------
# the second process
# ---------------------------------------------------------------------------------------------------------------
def _pause(marker: str) -> None:
    """Say where we are (atomically) and wait for the SIGKILL."""
    Path(marker + ".tmp").write_text("paused\n")
    os.replace(marker + ".tmp", marker)
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        time.sleep(1)
    os._exit(97)  # never killed: the test has gone


def _install_point(point: str, marker: str) -> None:
    """Make the process pause at ``point`` (see the module docstring)."""
    from sparsecore.train import checkpoint, rundir

    kind, _, number = point.partition(":")
    target = int(number) if number else 1
    seen = [0]

    def arrived() -> bool:
        seen[0] += 1
        return seen[0] == target

    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def after_step(optimizer, args, kwargs):
            if arrived():
                _pause(marker)

        register_optimizer_step_post_hook(after_step)
    elif kind in ("metrics-half", "metrics-written"):
        real_append = rundir.append_metrics

        def append_metrics(run_dir, record):
            if not arrived():
                return real_append(run_dir, record)
            if kind == "metrics-written":
                real_append(run_dir, record)
            else:
                line = (json.dumps(record) + "\n").encode()
                with open(Path(run_dir) / rundir.METRICS_NAME, "ab") as f:
                    f.write(line[:len(line) // 2])
            _pause(marker)

        rundir.append_metrics = append_metrics
    elif kind == "checkpoint-half":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not arrived():
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            f.flush()
            _pause(marker)

        torch.save = save
    elif kind == "checkpoint-unhashed":
        real_hash = checkpoint.file_sha256

        def file_sha256(path):
            if Path(path).name == checkpoint.CHECKPOINT_NAME + ".tmp" and arrived():
                _pause(marker)
            return real_hash(path)

        checkpoint.file_sha256 = file_sha256
    elif kind in ("checkpoint-renaming", "checkpoint-saved"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(src).name != checkpoint.CHECKPOINT_NAME + ".tmp" or not arrived():
                return real_replace(src, dst, *args, **kwargs)
            if kind == "checkpoint-saved":
                real_replace(src, dst, *args, **kwargs)
            _pause(marker)

        os.replace = replace
    elif kind == "summary-half":
        real_write = rundir.write_text_atomic

        def write_text_atomic(path, text):
            if Path(path).name != rundir.SUMMARY_NAME:
                return real_write(path, text)
            Path(str(path) + ".tmp").write_text(text[:len(text) // 2])
            _pause(marker)

        rundir.write_text_atomic = write_text_atomic
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def _second_process(argv: list[str]) -> int:
    point, marker, *train = argv
    _install_point(point, marker)
    from sparsecore import cli

    return cli.main(train)


# ---------------------------------------------------------------------------------------------------------------
# the test side
# ---------------------------------------------------------------------------------------------------------------
def kill_at(point: str, argv: list[str], workdir: Path) -> None:
    """Run ``sparsecore train argv`` in a second process and SIGKILL it at ``point``.

    Fails (with the process's stderr) when it ends before reaching the point.
    """
    marker, errors = workdir / f"paused-{point.replace(':', '-')}", workdir / f"stderr-{point.replace(':', '-')}"
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSECORE_DISABLE_PLUGIN_AUTOLOAD",)}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, __file__, point, str(marker), *argv], stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=workdir)
        try:
            deadline = time.monotonic() + PATIENCE_S
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            reached = marker.exists()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert reached, (f"the run ended (exit {proc.returncode}) before kill point {point!r} (seed {FAULT_SEED}): "
                     f"{errors.read_text()[-3000:]}")
    assert proc.returncode == -signal.SIGKILL


def resume(run_dir: Path, capsys) -> tuple[int, list[str]]:
    """``sparsecore train --resume run_dir`` in this process: exit status and stderr lines (progress bars left out)."""
    from sparsecore import cli

    capsys.readouterr()
    code = cli.main(["train", "--resume", str(run_dir)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert not any("Traceback" in line for line in err), err
    return code, err


def _untimed(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")} for line in lines]


def _assert_equal(a, b, where: str) -> None:
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(resumed: Path, reference: Path, where: str) -> None:
    """The resumed run folder holds exactly what the uninterrupted one does (timings and the folder aside)."""
    from sparsecore.train.checkpoint import read_checkpoint

    loaded, expected = read_checkpoint(resumed), read_checkpoint(reference)
    assert loaded.notices == [], where
    for state in (loaded.state, expected.state):
        state["config"] = {k: v for k, v in state["config"].items() if k != "runs_dir"}
        if state["sparsifier"] is not None:  # mask versions are cache keys a load advances on purpose
            assert set(state["sparsifier"].pop("versions")) == set(state["sparsifier"]["masks"]), where
    if expected.state["sparsifier"] is not None:
        assert expected.state["sparsifier"]["masks"], where  # compared below, with everything else
    _assert_equal(loaded.state, expected.state, f"{where}: checkpoint")
    assert _untimed(resumed) == _untimed(reference), f"{where}: metrics.jsonl differs"
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir()), where


class References:
    """Uninterrupted runs, made on first use, one per argument list."""

    def __init__(self, root: Path) -> None:
        self.root, self.runs = root, {}

    def run_dir(self, algorithm: str, **kwargs) -> Path:
        """The folder of the uninterrupted run of :func:`train_argv` ``(algorithm, **kwargs)``."""
        from sparsecore import cli

        key = (algorithm, tuple(sorted(kwargs.items())))
        if key not in self.runs:
            runs_dir = self.root / f"reference-{len(self.runs)}"
            assert cli.main(train_argv(algorithm, runs_dir, **kwargs)) == 0, f"the uninterrupted {algorithm} run failed"
            self.runs[key] = runs_dir / "run"
        return self.runs[key]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> References:
    return References(tmp_path_factory.mktemp("uninterrupted"))


def _rng(*labels: object) -> random.Random:
    return random.Random("/".join(map(str, (FAULT_SEED, *labels))))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", registered_algorithms())
def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(algorithm, references, tmp_path, capsys):
    import sparsecore

    assert algorithm in sparsecore.available_algorithms(), (
        f"algorithm {algorithm!r} of this repository is not installed in the test environment")
    step = _rng(algorithm).randint(STEPS_PER_EPOCH + 1, TOTAL_STEPS)  # after the first checkpoint
    where = f"{algorithm} killed after step {step}/{TOTAL_STEPS} (seed {FAULT_SEED})"
    kill_at(f"step:{step}", train_argv(algorithm, tmp_path / "runs"), tmp_path)
    run_dir = tmp_path / "runs" / "run"
    epochs_kept = (step - 1) // STEPS_PER_EPOCH  # the epoch of the step is in no checkpoint yet
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == epochs_kept, where
    assert resume(run_dir, capsys) == (0, []), where
    assert_same_run(run_dir, references.run_dir(algorithm), where)


# kill points inside the run folder's writes; the number is the epoch (the k-th write) a point is drawn from
WRITE_POINTS = {
    "metrics-half": range(2, EPOCHS + 1),          # a half line after the checkpoint of the epoch before
    "metrics-written": range(1, EPOCHS + 1),       # the line of an epoch whose checkpoint is not written
    "checkpoint-half": range(2, EPOCHS + 1),
    "checkpoint-unhashed": range(2, EPOCHS + 1),
    "checkpoint-renaming": range(1, EPOCHS + 1),   # the next load finishes the save
    "checkpoint-saved": range(1, EPOCHS + 1),      # EPOCHS: killed before the summary
}


@pytest.mark.parametrize("kind", list(WRITE_POINTS))
def test_sigkill_inside_a_run_folder_write_then_resume_equals_the_uninterrupted_run(kind, references, tmp_path,
                                                                                    capsys):
    epoch = _rng(kind).choice(WRITE_POINTS[kind])
    point, where = f"{kind}:{epoch}", f"sparse-momentum killed at {kind}:{epoch} (seed {FAULT_SEED})"
    kill_at(point, train_argv("sparse-momentum", tmp_path / "runs"), tmp_path)
    run_dir = tmp_path / "runs" / "run"
    before = {p.name for p in run_dir.iterdir()}
    code, err = resume(run_dir, capsys)
    assert code == 0, (where, err)
    notes = [line for line in err if line.startswith(("note:", "warning:"))]
    if kind == "metrics-half":
        assert notes == [f"warning: dropped the incomplete last line {epoch} of {run_dir / 'metrics.jsonl'} "
                         f"(the process writing it was stopped)"], where
    elif kind == "checkpoint-renaming":
        assert notes == [f"note: finished the interrupted save of {run_dir / 'checkpoint.pt'} "
                         f"(its new content was complete in checkpoint.pt.tmp)"], where
    else:
        assert notes == [], where
    if kind in ("checkpoint-half", "checkpoint-unhashed", "checkpoint-renaming"):
        assert "checkpoint.pt.tmp" in before, where
    assert_same_run(run_dir, references.run_dir("sparse-momentum"), where)


def test_sigkill_during_the_first_checkpoint_write_leaves_nothing_to_resume(tmp_path, capsys):
    kill_at("checkpoint-half:1", train_argv("set", tmp_path / "runs"), tmp_path)
    run_dir = tmp_path / "runs" / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt.tmp", "config.json", "metrics.jsonl"]
    assert resume(run_dir, capsys) == (2, [
        f"sparsecore train: error: {run_dir} has no checkpoint.pt, so there is nothing to resume (a run stopped "
        f"before its first epoch finished has none; start it again)"])


def test_sigkill_while_writing_the_summary_then_resume_writes_it(references, tmp_path, capsys):
    kill_at("summary-half", train_argv("set", tmp_path / "runs"), tmp_path)
    run_dir = tmp_path / "runs" / "run"
    assert not (run_dir / "summary.md").exists() and (run_dir / "summary.md.tmp").is_file()
    checkpoint_before = (run_dir / "checkpoint.pt").read_bytes()
    assert resume(run_dir, capsys) == (0, [])
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint_before  # nothing trained again
    assert "| **total** |" in (run_dir / "summary.md").read_text()
    assert_same_run(run_dir, references.run_dir("set"), "set killed while writing summary.md")


@pytest.mark.slow
def test_a_resumed_run_killed_again_and_resumed_again_equals_the_uninterrupted_run(references, tmp_path, capsys):
    rng = _rng("twice")
    first = rng.randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH)  # in epoch 2: the checkpoint of epoch 1 stays
    second = rng.randint(1, STEPS_PER_EPOCH)  # in the resumed process's first epoch (epoch 2 again)
    where = f"sparse-momentum killed after step {first}, then after step {second} of the resume (seed {FAULT_SEED})"
    run_dir = tmp_path / "runs" / "run"
    kill_at(f"step:{first}", train_argv("sparse-momentum", tmp_path / "runs"), tmp_path)
    kill_at(f"step:{second}", ["train", "--resume", str(run_dir)], tmp_path)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1, where
    kill_at("checkpoint-renaming:1", ["train", "--resume", str(run_dir)], tmp_path)  # epoch 2's save
    code, err = resume(run_dir, capsys)
    assert code == 0, (where, err)
    assert_same_run(run_dir, references.run_dir("sparse-momentum"), where)


@pytest.mark.slow
def test_sigkill_from_outside_right_after_a_metrics_line_appears(references, tmp_path, capsys):
    """No hook in the killed process: plain ``python -m sparsecore train``, killed when line k shows up.

    Where exactly the kill lands (inside the checkpoint write that follows, or later) depends on timing; every
    place must resume to the same run.
    """
    epochs, lines = 6, _rng("outside").randint(1, 3)
    argv = train_argv("set", tmp_path / "runs", epochs=epochs, train_samples=800)
    metrics = tmp_path / "runs" / "run" / "metrics.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "SPARSECORE_DISABLE_PLUGIN_AUTOLOAD"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "sparsecore", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.is_file() and metrics.read_bytes().count(b"\n") >= lines:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) before line {lines} appeared"
    code, err = resume(metrics.parent, capsys)
    assert code == 0, err
    where = f"set killed from outside after metrics line {lines} (seed {FAULT_SEED})"
    assert_same_run(metrics.parent, references.run_dir("set", epochs=epochs, train_samples=800), where)


if __name__ == "__main__":  # the second process
    sys.exit(_second_process(sys.argv[1:]))
