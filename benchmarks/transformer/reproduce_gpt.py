"""Train the byte-level ``gpt-tiny`` on ``python-stdlib``: dense vs static, SET, sparse momentum and RigL.

Every run is the training harness (``sparsecore.train.run_training``, what
``sparsecore train`` runs) with one recipe:

* data: ``python-stdlib``, the running interpreter's standard-library
  sources, 128-byte windows; 400 random training windows per epoch
  (``--limit-train 400``), 256 fixed test windows spread over the test files;
* model: ``gpt-tiny`` (2 blocks, width 128, 4 heads; the 12 attention and MLP
  projections sparse, embeddings / tied head / norms dense);
* optimizer: Adam, lr 1e-3, no weight decay, cosine decay over the run, batch
  16, 10 epochs (250 steps). Adam for every row, sparse momentum included
  (the engine gives it Adam's normalised first moment as its momentum),
  since transformers are trained with Adam;
* sparse rows: ERK densities (the same per-layer budgets for every method),
  each algorithm's own prune schedule; RigL updates every 25 steps (once per
  epoch, as SET and sparse momentum do) instead of every 100.

The metric is the test loss in bits per byte after the last epoch (lower is better).

Runs go to subprocesses, at most ``--jobs`` at a time (each with ``--threads``
torch threads). Every finished run appends one JSON line to
``benchmarks/results/gpt_tiny.jsonl``; runs already there are skipped, so the
script can be restarted. The table ``benchmarks/results/gpt_tiny.md`` is
re-rendered after every run.

Example::

    python benchmarks/transformer/reproduce_gpt.py --densities 0.1 0.05 --seeds 0 1 2 --jobs 2
    python benchmarks/transformer/reproduce_gpt.py --render   # only re-render the table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "benchmarks" / "results" / "gpt_tiny.jsonl"
TABLE = ROOT / "benchmarks" / "results" / "gpt_tiny.md"
METHODS = ("dense", "static", "set", "sparse-momentum", "rigl")
#: The recipe shared by every row (``TrainConfig`` fields).
RECIPE: dict[str, Any] = {
    "model": "gpt-tiny", "dataset": "python-stdlib", "epochs": 10, "batch_size": 16, "limit_train": 400,
    "limit_test": 256, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
    "lr_schedule": "cosine", "device": "cpu", "plots": False, "quiet": True,
}
#: Algorithm options per method (RigL: one update per epoch of 25 steps, like the epoch-scheduled methods).
OPTIONS: dict[str, dict[str, Any]] = {"rigl": {"update_every": 25}}


def run_config(method: str, density: float, seed: int, threads: int, runs_dir: str) -> dict[str, Any]:
    """The ``TrainConfig`` fields of one run."""
    fields = {**RECIPE, "seed": seed, "threads": threads, "runs_dir": runs_dir,
              "run_name": f"{method}-{density}-s{seed}"}
    if method == "dense":
        return {**fields, "dense": True}
    return {**fields, "algorithm": method, "density": density, "distribution": "erk",
            "options": dict(OPTIONS.get(method, {}))}


def command(method: str, density: float, seed: int) -> str:
    """The equivalent ``sparsecore train`` command line of one run."""
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in RECIPE.items() if k not in ("plots", "quiet", "device")]
    flags += [f"--seed {seed}", "--threads 1", "--device cpu", "--no-plots"]
    if method == "dense":
        flags.append("--dense")
    else:
        flags += [f"--algorithm {method}", f"--density {density}", "--distribution erk"]
        flags += [f"--option {k}={v}" for k, v in OPTIONS.get(method, {}).items()]
    return "sparsecore train " + " ".join(flags)


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run in this process and return its row."""
    from sparsecore.train import TrainConfig, run_training

    load = os.getloadavg()[0]
    result = run_training(TrainConfig(**run_config(spec["method"], spec["density"], spec["seed"], spec["threads"],
                                                   spec["runs_dir"])))
    last = result.metrics[-1]
    return {"method": spec["method"], "density": spec["density"], "seed": spec["seed"],
            "epochs": result.epochs_done, "steps": last["step"],
            "test_bits_per_byte": result.test_bits_per_byte, "train_bits_per_byte": last["train_bits_per_byte"],
            "test_next_byte_acc": result.test_accuracy, "final_density": result.density,
            "test_bpb_per_epoch": [m["test_bits_per_byte"] for m in result.metrics],
            "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
            "threads": spec["threads"], "load_average_at_start": load, "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command(spec["method"], spec["density"], spec["seed"])}


def machine() -> str:
    """CPU model, core count, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def done_runs(path: Path) -> set[tuple[str, float, int]]:
    """(method, density, seed) of the rows already in ``path``."""
    if not path.is_file():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["method"], float(r["density"]), int(r["seed"])) for r in rows}


def render(path: Path = RUNS, out: Path = TABLE) -> None:
    """Write the markdown table of the rows in ``path``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["density"])), []).append(r)

    def order(key: tuple[str, float]) -> tuple[int, float]:
        return (0 if key[0] == "dense" else 1, -key[1], METHODS.index(key[0]) if key[0] in METHODS else 99)

    lines = ["# gpt-tiny on python-stdlib: test bits per byte", "",
             "Byte-level `gpt-tiny` (2 blocks, width 128, 4 heads, 128-byte context; 0.39 M weights in the 12 "
             "attention and MLP projections, which are the sparse layers; embeddings, the tied output head and "
             "the layer norms stay dense) trained on the CPython 3.11.7 standard library's sources "
             "(`python-stdlib`: 734 files, 10.95 MB training / 1.17 MB test bytes, split by file). "
             "Metric: test loss in bits per byte after the last epoch, on 256 fixed 128-byte windows spread "
             "over the test files (lower is better).", "",
             "Recipe (every row): 10 epochs of 400 random training windows, batch 16 (250 steps), Adam lr 1e-3 "
             "with cosine decay, no weight decay; sparse rows ERK densities; each algorithm's default prune "
             "schedule, RigL updating every 25 steps (once per epoch, like SET and sparse momentum). Adam for "
             "every row, sparse momentum included (it reads Adam's normalised first moment as its momentum), "
             "since transformers are trained with Adam. Produced by "
             "`python benchmarks/transformer/reproduce_gpt.py --densities 0.1 0.05 --seeds 0 1 2 --jobs 2`.", "",
             "| method | density | test bits/byte (mean ± sd) | seeds | train bits/byte | next-byte acc | "
             "train s / run |", "|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=order):
        g = groups[key]
        bpb = [r["test_bits_per_byte"] for r in g]
        sd = f" ± {statistics.stdev(bpb):.3f}" if len(bpb) > 1 else ""
        lines.append(f"| {key[0]} | {'1.0' if key[0] == 'dense' else f'{key[1]:.0%}'} | "
                     f"{statistics.fmean(bpb):.3f}{sd} | {', '.join(str(r['seed']) for r in g)} | "
                     f"{statistics.fmean(r['train_bits_per_byte'] for r in g):.3f} | "
                     f"{statistics.fmean(r['test_next_byte_acc'] for r in g):.1%} | "
                     f"{statistics.fmean(r['train_seconds'] for r in g):.0f} |")
    if rows:
        dates = sorted(r["date"] for r in rows)
        steps = sorted({r["steps"] for r in rows})
        loads = [r["load_average_at_start"] for r in rows]
        lines += ["", f"- machine: {rows[0]['machine']}; `--threads 1` per run, two runs at a time on a shared "
                      f"machine (1-minute load average at run start {min(loads):.1f} to {max(loads):.1f}), so the "
                      "seconds compare only roughly.",
                  f"- dates: {dates[0]} to {dates[-1]}; optimizer steps per run: {', '.join(map(str, steps))}.",
                  f"- command of each run (in the jsonl), e.g.: `{rows[-1]['command']}`",
                  "- 250 steps (0.5 M training bytes) is early training: no model here is near convergence, so "
                  "the rows compare how far each method gets on one small, fixed budget, not final quality.",
                  "- raw rows (per-epoch test bits per byte included): `benchmarks/results/gpt_tiny.jsonl`."]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.05])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=RUNS, help="JSON-lines file the rows are appended to")
    parser.add_argument("--render", action="store_true", help="only re-render the table")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # worker mode: a JSON spec; prints the row
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))), flush=True)
        return 0
    if args.render:
        render(args.out)
        return 0
    done = done_runs(args.out)
    pending = []
    for seed in args.seeds:  # every method and density of one seed before the next seed
        for density in args.densities:
            for method in args.methods:
                d = 1.0 if method == "dense" else float(density)
                if (method, d, seed) not in done and not any(p["method"] == method and p["density"] == d
                                                              and p["seed"] == seed for p in pending):
                    pending.append({"method": method, "density": d, "seed": seed})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpt-tiny-runs-") as runs_dir:
        running: list[tuple[dict[str, Any], subprocess.Popen[str]]] = []
        failed = 0
        while pending or running:
            while pending and len(running) < args.jobs:
                spec = {**pending.pop(0), "threads": args.threads, "runs_dir": runs_dir}
                print(f"start {spec['method']} density {spec['density']} seed {spec['seed']}", flush=True)
                proc = subprocess.Popen([sys.executable, __file__, "--run-one", json.dumps(spec)],
                                        stdout=subprocess.PIPE, text=True)
                running.append((spec, proc))
            time.sleep(2)
            for spec, proc in list(running):
                if proc.poll() is None:
                    continue
                running.remove((spec, proc))
                out = proc.stdout.read() if proc.stdout else ""
                if proc.returncode != 0:
                    print(f"FAILED ({proc.returncode}): {spec}", file=sys.stderr, flush=True)
                    failed += 1
                    continue
                row = json.loads(out.strip().splitlines()[-1])
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"done {row['method']} {row['density']} seed {row['seed']}: test bpb "
                      f"{row['test_bits_per_byte']:.4f} ({row['train_seconds']:.0f} s)", flush=True)
                if args.out == RUNS:
                    render(args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
