"""LeNet-300-100 on MNIST at N:M sparsity (2:4 by default): static, sr-ste and asp with the reference recipe.

Recipe (the MNIST recipe of sparse momentum's reference code, as in
``benchmarks/sparse_momentum/reproduce_mnist.py``): 100 epochs, batch 100,
SGD lr 0.1, momentum 0.9, nesterov, weight decay 5e-4, learning rate x0.1 every
25,000 iterations (stepped per iteration), NLL loss on log-softmax outputs,
training on the first 54,000 of the 60,000 training images; the number
reported is the error on the 10,000 test images after the last epoch. Every
Linear weight is N:M sparse (784, 300 and 100 inputs all divide by 4); biases
stay dense.

* ``static``: a random N:M mask, fixed.
* ``rigl``: RigL's defaults (drop fraction 0.3 on a cosine decay to 75 % of
  training, an update every 100 steps), pruning and regrowing within each
  group so that every group keeps exactly N.
* ``sr-ste``: SR-STE with ``lambda_w=2e-4`` (the paper's value).
* ``asp``: dense for the first half of the steps, pruned to N:M by magnitude,
  fine-tuned for the second half.

Every finished run appends one JSON line to ``benchmarks/results/nm_mnist_runs.jsonl``
(runs already there are skipped, so the script can be restarted) and rewrites
``benchmarks/results/nm_mnist.md`` from all recorded runs.

Example::

    nice -n 10 python benchmarks/nm/reproduce_mnist.py --methods static sr-ste asp --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "benchmarks" / "results" / "nm_mnist_runs.jsonl"
TABLE = ROOT / "benchmarks" / "results" / "nm_mnist.md"
REFERENCE_RUNS = ROOT / "benchmarks" / "results" / "mnist_runs.jsonl"  # the dense baseline of the same recipe

#: method -> algorithm options
METHODS = {"static": {}, "rigl": {}, "sr-ste": {"lambda_w": 2e-4}, "asp": {"dense_fraction": 0.5}}


def machine() -> str:
    """A short description of this machine."""
    return f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), " \
           f"{torch.get_num_threads()} torch threads"


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Error in % of ``model`` on ``(x, y)``."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            wrong += int((model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]).sum())
    model.train()
    return 100.0 * wrong / x.shape[0]


def run(method: str, pattern: str, seed: int, epochs: int, data, args) -> dict:
    """Train LeNet-300-100 with the reference recipe and one N:M method; return its result row."""
    torch.manual_seed(seed)
    model = create_model("lenet-300-100")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    n_train = math.floor((1.0 - args.valid_split) * data.train.x.shape[0])
    x_train, y_train = data.train.x[:n_train], data.train.y[:n_train]
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=method, pattern=pattern,
                                       total_steps=steps_per_epoch * epochs, seed=seed, **METHODS[method])
    gen = torch.Generator().manual_seed(seed)
    iteration = 0
    start = time.time()
    for epoch in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for i in range(0, n_train, args.batch_size):
            lr = args.lr * 0.1 ** ((iteration + 1) // args.decay_frequency)  # StepLR stepped before every batch
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i:i + args.batch_size]
            optimizer.zero_grad()
            F.nll_loss(model(x_train[idx]), y_train[idx]).backward()
            optimizer.step()
            iteration += 1
        sparsifier.epoch_end(epoch)
        if args.verbose:
            print(f"  epoch {epoch + 1}/{epochs} {sparsifier.algorithm_metrics()} {time.time() - start:.0f}s",
                  flush=True)
    wall = time.time() - start
    error = evaluate(model, data.test.x, data.test.y)  # the forward the model trains with (masked for sr-ste)
    n, m = map(int, pattern.split(":"))
    exact = all(bool((layer.mask.movedim(1, -1).reshape(-1, m).sum(1) == n).all())
                for layer in sparsifier.layers.values())
    return {"method": method, "pattern": pattern, "model": "lenet-300-100", "seed": seed, "epochs": epochs,
            "test_error": round(error, 4), "final_density": round(sparsifier.nnz / sum(
                layer.capacity for layer in sparsifier.layers.values()), 6), "every_group_exact": exact,
            "wall_s": round(wall, 1), "machine": machine(), "torch": torch.__version__,
            "command": " ".join(["python", "benchmarks/nm/reproduce_mnist.py",
                                 *(arg.replace(f"{ROOT}/", "") for arg in sys.argv[1:])])}


def summary(values: list[float]) -> str:
    """``mean ± sample std`` (just the value for one run)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(rows: list[dict], reference: list[dict]) -> str:
    """The Markdown page of all recorded runs."""
    lines = ["# MNIST at N:M sparsity: static, RigL, SR-STE and ASP", "",
             "LeNet-300-100, test error (%) on the 10,000 MNIST test images after the last epoch; mean ± sample "
             "std over seeds. Recipe of sparse momentum's reference code: batch 100, SGD lr 0.1, momentum 0.9 "
             "nesterov, weight decay 5e-4, lr ×0.1 every 25,000 iterations, training on the first 54,000 "
             "training images. All three Linear layers are N:M sparse along their inputs; biases dense. "
             "SR-STE: λ_W = 2e-4; ASP: dense for the first half of the steps, then pruned once by magnitude "
             "and fine-tuned. No published LeNet-300-100 numbers exist for these methods.", "",
             "| pattern | method | density | epochs | seeds | test error % | per seed | every group exact | "
             "wall per run |", "|---|---|---|---|---|---|---|---|---|"]
    dense = [r for r in reference if r["method"] == "dense" and r["model"] == "lenet-300-100"
             and r["epochs"] == 100]
    keys = sorted({(r["pattern"], r["method"], r["epochs"]) for r in rows},
                  key=lambda k: (k[0], list(METHODS).index(k[1]) if k[1] in METHODS else 99, k[2]))
    for pattern, method, epochs in keys:
        group = sorted((r for r in rows if (r["pattern"], r["method"], r["epochs"]) == (pattern, method, epochs)),
                       key=lambda r: r["seed"])
        errors = [r["test_error"] for r in group]
        per_seed = ", ".join(f"s{r['seed']}: {r['test_error']:.2f}" for r in group)
        exact = "yes" if all(r["every_group_exact"] for r in group) else "NO"
        wall = statistics.mean(r["wall_s"] for r in group) / 60
        lines.append(f"| {pattern} | {method} | {group[0]['final_density']:g} | {epochs} | {len(group)} | "
                     f"{summary(errors)} | {per_seed} | {exact} | {wall:.1f} min |")
    if dense:
        dense = sorted(dense, key=lambda r: r["seed"])
        per_seed = ", ".join(f"s{r['seed']}: {r['test_error']:.2f}" for r in dense)
        lines.append(f"| dense (reference) | dense | 1 | 100 | {len(dense)} | "
                     f"{summary([r['test_error'] for r in dense])} | {per_seed} | — | "
                     f"{statistics.mean(r['wall_s'] for r in dense) / 60:.1f} min |")
    machines = sorted({f"{r['machine']}, torch {r['torch']}" for r in rows})
    commands = sorted({r["command"] for r in rows})
    lines += ["", "## Notes", "",
              f"- Machine: {'; '.join(machines)}. Each run on one torch thread at `nice -n 10` on a shared "
              "machine; wall time is a cost indication, not a speed measurement.",
              "- Command(s): " + "; ".join(f"`{c}`" for c in commands) + ".",
              "- The dense row is the same recipe's dense baseline from `benchmarks/results/mnist_runs.jsonl`.",
              "- \"every group exact\": after the last epoch every group of M weights held exactly N active ones.",
              "- SR-STE's error is measured with the model's sparse forward (W ⊙ mask); its dense weights are "
              "not used."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--decay-frequency", type=int, default=25000, help="iterations between lr x0.1")
    parser.add_argument("--valid-split", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit-train", type=int, default=None, help="smoke tests only: fewer training images")
    parser.add_argument("--out", type=Path, default=RUNS)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", limit_train=args.limit_train)
    done = {(r["method"], r["pattern"], r["seed"], r["epochs"]) for r in read_rows(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            key = (method, args.pattern, seed, args.epochs)
            if key in done:
                print(f"skip (done): {key}", flush=True)
                continue
            print(f"run {key}", flush=True)
            row = run(method, args.pattern, seed, args.epochs, data, args)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.add(key)
            args.table.write_text(render(read_rows(args.out), read_rows(REFERENCE_RUNS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
