"""LeNet-5-Caffe on MNIST at 5 % with the ``snfs-lenet5`` recipe: a resumable queue of 100-epoch runs.

Arms (each ``sparsecore train --recipe snfs-lenet5 [flags] --seed S --threads 1``, 100 epochs):

* ``sparse-momentum``: the faithful plugin defaults, seeds 0-9;
* ``sparse-momentum (warmup_steps=100)``: the robustness option (a deviation, see the plugin README), seeds 0-9;
* ``sparse-momentum (redistribution=none)``, ``static`` and ``dense``: seeds 0-2.

Two stages, both resumable (run folders ``RUNS_DIR/<arm>-s<seed>``, checkpoints every epoch):

* ``--stage early``: the faithful and robust runs to ``--early-epochs`` (3), seed by seed, robust
  first: the second topology update follows epoch 2, where the faithful runs collapse. A run whose
  test accuracy after epoch 3 is below 50 % (chance is ~10 %) counts as collapsed early; this is a
  measurement of the early collapse rate, not of the final error.
* ``--stage full``: every run to 100 epochs, in an order that makes each finished run a result:
  runs already past the early stage first, then the robust arm's ten seeds (its goal, at least 9 of
  10 seeds at 0.75 % error or less, needs all of them), then rounds of one run per other arm
  (faithful, redistribution=none, static, dense) seed by seed, the faithful runs that collapsed
  early last (to see whether any recovers).

A run that diverges (``sparsecore train`` stops it when its loss becomes non-finite) is finished too: its row names
the epoch, counts with the collapsed runs, and the queue does not start it again (resuming repeats the divergence).

Every invocation that ends appends the finished runs to ``benchmarks/results/sparse_momentum_lenet5_runs.jsonl``
and re-renders ``benchmarks/results/sparse_momentum_lenet5_runs.md`` (also with ``--render-only``), which shows
the early-collapse table (each run's accuracy after the early stage is also appended to
``sparse_momentum_lenet5_early.jsonl``, so it outlives the run folders) and the 100-epoch table from the finished
rows, and the MNIST
table ``benchmarks/results/mnist_table.md`` (the docs home page), whose ``[snfs-lenet5]`` rows are these runs.
The training code is a snapshot of one commit (``--code``, remembered in ``RUNS_DIR/CODE``), so a
later session resumes the same code whatever the working tree holds.

Usage (from the repository root)::

    python benchmarks/sparse_momentum/lenet5_queue.py --stage early --code <commit>
    python benchmarks/sparse_momentum/lenet5_queue.py --stage full        # resumes with RUNS_DIR/CODE
    python benchmarks/sparse_momentum/lenet5_queue.py --render-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import render_mnist_table  # noqa: E402
from cli_queue import (  # noqa: E402
    Job, add_queue_arguments, append_finished, cpu_model, epochs_done, prepare_code, queue_code, read_rows,
    recorded_runs, run_queue)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "sparse_momentum_lenet5_runs.jsonl"
EPOCHS = 100
COLLAPSE_BELOW = 0.5
FAITHFUL = "sparse-momentum"
ROBUST = "sparse-momentum (warmup_steps=100)"
#: arm -> (flags added to the recipe's, seeds)
ARMS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    FAITHFUL: ((), tuple(range(10))),
    ROBUST: (("--option", "warmup_steps=100"), tuple(range(10))),
    # quoted: the harness reads a bare none as None, which the snapshot's plugin (f664dbd) refuses
    "sparse-momentum (redistribution=none)": (("--option", 'redistribution="none"'), (0, 1, 2)),
    "static": (("--algorithm", "static"), (0, 1, 2)),
    "dense": (("--dense",), (0, 1, 2)),
}
SLUGS = {FAITHFUL: "sm", ROBUST: "sm-warmup100", "sparse-momentum (redistribution=none)": "sm-none",
         "static": "static", "dense": "dense"}
PUBLISHED = "0.69 ± 0.02 % (sparse momentum, Dettmers & Zettlemoyer 2019, Table 1)"


def all_jobs(channels_last: bool = False) -> list[Job]:
    """Every run of every arm (with ``--channels-last`` added to each when ``channels_last``)."""
    layout = ("--channels-last",) if channels_last else ()
    return [Job(f"{SLUGS[arm]}-s{seed}", ("--recipe", "snfs-lenet5", *flags, "--seed", str(seed), *layout), EPOCHS,
                {"arm": arm, "recipe": "snfs-lenet5"})
            for arm, (flags, seeds) in ARMS.items() for seed in seeds]


def accuracies(folder: Path) -> list[float]:
    """Test accuracy after each recorded epoch of a run folder."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["test_acc"] for line in path.read_text().splitlines() if line.strip()]


def record_early(jobs: list[Job], runs_dir: Path, path: Path, early_epochs: int) -> None:
    """Append to ``path`` the accuracy after ``early_epochs`` of every run folder that has reached it and is not
    yet recorded there (the first recorded value of a run stays)."""
    seen = {row["run"] for row in read_rows(path)}
    with open(path, "a", encoding="utf-8") as f:
        for job in jobs:
            acc = accuracies(runs_dir / job.name)
            if job.name in seen or len(acc) < early_epochs:
                continue
            f.write(json.dumps({"run": job.name, "arm": job.labels["arm"], "seed": int(job.name.rsplit("-s", 1)[1]),
                                "early_epochs": early_epochs, "test_acc": acc[early_epochs - 1],
                                "test_acc_per_epoch": acc[:early_epochs], "cpu": cpu_model()}) + "\n")


def early_accuracies(path: Path, early_epochs: int, finished: list[dict] | None = None,
                     folders: dict[str, Path] | None = None) -> dict[str, float]:
    """Run name -> test accuracy after ``early_epochs``.

    A run's value comes from its row in ``finished`` (the 100-epoch rows) when it has one, so that both tables
    show one trajectory; else from its run folder in ``folders`` (name -> folder); else from the rows of ``path``.
    The same seed follows another trajectory on another CPU kind, so the sources can disagree.
    """
    out = {row["run"]: row["test_acc"] for row in read_rows(path) if row["early_epochs"] == early_epochs}
    for name, folder in (folders or {}).items():
        acc = accuracies(folder)
        if len(acc) >= early_epochs:
            out[name] = acc[early_epochs - 1]
    for row in finished or []:
        if len(row["test_acc_per_epoch"]) >= early_epochs:
            out[row["run"]] = row["test_acc_per_epoch"][early_epochs - 1]
    return out


def full_order(jobs: list[Job], runs_dir: Path, early_epochs: int, early: dict[str, float]) -> list[Job]:
    """The order of the full stage: runs already taken past the early stage first (finish what was begun), then
    the robust arm seed by seed (its goal needs all ten), then rounds of one run per other arm (faithful,
    baselines) seed by seed; faithful runs that collapsed early come last."""
    arms = [ROBUST, *(arm for arm in ARMS if arm != ROBUST)]

    def key(job: Job) -> tuple[int, int, int]:
        arm = job.labels["arm"]
        done = epochs_done(runs_dir / job.name)
        if early_epochs < done < EPOCHS:
            group = 0
        elif arm == ROBUST:
            group = 1
        elif arm == FAITHFUL and early.get(job.name, 1.0) < COLLAPSE_BELOW:
            group = 3
        else:
            group = 2
        return group, ARMS[arm][1].index(int(job.name.rsplit("-s", 1)[1])), arms.index(arm)
    return sorted(jobs, key=key)


def collapse_epoch(test_acc_per_epoch: list[float]) -> int | None:
    """The epoch (1-based) after which test accuracy stayed below the collapse threshold to the end; ``None``
    when the final accuracy is at or above it."""
    if not test_acc_per_epoch or test_acc_per_epoch[-1] >= COLLAPSE_BELOW:
        return None
    epoch = len(test_acc_per_epoch)
    while epoch > 1 and test_acc_per_epoch[epoch - 2] < COLLAPSE_BELOW:
        epoch -= 1
    return epoch


def _run_notes(row: dict, page_code: str | None) -> str:
    """`` (collapsed in epoch N, CPU, channels-last, code …)`` for what a row records (its code only where it is
    not the page's)."""
    code = row.get("code")
    fell = None if row.get("diverged_in_epoch") else collapse_epoch(row.get("test_acc_per_epoch", []))
    notes = [note for note in (f"collapsed in epoch {fell}" if fell else None, row.get("cpu"),
                               "channels-last" if row.get("channels_last") else None,
                               f"code {code[:12]}" if code and code != page_code else None) if note]
    return f" ({', '.join(notes)})" if notes else ""


def _finished(row: dict) -> bool:
    """Whether a result row is a finished run: all epochs trained, or stopped by a divergence."""
    return row["epochs_done"] >= EPOCHS or bool(row.get("diverged_in_epoch"))


def _seed_result(row: dict, page_code: str | None) -> str:
    """``s<seed> <final error>`` or ``s<seed> diverged in epoch N``, with the row's notes."""
    outcome = (f"diverged in epoch {row['diverged_in_epoch']}" if row.get("diverged_in_epoch")
               else f"{row['test_error']:.2f}")
    return f"s{row['seed']} {outcome}{_run_notes(row, page_code)}"


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (f"median {statistics.median(values):.2f}, mean {statistics.fmean(values):.2f} ± "
            f"{statistics.stdev(values):.2f}")


def render(jobs: list[Job], runs_dir: Path, rows: list[dict], early: dict[str, float], early_epochs: int,
           code: str | None) -> str:
    """The Markdown page: early-collapse table from ``early`` (see :func:`early_accuracies`), 100-epoch table from
    the rows; the runs in progress from the run folders."""
    lines = [
        "# LeNet-5-Caffe on MNIST at 5 %: sparse momentum, its robustness option and baselines",
        "",
        "Command: `python benchmarks/sparse_momentum/lenet5_queue.py --stage early|full` (each run is "
        "`sparsecore train --recipe snfs-lenet5 [arm flags] --seed S --threads 1`)" +
        (f"; code of commit `{code[:12]}`" if code else "") + ".  ",
        "Machine: shared 2-core CPU VMs, one torch thread per run, CPU only. The same seed follows a different "
        "trajectory on another CPU kind (their vector kernels round differently), so each finished run names the "
        "CPU it ran on (rows without one predate that record), and `channels-last` where the run used "
        "`sparsecore train --channels-last` (the queue's `--channels-last`: the same arithmetic with the "
        "convolution weights in another memory layout, so other rounding, in about 0.77 of the step time; "
        "`benchmarks/results/channels_last.md`).  ",
        "Recipe `snfs-lenet5`: LeNet-5-Caffe, MNIST (all 60,000 training images), uniform 5 % on every layer, "
        "SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4, batch 100, lr ×0.1 every 25,000 iterations, "
        "100 epochs; sparse momentum: prune rate 0.5 cosine-decayed to 0.005, an update after every epoch but "
        "the last. `warmup_steps=100` (a deviation from the paper, off by default): the 100 steps after each "
        f"update ramp the learning rate linearly from 1/100 back to its value. Published: {PUBLISHED}.",
        "",
        f"## Early collapse (test accuracy after epoch {early_epochs})",
        "",
        f"A run counts as collapsed when its test accuracy (10,000 images) after epoch {early_epochs} is below "
        f"{100 * COLLAPSE_BELOW:.0f} % (chance ~10 %): the second topology update follows epoch 2. This measures "
        "the early collapse rate only; a run that survives it may still collapse later. A seed with a 100-epoch "
        "row below shows that run's value; the others, the run that measured the early stage "
        "(`sparse_momentum_lenet5_early.jsonl`, which names its CPU where recorded).",
        "",
        f"| arm | seeds measured | collapsed early | accuracy after epoch {early_epochs} per seed (%) |",
        "|---|---|---|---|",
    ]
    for arm in ARMS:
        measured = {int(job.name.rsplit("-s", 1)[1]): early[job.name]
                    for job in jobs if job.labels["arm"] == arm and job.name in early}
        if measured:
            collapsed = sum(a < COLLAPSE_BELOW for a in measured.values())
            per = ", ".join(f"s{s} {100 * a:.1f}" for s, a in sorted(measured.items()))
            lines.append(f"| {arm} | {len(measured)} | {collapsed} of {len(measured)} | {per} |")
    lines += ["", f"## {EPOCHS} epochs (test error after the final epoch)", "",
              "Collapsed: final test error above 50 %; \"collapsed in epoch N\": test accuracy stayed below 50 % from "
              "epoch N to the end. Diverged: `sparsecore train` stopped the run because its training loss became "
              "non-finite in the epoch named (it keeps the checkpoint of the epoch before; resuming repeats the "
              "divergence), so it has no final error. Statistics are over the runs that neither collapsed nor "
              "diverged.", "",
              "| arm | finished seeds | collapsed or diverged | test error of the others (%) | ≤ 0.75 % | per seed (%) |",
              "|---|---|---|---|---|---|"]
    for arm in ARMS:
        done = sorted((r for r in rows if r.get("arm") == arm and _finished(r)), key=lambda r: r["seed"])
        if not done:
            continue
        ok = [r["test_error"] for r in done
              if not r.get("diverged_in_epoch") and r["test_error"] <= 100 * (1 - COLLAPSE_BELOW)]
        per = ", ".join(_seed_result(r, code) for r in done)
        lines.append(f"| {arm} | {len(done)} | {len(done) - len(ok)} | {_stats(ok)} | "
                     f"{sum(e <= 0.75 for e in ok)} of {len(done)} | {per} |")
    finished = {r["run"] for r in rows if _finished(r)}
    running = [job.name for job in jobs if 0 < epochs_done(runs_dir / job.name) < EPOCHS and job.name not in finished]
    if running:
        lines += ["", "Unfinished runs (epochs done): " + ", ".join(
            f"{name} ({epochs_done(runs_dir / name)})" for name in running) + "."]
    lines += ["", "Raw rows (per-epoch test accuracy): `benchmarks/results/sparse_momentum_lenet5_runs.jsonl`; "
              "accuracy after the early stage: `benchmarks/results/sparse_momentum_lenet5_early.jsonl`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run a stage of the queue (or only render), recording each finished run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["early", "full"], default="early")
    p.add_argument("--early-epochs", type=int, default=3)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--channels-last", action="store_true",
                   help="start new runs with sparsecore train --channels-last (the code of --code must have it)")
    add_queue_arguments(p, "lenet5", RESULTS)
    args = p.parse_args(argv)
    jobs = [job for job in all_jobs(args.channels_last) if job.labels["arm"] in args.arms]
    code = queue_code(args, ROOT)

    # accuracy after the early stage, kept beside the results (run folders do not outlive a machine)
    early_path = args.results.with_name(args.results.stem.removesuffix("_runs") + "_early.jsonl")
    folders = {job.name: args.runs_dir / job.name for job in jobs}

    def record(*_: object) -> None:
        append_finished(jobs, args.runs_dir, args.results, {"code": code})
        record_early(jobs, args.runs_dir, early_path, args.early_epochs)
        rows = read_rows(args.results)
        early = early_accuracies(early_path, args.early_epochs, rows, folders)
        args.results.with_suffix(".md").write_text(render(all_jobs(), args.runs_dir, rows, early, args.early_epochs,
                                                          code))
        if args.results == RESULTS:  # the MNIST table (docs home page) shows the finished runs too
            render_mnist_table.main(["--lenet5-runs", str(args.results), "--quiet"])

    if not args.render_only:
        pythonpath = prepare_code(p, args, code, ROOT)
        if args.stage == "early":
            queue = sorted((job for job in jobs if job.labels["arm"] in (FAITHFUL, ROBUST)),
                           key=lambda job: (int(job.name.rsplit("-s", 1)[1]), job.labels["arm"] != ROBUST))
            target = args.early_epochs
        else:
            early = early_accuracies(early_path, args.early_epochs, read_rows(args.results), folders)
            queue = full_order(jobs, args.runs_dir, args.early_epochs, early)
            target = EPOCHS
        failed = run_queue(queue, args.runs_dir, lambda job: target, args.parallel, record, pythonpath=pythonpath,
                           skip=recorded_runs(args.results), start_until=args.start_until)
        if failed:
            print(f"failed: {', '.join(failed)} (logs in {args.runs_dir})", file=sys.stderr)
    record()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
