"""Training and inference FLOPs of every algorithm against dense, on LeNet-300-100 (MNIST): RigL's FLOPs columns.

Each row trains ``sparsecore train``'s LeNet-300-100 for ``--epochs`` epochs
on the first ``--limit-train`` MNIST images (batch 100) and reads the engine's
counts (analytic, a multiply-add counting 2, sparse layers only):

* *per step at the end*: ``report().train_flops_ratio`` with the final masks;
* *over the run*: ``Sparsifier.run_flops().ratio``, each step charged with the
  masks in force during it (what RigL's tables call "FLOPs (train)");
* *inference*: ``report().forward_flops_ratio`` ("FLOPs (test)").

By default every row trains as long as the runs of ``mnist_table.md`` (the
first 54,000 training images, 100 epochs: 54,000 steps), so the step-counted
schedules (RigL's and GMP's updates every 100 steps) run exactly as there.
Evaluation uses only the first ``--limit-test`` test images: no accuracy is
reported.

Usage:
    python benchmarks/flops_table.py --output benchmarks/results/flops_mnist.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from typing import Any

import torch

from sparsecore.train import TrainConfig, run_training

#: (row label, algorithm or None for dense, density, algorithm options, what decides the cost)
ROWS: list[tuple[str, str | None, float | None, dict[str, Any], str]] = [
    ("dense", None, None, {}, "dense training"),
    ("static", "static", 0.05, {}, "fixed random mask, masked gradients"),
    ("set", "set", 0.05, {}, "masked gradients; counts kept per layer"),
    ("snip", "snip", 0.05, {}, "pruned once at initialisation, then static"),
    ("rigl", "rigl", 0.05, {}, "ERK densities; dense weight gradient every 100 steps until 75 % of training"),
    ("rigl (uniform)", "rigl", 0.05, {"distribution": "uniform"}, "as rigl, uniform densities"),
    ("sparse-momentum", "sparse-momentum", 0.05, {},
     "dense weight gradients every step (momentum of every weight)"),
    ("gmp", "gmp", 0.05, {}, "dense until 10 % of training, cubic ramp to 5 % at 75 %, pruning every 100 steps"),
    ("dsd", "dsd", None, {}, "dense, sparse (density 0.7), dense phases of equal length"),
    ("swat (U, 80 %)", "swat", 0.2, {"variant": "uniform"},
     "top-K weights in the forward, top-K activations for the weight gradient"),
]


def measure(label: str, algorithm: str | None, density: float | None, options: dict[str, Any],
            args: argparse.Namespace, runs_dir: str) -> dict[str, Any]:
    """Train one row and read its FLOPs ratios."""
    options = dict(options)
    distribution = options.pop("distribution", None)
    config = TrainConfig(algorithm=algorithm, dense=algorithm is None, density=density, distribution=distribution,
                         options=options, model="lenet-300-100", dataset="mnist", epochs=args.epochs,
                         limit_train=args.limit_train, limit_test=args.limit_test, batch_size=100, seed=0,
                         threads=args.threads, quiet=True, plots=False, runs_dir=runs_dir)
    result = run_training(config)
    steps = result.sparsifier.step if result.sparsifier is not None else len(result.metrics) * (
        args.limit_train // 100)
    return {"label": label, "density": result.density, "per_step": result.train_flops_ratio,
            "run": result.run_train_flops_ratio, "inference": result.forward_flops_ratio, "steps": steps}


def render(rows: list[dict[str, Any]], notes: dict[str, str], args: argparse.Namespace) -> str:
    """The results file."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["# Training and inference FLOPs against dense: LeNet-300-100 (MNIST)", "",
             f"Command (repository root): `python benchmarks/flops_table.py --epochs {args.epochs} --limit-train "
             f"{args.limit_train}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, Python {platform.python_version()} (the "
             f"figures are analytic counts, the same on any machine).", "",
             f"Each row: `sparsecore train --model lenet-300-100 --dataset mnist --epochs {args.epochs} "
             f"--limit-train {args.limit_train} --batch-size 100 --seed 0` with the algorithm's defaults at 5 % "
             f"(DSD: density 0.7 in its sparse phase; SWAT: 80 % sparsity), {rows[0]['steps']} optimizer steps. FLOPs of the "
             f"sparse layers (all three Linear layers; a multiply-add counts 2) over dense: *per step at the end* "
             f"with the final masks (`Sparsifier.report()`), *over the run* with each step's own masks "
             f"(`Sparsifier.run_flops()`, RigL's \"FLOPs (train)\"), *inference* with the final masks "
             f"(RigL's \"FLOPs (test)\"). Evaluation on the first {args.limit_test} test images only: no accuracy "
             f"is reported (see `mnist_table.md` for the accuracy of these recipes).", "",
             "| method | final density | train FLOPs per step at the end | train FLOPs over the run | "
             "inference FLOPs | what decides the cost |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['density']:.4f} | {fmt(row['per_step'])} | {fmt(row['run'])} | "
                     f"{fmt(row['inference'])} | {notes[row['label']]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run every row and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--limit-train", type=int, default=54000)
    parser.add_argument("--limit-test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the markdown table here as well")
    args = parser.parse_args(argv)
    notes = {label: note for label, *_, note in ROWS}
    with tempfile.TemporaryDirectory() as runs_dir:
        rows = [measure(label, algorithm, density, options, args, runs_dir)
                for label, algorithm, density, options, _ in ROWS]
    text = render(rows, notes, args)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)


if __name__ == "__main__":
    main()
