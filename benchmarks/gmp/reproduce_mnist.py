"""Gradual magnitude pruning on MNIST LeNet-300-100 with the sparse-momentum reference recipe.

The training loop, data split, evaluation and machine description are those of
``benchmarks/sparse_momentum/reproduce_mnist.py`` (imported, not copied): 100
epochs, batch 100, SGD lr 0.1, momentum 0.9 nesterov, weight decay 5e-4, lr
x0.1 every 25,000 iterations, training on the first 54,000 training images
(540 steps per epoch, 54,000 steps), test error on the 10,000 test images
after the last epoch. So the rows compare with the dense, static, SNIP and
sparse-momentum rows of ``benchmarks/results/mnist_table.md``.

GMP: the run starts dense; from 10 % to 50 % of the steps (steps 5,400 to
27,000) every layer is pruned every 100 steps on the cubic ramp to the
final density (uniform over the three layers, per-layer magnitude), then
trains at the final masks for the other half of the run (which includes both
learning-rate decays). Options change with ``--start``, ``--end``,
``--update-every``, ``--prune global_magnitude``.

Each finished run appends one JSON line to ``benchmarks/results/gmp_mnist.jsonl``
(the keys of the shared script's rows plus the GMP options, the run's
``train_flops_ratio`` against dense training and its step-averaged density);
runs already there are skipped, so the script can be restarted. After every
run ``benchmarks/results/gmp_mnist.md`` is re-rendered (``--render`` only
renders).

Example::

    nice -n 10 python benchmarks/gmp/reproduce_mnist.py --densities 0.05 --seeds 0 1 2
    python benchmarks/gmp/reproduce_mnist.py --epochs 1 --limit-train 2000 --seeds 0 --out gmp-smoke.jsonl   # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RUNS = RESULTS / "gmp_mnist.jsonl"
DEFAULT_TABLE = RESULTS / "gmp_mnist.md"
SHARED_RUNS = RESULTS / "mnist_runs.jsonl"
MODEL = "lenet-300-100"


def _load_reference_script():
    """``benchmarks/sparse_momentum/reproduce_mnist.py`` as a module (it is a script, not a package)."""
    path = ROOT / "benchmarks" / "sparse_momentum" / "reproduce_mnist.py"
    spec = importlib.util.spec_from_file_location("sparse_momentum_reproduce_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference_script()


def method_name(args: argparse.Namespace) -> str:
    """The row's method label: ``gmp``, with the options that differ from this script's recipe."""
    extras = []
    if args.prune != "magnitude":
        extras.append(f"prune={args.prune}")
    if (args.start, args.end, args.update_every) != (0.1, 0.5, 100):
        extras.append(f"start={args.start:g}, end={args.end:g}, every={args.update_every}")
    return "gmp" + (f" ({'; '.join(extras)})" if extras else "")


def gmp_options(args: argparse.Namespace) -> dict:
    """The algorithm options of this run."""
    return {"start": args.start, "end": args.end, "update_every": args.update_every, "prune": args.prune}


def whole_run_flops(args: argparse.Namespace, density: float, total_steps: int, data) -> dict:
    """The run's training FLOPs against dense, from GMP's schedule (per-layer mode; exact before training)."""
    model = create_model(MODEL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="gmp", density=density,
                                       total_steps=total_steps, seed=0, **gmp_options(args))
    try:
        with torch.no_grad():
            model(data.train.x[:1])  # records the layers' output sizes
        return sparsifier.algorithm.train_flops(sparsifier).as_dict()
    finally:
        sparsifier.remove()


def run_one(args: argparse.Namespace, density: float, seed: int, data) -> dict:
    """Train one GMP model with the shared script's ``run`` and return its result row."""
    method = method_name(args)
    reference.METHODS[method] = ("gmp", gmp_options(args))
    row = reference.run(method, MODEL, density, seed, args.epochs, data, args)
    n_train = int(math.floor((1.0 - args.valid_split) * data.train.x.shape[0]))
    total_steps = math.ceil(n_train / args.batch_size) * args.epochs
    row.update({"start": args.start, "end": args.end, "update_every": args.update_every, "prune": args.prune})
    if args.prune == "magnitude":
        flops = whole_run_flops(args, density, total_steps, data)
        row["train_flops_ratio"] = round(flops["ratio"], 4)
        row["mean_density"] = round(flops["mean_density"], 4)
    return row


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _shared_rows(methods: tuple[str, ...]) -> dict[tuple[str, float], list[float]]:
    """Test errors of the shared table's 100-epoch LeNet-300-100 rows (same recipe, same machine)."""
    found: dict[tuple[str, float], list[float]] = defaultdict(list)
    if SHARED_RUNS.exists():
        for line in SHARED_RUNS.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row["model"] == MODEL and row["method"] in methods and int(row["epochs"]) == 100:
                    found[(row["method"], float(row["density"]))].append(float(row["test_error"]))
    return found


def render(runs: Path, out: Path) -> None:
    """Write the Markdown table of every row of ``runs`` to ``out`` (atomically)."""
    rows = [json.loads(line) for line in runs.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if runs.exists() else []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], float(row["density"]), int(row["epochs"]))].append(row)
    shared = _shared_rows(("dense", "sparse-momentum", "snip", "static"))
    lines = [
        "# GMP (gradual magnitude pruning) on MNIST LeNet-300-100",
        "",
        "Metric: test error (%) on the 10,000 MNIST test images after the last epoch (no best-epoch selection); "
        "mean ± sample std over seeds.",
        "",
        "Recipe (the sparse-momentum reference recipe, `benchmarks/sparse_momentum/reproduce_mnist.py`): "
        "100 epochs, batch 100, SGD lr 0.1 momentum 0.9 nesterov, weight decay 5e-4, lr ×0.1 every 25,000 "
        "iterations, training on the first 54,000 training images (540 steps per epoch, 54,000 steps). "
        "GMP: dense start; cubic ramp from step 5,400 (10 %) to step 27,000 (50 %), pruning every 100 steps; "
        "per-layer magnitude, uniform density over the three Linear weights (biases dense); pruned weights, "
        "their gradients and momentum stay 0; final masks fixed for the second half (both lr decays).",
        "",
        "| method | density | epochs | seeds | test error % | per seed | train FLOPs vs dense | "
        "mean density over the run | wall per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, density, epochs), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        group.sort(key=lambda r: r["seed"])
        errors = [float(r["test_error"]) for r in group]
        per_seed = ", ".join(f"s{r['seed']}: {float(r['test_error']):.2f}" for r in group)
        ratio = group[0].get("train_flops_ratio")
        mean_density = group[0].get("mean_density")
        wall = statistics.mean(float(r["wall_s"]) for r in group) / 60
        lines.append(f"| {method} | {density:g} | {epochs} | {len(group)} | {_mean_std(errors)} | {per_seed} | "
                     f"{'—' if ratio is None else f'{ratio:.3f}'} | "
                     f"{'—' if mean_density is None else f'{mean_density:.3f}'} | {wall:.1f} min |")
    if shared:
        lines += ["", "Same recipe, same machine, from `benchmarks/results/mnist_runs.jsonl` (sparse-to-sparse "
                  "or dense; train FLOPs vs dense ≈ density for the sparse ones, 1 for dense):", "",
                  "| method | density | seeds | test error % |", "|---|---|---|---|"]
        for (method, density), errors in sorted(shared.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            lines.append(f"| {method} | {density:g} | {len(errors)} | {_mean_std(errors)} |")
    machines = sorted({f"{r.get('machine', '?')}, torch {r.get('torch', '?')}" for r in rows})
    lines += [
        "",
        "## Notes",
        "",
        f"- Machine: {'; '.join(machines) if machines else 'no run yet'}; every run at `nice -n 10`, one torch "
        "thread, beside other jobs on the shared 2-core machine (wall time is a cost indication, not a speed "
        "measurement).",
        "- \"train FLOPs vs dense\": `GMPAlgorithm.train_flops()`, the whole run's training FLOPs (6 FLOPs per "
        "active weight per sample and step, masked weight gradients) over dense training of the same layers; "
        "the first 10 % of the run is dense and the ramp is mostly dense early, so GMP costs several times "
        "a sparse-to-sparse run at the same final density. `sparsifier.report()` at the end shows only the "
        "final masks' per-step cost (≈ the density). For an MLP (one output position per layer) the ratio "
        "equals the step-averaged density.",
        "- `final_density` in the JSON rows is the density of the sparse layers after training.",
        "",
        "## Command",
        "",
        "`nice -n 10 python benchmarks/gmp/reproduce_mnist.py --densities D --seeds S...` (one process per "
        "density, in the background); `python benchmarks/gmp/reproduce_mnist.py --render` re-renders this file.",
    ]
    tmp = out.with_suffix(out.suffix + f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the recipe above."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--densities", nargs="+", type=float, default=[0.05], help="final densities")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--start", type=float, default=0.1, help="first pruning step, fraction of the run")
    p.add_argument("--end", type=float, default=0.5, help="last pruning step, fraction of the run")
    p.add_argument("--update-every", type=int, default=100, help="optimizer steps between pruning steps")
    p.add_argument("--prune", choices=["magnitude", "global_magnitude"], default="magnitude")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--decay-frequency", type=int, default=25000, help="iterations between lr x0.1")
    p.add_argument("--valid-split", type=float, default=0.1, help="fraction of the training images held out")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--limit-train", type=int, default=None, help="smoke tests only: fewer training images")
    p.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="JSON-lines file the rows are appended to")
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="Markdown table rendered from --out")
    p.add_argument("--render", action="store_true", help="only re-render the table")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every (density, seed) pair not yet recorded, appending each row as it finishes."""
    args = parse_args(argv)
    if args.render:
        render(args.out, args.table)
        return 0
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", limit_train=args.limit_train)
    done = reference.done_runs(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    for density in args.densities:
        for seed in args.seeds:
            key = (method_name(args), MODEL, float(density), seed, args.epochs)
            if key in done:
                print(f"skip (done): {key}", flush=True)
                continue
            print(f"run {key}", flush=True)
            row = run_one(args, density, seed, data)
            print(json.dumps(row), flush=True)
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            done.add(key)
            render(args.out, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
