"""benchmarks/cli_queue.py and the LeNet-5 queue: recorded runs are never re-run, the start deadline holds, and the
early-stage accuracies survive the loss of the run folders."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def cli_queue():
    return _load("bench_cli_queue", BENCHMARKS / "cli_queue.py")


@pytest.fixture(scope="module")
def lenet5_queue():
    return _load("bench_lenet5_queue", BENCHMARKS / "sparse_momentum" / "lenet5_queue.py")


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_recorded_runs_lists_only_completed_or_diverged_rows(cli_queue, tmp_path):
    results = tmp_path / "runs.jsonl"
    _write_rows(results, [{"run": "a", "completed": True}, {"run": "b", "completed": False}, {"run": "c"},
                          {"run": "d", "completed": False, "diverged_in_epoch": 4},
                          {"run": "e", "completed": False, "diverged_in_epoch": None}])
    assert cli_queue.recorded_runs(results) == {"a", "d"}
    assert cli_queue.recorded_runs(tmp_path / "missing.jsonl") == set()


def _run_folder(root: Path, name: str, epochs_done: int, log: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"epochs": 100, "seed": 0, "density": 0.05}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"test_acc": 0.9, "epoch_seconds": 1.0}) + "\n"
                                                  for _ in range(epochs_done)))
    (root / f"{name}.log").write_text(log)
    return folder


DIVERGED = ("sparsecore train: error: training diverged in epoch 4/100: the training loss became nan within the "
            "first 26 steps of the epoch; /r/sm-s0 keeps the checkpoint of epoch 3/100 (a lower --lr usually helps)\n")


def test_a_diverged_run_is_recorded_once_with_its_epoch_and_not_started_again(cli_queue, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _run_folder(runs, "sm-s0", 3, DIVERGED)
    _run_folder(runs, "sm-s1", 7, DIVERGED)  # resumed past the divergence: not diverged
    _run_folder(runs, "sm-s2", 3, "")  # stopped early (--stop-after), not diverged
    assert [cli_queue.diverged_epoch(runs / name) for name in ("sm-s0", "sm-s1", "sm-s2", "absent")] == [
        4, None, None, None]
    results = tmp_path / "results.jsonl"
    jobs = [cli_queue.Job(name, ("--seed", "0"), 100) for name in ("sm-s0", "sm-s1", "sm-s2")]
    assert cli_queue.append_finished(jobs, runs, results) == 1
    assert cli_queue.append_finished(jobs, runs, results) == 0
    (row,) = cli_queue.read_rows(results)
    assert (row["run"], row["completed"], row["diverged_in_epoch"], row["epochs_done"]) == ("sm-s0", False, 4, 3)
    started: list[list[str]] = []
    monkeypatch.setattr(cli_queue.subprocess, "Popen", lambda cmd, **_: started.append(cmd))
    cli_queue.run_queue(jobs[:1], runs, lambda job: job.epochs, skip=cli_queue.recorded_runs(results),
                        log=lambda _: None)
    assert started == []


def test_run_queue_starts_nothing_for_recorded_runs_even_without_their_folders(cli_queue, tmp_path, monkeypatch):
    started: list[list[str]] = []
    monkeypatch.setattr(cli_queue.subprocess, "Popen", lambda cmd, **_: started.append(cmd))
    jobs = [cli_queue.Job("a", ("--seed", "0"), 5), cli_queue.Job("b", ("--seed", "1"), 5)]
    log: list[str] = []
    failed = cli_queue.run_queue(jobs, tmp_path / "runs", lambda job: job.epochs, skip={"a", "b"}, log=log.append)
    assert (failed, started, log) == ([], [], [])


def test_run_queue_starts_nothing_past_its_deadline(cli_queue, tmp_path, monkeypatch):
    started: list[list[str]] = []
    monkeypatch.setattr(cli_queue.subprocess, "Popen", lambda cmd, **_: started.append(cmd))
    jobs = [cli_queue.Job("a", ("--seed", "0"), 5), cli_queue.Job("b", ("--seed", "1"), 5)]
    log: list[str] = []
    cli_queue.run_queue(jobs, tmp_path / "runs", lambda job: job.epochs, start_until=time.time() - 1,
                        log=log.append)
    assert started == []
    assert len(log) == 1 and log[0].endswith("past the start deadline: not starting a, b")


def test_clock_time_is_the_next_such_moment_and_refuses_bad_text(cli_queue):
    moment = cli_queue.clock_time("00:00")
    assert 0 < moment - time.time() <= 24 * 3600
    assert time.localtime(moment)[3:5] == (0, 0)
    for bad in ("24:00", "7", "ab:cd", "12:60"):
        with pytest.raises(ValueError, match="not a clock time HH:MM"):
            cli_queue.clock_time(bad)


def test_early_accuracies_are_recorded_once_and_read_back_without_run_folders(lenet5_queue, tmp_path):
    runs = tmp_path / "runs"
    early = tmp_path / "early.jsonl"
    _write_rows(early, [{"run": "sm-s0", "arm": "sparse-momentum", "seed": 0, "early_epochs": 3, "test_acc": 0.113}])
    for name, accs in {"sm-s0": [0.9, 0.5, 0.2], "sm-s1": [0.9, 0.95, 0.97], "sm-s2": [0.9, 0.95]}.items():
        (runs / name).mkdir(parents=True)
        _write_rows(runs / name / "metrics.jsonl", [{"test_acc": a} for a in accs])
    jobs = [job for job in lenet5_queue.all_jobs() if job.name in {"sm-s0", "sm-s1", "sm-s2"}]
    lenet5_queue.record_early(jobs, runs, early, 3)
    lenet5_queue.record_early(jobs, runs, early, 3)  # a second call adds nothing
    # sm-s0 keeps its first recorded value; sm-s1 is added from its folder; sm-s2 has not reached epoch 3
    assert lenet5_queue.early_accuracies(early, 3) == {"sm-s0": 0.113, "sm-s1": 0.97}
    assert len(early.read_text().splitlines()) == 2
    page = lenet5_queue.render(lenet5_queue.all_jobs(), tmp_path / "gone", [],
                               lenet5_queue.early_accuracies(early, 3), 3, None)
    assert "| sparse-momentum | 2 | 1 of 2 | s0 11.3, s1 97.0 |" in page


def test_early_accuracy_comes_from_the_finished_run_then_the_folder_then_the_record(lenet5_queue, tmp_path):
    early = tmp_path / "early.jsonl"
    _write_rows(early, [{"run": f"sm-s{seed}", "early_epochs": 3, "test_acc": 0.1} for seed in range(3)])
    for seed in (1, 2):
        (tmp_path / f"sm-s{seed}").mkdir()
        _write_rows(tmp_path / f"sm-s{seed}" / "metrics.jsonl", [{"test_acc": a} for a in (0.9, 0.95, 0.96)])
    finished = [{"run": "sm-s2", "test_acc_per_epoch": [0.9, 0.95, 0.98, 0.99]}]
    folders = {f"sm-s{seed}": tmp_path / f"sm-s{seed}" for seed in range(3)}
    assert lenet5_queue.early_accuracies(early, 3, finished, folders) == {"sm-s0": 0.1, "sm-s1": 0.96, "sm-s2": 0.98}


def test_full_order_puts_faithful_runs_that_collapsed_early_last(lenet5_queue, tmp_path):
    jobs = lenet5_queue.all_jobs()
    order = [job.name for job in lenet5_queue.full_order(jobs, tmp_path, 3, {"sm-s0": 0.11, "sm-s1": 0.97})]
    assert order[:10] == [f"sm-warmup100-s{seed}" for seed in range(10)]
    assert order[-1] == "sm-s0"
    assert order.index("sm-s1") < order.index("sm-s2")


def test_finished_rows_name_their_cpu_layout_and_code_when_not_the_pages(lenet5_queue, tmp_path):
    acc = [0.99] * lenet5_queue.EPOCHS
    rows = [{"run": "static-s0", "arm": "static", "seed": 0, "epochs_done": 100, "test_error": 1.29,
             "test_acc_per_epoch": acc},
            {"run": "static-s1", "arm": "static", "seed": 1, "epochs_done": 100, "test_error": 1.1,
             "test_acc_per_epoch": acc, "cpu": "AMD EPYC", "channels_last": True, "code": "b" * 40},
            {"run": "static-s2", "arm": "static", "seed": 2, "epochs_done": 100, "test_error": 1.0,
             "test_acc_per_epoch": acc, "cpu": "AMD EPYC", "channels_last": False, "code": "a" * 40}]
    page = lenet5_queue.render(lenet5_queue.all_jobs(), tmp_path, rows, {}, 3, "a" * 40)
    assert ("| static | 3 | 0 | median 1.10, mean 1.13 ± 0.15 | 0 of 3 | s0 1.29, s1 1.10 (AMD EPYC, channels-last, "
            "code bbbbbbbbbbbb), s2 1.00 (AMD EPYC) |") in page


def test_channels_last_queue_adds_the_flag_to_every_job(lenet5_queue):
    assert all(job.flags[-1] == "--channels-last" for job in lenet5_queue.all_jobs(channels_last=True))
    assert not any("--channels-last" in job.flags for job in lenet5_queue.all_jobs())


def test_collapsed_rows_name_the_epoch_from_which_accuracy_stayed_at_chance(lenet5_queue, tmp_path):
    fell = [0.93, 0.96, 0.945] + [0.113] * (lenet5_queue.EPOCHS - 3)
    dipped = [0.93, 0.2, 0.97] + [0.99] * (lenet5_queue.EPOCHS - 3)
    assert lenet5_queue.collapse_epoch(fell) == 4
    assert lenet5_queue.collapse_epoch([0.11] * 5) == 1
    assert lenet5_queue.collapse_epoch([0.9, 0.1, 0.9, 0.1]) == 4  # a recovery in between does not count
    assert lenet5_queue.collapse_epoch(dipped) is None
    rows = [{"run": "sm-s2", "arm": "sparse-momentum", "seed": 2, "epochs_done": 100, "test_error": 88.65,
             "test_acc_per_epoch": fell, "cpu": "AMD EPYC"},
            {"run": "sm-s3", "arm": "sparse-momentum", "seed": 3, "epochs_done": 100, "test_error": 0.7,
             "test_acc_per_epoch": dipped}]
    page = lenet5_queue.render(lenet5_queue.all_jobs(), tmp_path, rows, {}, 3, None)
    assert "| sparse-momentum | 2 | 1 | 0.70 | 1 of 2 | s2 88.65 (collapsed in epoch 4, AMD EPYC), s3 0.70 |" in page


def test_diverged_runs_count_with_the_collapsed_and_have_no_final_error(lenet5_queue, tmp_path):
    ok = [0.99] * lenet5_queue.EPOCHS
    rows = [{"run": "sm-s0", "arm": "sparse-momentum", "seed": 0, "epochs_done": 3, "test_error": 34.42,
             "test_acc_per_epoch": [0.94, 0.96, 0.6558], "diverged_in_epoch": 4, "cpu": "AMD EPYC"},
            {"run": "sm-s1", "arm": "sparse-momentum", "seed": 1, "epochs_done": 3, "test_error": 88.7,
             "test_acc_per_epoch": [0.94, 0.96, 0.113], "diverged_in_epoch": 4},
            {"run": "sm-s3", "arm": "sparse-momentum", "seed": 3, "epochs_done": 100, "test_error": 0.7,
             "test_acc_per_epoch": ok}]
    page = lenet5_queue.render(lenet5_queue.all_jobs(), tmp_path, rows, {}, 3, None)
    assert ("| sparse-momentum | 3 | 2 | 0.70 | 1 of 3 | s0 diverged in epoch 4 (AMD EPYC), s1 diverged in epoch 4, "
            "s3 0.70 |") in page
    assert "Unfinished" not in page


def test_mnist_table_counts_diverged_queue_runs_with_the_collapsed(tmp_path):
    render_mnist_table = _load("bench_render_mnist_table", BENCHMARKS / "render_mnist_table.py")
    runs = tmp_path / "lenet5.jsonl"
    base = {"arm": "sparse-momentum", "model": "lenet-5-caffe", "density": 0.05, "epochs": 100, "torch": "2.14.1"}
    _write_rows(runs, [{**base, "seed": 0, "completed": False, "diverged_in_epoch": 4, "test_error": 34.42,
                        "train_seconds": 60.0},
                       {**base, "seed": 1, "completed": True, "test_error": 0.7, "train_seconds": 1800.0},
                       {**base, "seed": 2, "completed": True, "test_error": 0.8, "train_seconds": 1200.0},
                       {**base, "seed": 3, "completed": False, "test_error": 1.0, "train_seconds": 600.0}])
    rows = render_mnist_table.queue_rows(runs)
    assert [row["seed"] for row in rows] == [0, 1, 2]
    (line,) = [line for line in render_mnist_table.render(rows).splitlines()
               if line.startswith("| lenet-5-caffe | sparse-momentum [snfs-lenet5] |")]
    assert line == ("| lenet-5-caffe | sparse-momentum [snfs-lenet5] | 0.05 | 100 | 3 | 0.75 ± 0.07 (1 of 3 collapsed "
                    "or diverged) | s0: diverged in epoch 4, s1: 0.70, s2: 0.80 | 0.69 | +0.06 | 25.0 min |")
