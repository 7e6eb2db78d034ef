"""A resumable queue of ``sparsecore train`` runs, shared by the benchmark scripts that drive the CLI.

A :class:`Job` is one run folder under a runs directory, named by the job. Running a
job trains it up to a target number of epochs: a fresh folder starts the run with
``--run-name``; a folder holding a checkpoint continues it with ``--resume`` (on the
CPU, with the same thread count, a resumed run is the uninterrupted one bit for bit);
a folder whose ``metrics.jsonl`` already reaches the target is left alone. Targets below
the run's ``--epochs`` stop it early (``--stop-after``), so a queue can first take every
job to a few epochs (an early measurement) and later extend each one to the end.

:func:`run_queue` works through the jobs in order, ``parallel`` processes at a time,
each with one torch thread, and calls ``on_progress`` after every finished invocation,
so the caller records results as they land. :func:`read_run` turns a run folder into a
result row. A run that diverged (``sparsecore train`` stops a run whose loss or weights
become non-finite and keeps the checkpoint of the last good epoch) is an outcome, not a
failure to retry: resuming it repeats the divergence, so its row records the epoch
(:func:`diverged_epoch`) and the queue does not start it again.

The working tree of a shared repository changes under a long queue. :func:`code_snapshot`
extracts one commit's ``packages/`` to a folder and returns the ``PYTHONPATH`` that makes
the training processes import that code instead of the editable installs; the queue
scripts take it as ``--code COMMIT``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import tarfile
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Job:
    """One ``sparsecore train`` run.

    Attributes:
        name: the run folder's name (unique within the runs directory).
        flags: ``sparsecore train`` flags that define the run (recipe, algorithm, seed, options, ...),
            without ``--runs-dir``, ``--run-name``, ``--threads``, ``--resume`` or ``--stop-after``.
        epochs: the run's full length (its ``--epochs``).
        labels: free-form fields copied into the job's result rows (arm, seed, density, ...).
    """

    name: str
    flags: tuple[str, ...]
    epochs: int
    labels: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def resolve_commit(commit: str, root: Path) -> str:
    """The full sha of ``commit`` in the repository at ``root`` (``subprocess.CalledProcessError`` if unknown)."""
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", f"{commit}^{{commit}}"], check=True,
                          capture_output=True, text=True).stdout.strip()


def code_snapshot(commit: str, root: Path, dest: Path) -> str:
    """Extract ``packages/`` of ``commit`` (of the repository at ``root``) under ``dest/<sha>``; its PYTHONPATH.

    An existing snapshot of the same commit is reused. Raises ``subprocess.CalledProcessError`` for an
    unknown commit.
    """
    sha = resolve_commit(commit, root)
    folder = dest / sha
    if not (folder / "packages").is_dir():
        archive = subprocess.run(["git", "-C", str(root), "archive", sha, "packages"], check=True,
                                 capture_output=True).stdout
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    return os.pathsep.join(str(src) for src in sorted((folder / "packages").glob("*/src")))


def epochs_done(folder: Path) -> int:
    """Epochs recorded in ``folder/metrics.jsonl`` (0 when the run has not started)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


#: The line ``sparsecore train`` prints when it stops a diverged run (``TrainingDivergedError``).
DIVERGED_LINE = re.compile(r"training diverged in epoch (\d+)/\d+")


def diverged_epoch(folder: Path) -> int | None:
    """The (1-based) epoch in which the run in ``folder`` diverged, or ``None``.

    Read from the run's log (``<folder>.log`` beside it, where :func:`run_queue` writes it): its last
    divergence line counts only while the folder still ends at the epoch before it (a run resumed past
    it did not stay diverged).
    """
    log = folder.parent / f"{folder.name}.log"
    if not log.is_file():
        return None
    found = DIVERGED_LINE.findall(log.read_text(errors="replace"))
    if not found or int(found[-1]) != epochs_done(folder) + 1:
        return None
    return int(found[-1])


def command(job: Job, runs_dir: Path, target: int, threads: int = 1) -> list[str] | None:
    """The command that takes ``job`` to ``target`` epochs, or ``None`` when it is already there."""
    folder = runs_dir / job.name
    done = epochs_done(folder)
    target = min(target, job.epochs)
    finished = done >= job.epochs and (folder / "summary.md").is_file()
    if done >= target and (target < job.epochs or finished):
        return None
    base = [sys.executable, "-m", "sparsecore.cli", "train", "--threads", str(threads), "--no-plots", "--quiet"]
    stop = [] if target >= job.epochs else ["--stop-after", str(target - done)]
    if (folder / "checkpoint.pt").is_file():
        return [*base, "--resume", str(folder), *stop]
    return [*base, *job.flags, "--epochs", str(job.epochs), "--runs-dir", str(runs_dir), "--run-name", job.name,
            *stop]


def read_run(folder: Path, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result row for the run in ``folder``: its configuration, per-epoch test accuracy and final figures.

    Errors are in percent. ``completed`` says whether the run reached its ``epochs``; ``diverged_in_epoch``
    names the epoch in which it diverged (``None`` when it did not, see :func:`diverged_epoch`).
    """
    stored = json.loads((folder / "config.json").read_text())
    config, environment = stored["config"], stored.get("environment", {})
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = records[-1] if records else {}
    return {
        "run": folder.name, **(labels or {}),
        "algorithm": config.get("algorithm"), "dense": config.get("dense"), "model": config.get("model"),
        "dataset": config.get("dataset"), "density": config.get("density"), "seed": config.get("seed"),
        "epochs": config.get("epochs"), "epochs_done": len(records),
        "channels_last": bool(config.get("channels_last", False)),
        "completed": len(records) >= int(config.get("epochs", 0)) and (folder / "summary.md").is_file(),
        "diverged_in_epoch": diverged_epoch(folder),
        "test_error": round(100 * (1 - last["test_acc"]), 4) if records else None,
        "best_test_error": round(100 * (1 - max(r["test_acc"] for r in records)), 4) if records else None,
        "test_acc_per_epoch": [r["test_acc"] for r in records],
        "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in records), 1),
        "options": config.get("options"), "recipe": config.get("recipe"),
        "sparsecore": environment.get("sparsecore"), "torch": environment.get("torch"),
    }


def run_queue(jobs: Sequence[Job], runs_dir: Path, target: Callable[[Job], int], parallel: int = 1,
              on_progress: Callable[[Job, int], None] | None = None, log: Callable[[str], None] = print,
              pythonpath: str | None = None, skip: Collection[str] = (),
              start_until: float | None = None) -> list[str]:
    """Take every job to ``target(job)`` epochs, ``parallel`` runs at a time, in the order given.

    Returns the names of the jobs whose invocation failed (their logs are ``runs_dir/<name>.log``).
    ``on_progress(job, returncode)`` is called after each invocation ends. ``pythonpath`` (from
    :func:`code_snapshot`) is put first on the training processes' ``PYTHONPATH``. Jobs named in
    ``skip`` (runs already recorded, see :func:`recorded_runs`) are not run again, whatever their folder
    holds. No invocation starts after ``start_until`` (a ``time.time()`` value); the running ones finish.
    """
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    runs_dir.mkdir(parents=True, exist_ok=True)
    pending = [(job, cmd) for job in jobs
               if job.name not in skip and (cmd := command(job, runs_dir, target(job))) is not None]
    running: list[tuple[Job, subprocess.Popen[bytes], Any]] = []
    failed: list[str] = []
    while pending or running:
        if pending and start_until is not None and time.time() > start_until:
            log(f"[{time.strftime('%H:%M:%S')}] past the start deadline: not starting "
                f"{', '.join(job.name for job, _ in pending)}")
            pending = []
        while pending and len(running) < parallel:
            job, cmd = pending.pop(0)
            log(f"[{time.strftime('%H:%M:%S')}] start {job.name} -> {target(job)} epochs")
            out = open(runs_dir / f"{job.name}.log", "ab")  # noqa: SIM115 - closed when the process ends
            running.append((job, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out))
        time.sleep(2)
        for item in list(running):
            job, proc, out = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out.close()
            log(f"[{time.strftime('%H:%M:%S')}] {'done' if proc.returncode == 0 else 'FAILED'} {job.name} "
                f"({epochs_done(runs_dir / job.name)}/{job.epochs} epochs)")
            if proc.returncode != 0:
                failed.append(job.name)
            if on_progress is not None:
                on_progress(job, proc.returncode)
    return failed


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``; else what :mod:`platform` says).

    Floating-point results of the same run differ between CPU kinds (their vector kernels differ), so every
    recorded row names the CPU it finished on.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_finished(row: dict[str, Any]) -> bool:
    """Whether a :func:`read_run` row is a finished run: it completed, or it diverged."""
    return bool(row.get("completed") or row.get("diverged_in_epoch"))


def recorded_runs(results: Path) -> set[str]:
    """Names of the finished runs (:func:`is_finished`) that ``results`` (a JSON-lines file of :func:`read_run`
    rows) holds."""
    return {row["run"] for row in read_rows(results) if is_finished(row)}


def append_finished(jobs: Sequence[Job], runs_dir: Path, results: Path, extra: dict[str, Any] | None = None) -> int:
    """Append a row for every finished job (completed or diverged) not yet in ``results`` (a JSON-lines file);
    returns how many.

    Each row is :func:`read_run`'s with ``cpu`` (:func:`cpu_model`) and the fields of ``extra`` added.
    """
    seen = {row["run"] for row in read_rows(results)}
    added = 0
    for job in jobs:
        folder = runs_dir / job.name
        if job.name in seen or not (folder / "config.json").is_file():
            continue
        row = read_run(folder, job.labels)
        if is_finished(row):
            row.update(cpu=cpu_model(), **(extra or {}))
            results.parent.mkdir(parents=True, exist_ok=True)
            with open(results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            added += 1
    return added


#: Parent of the queue scripts' run folders by default (``runs/`` of the repository, ignored by git).
DEFAULT_RUNS_ROOT = Path(__file__).resolve().parents[1] / "runs"


def add_queue_arguments(parser: Any, runs_dir: str, results: Path) -> None:
    """The options every queue script shares: ``--runs-dir`` (default ``runs/<runs_dir>``), ``--parallel``,
    ``--code``, ``--results``, ``--render-only`` and ``--start-until``."""
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_ROOT / runs_dir)
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--code", default=None, metavar="COMMIT",
                        help="train with the packages of this commit (default: the one in RUNS_DIR/CODE)")
    parser.add_argument("--results", type=Path, default=results)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--start-until", type=clock_time, default=None, metavar="HH:MM",
                        help="start no run after this local time (today, or tomorrow if already past); "
                             "the running ones finish")


def clock_time(text: str) -> float:
    """The next moment (a ``time.time()`` value) the local clock reads ``text`` (``HH:MM``)."""
    try:
        hours, minutes = (int(part) for part in text.split(":"))
        if not (0 <= hours < 24 and 0 <= minutes < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"not a clock time HH:MM: {text!r}") from None
    now = time.localtime()
    moment = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hours, minutes, 0, 0, 0, -1))
    return moment if moment > time.time() else moment + 24 * 3600


def queue_code(args: Any, root: Path) -> str | None:
    """The commit a queue trains with: ``--code``, else the one remembered in ``RUNS_DIR/CODE`` (``None``: neither)."""
    code_file = args.runs_dir / "CODE"
    if args.code:
        return resolve_commit(args.code, root)
    return code_file.read_text().strip() if code_file.is_file() else None


def prepare_code(parser: Any, args: Any, code: str | None, root: Path) -> str:
    """Remember ``code`` in ``RUNS_DIR/CODE`` (refusing a runs directory of another commit); its PYTHONPATH."""
    if code is None:
        parser.error("give --code COMMIT the first time (the queue remembers it in RUNS_DIR/CODE)")
    code_file = args.runs_dir / "CODE"
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if code_file.is_file() and code_file.read_text().strip() != code:
        parser.error(f"{args.runs_dir} holds runs of commit {code_file.read_text().strip()}; resume them with that "
                     "code (drop --code) or pass another --runs-dir")
    code_file.write_text(code + "\n")
    return code_snapshot(code, root, args.runs_dir.parent / "code")


def read_rows(results: Path) -> list[dict[str, Any]]:
    """The JSON rows of a results file (none if it does not exist)."""
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
