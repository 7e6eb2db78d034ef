"""Reproduce the MNIST rows of Sparse Momentum (Dettmers & Zettlemoyer 2019) with the reference recipe.

Recipe of the reference code (``mnist_cifar/main.py`` of TimDettmers/sparse_learning):
100 epochs, batch 100, SGD lr 0.1, momentum 0.9, nesterov, weight decay 5e-4,
learning rate x0.1 every 25,000 iterations (stepped per iteration), NLL loss on
log-softmax outputs. ``--valid_split`` defaults to 0.1 there, so training uses
the first 54,000 of the 60,000 training images (the last 6,000 are the
validation split); the reported number is the error on the 10,000 test images
after the last epoch. Sparse momentum: prune rate 0.5 with cosine decay to
0.005, topology update after every epoch but the last, uniform density over
all Linear/Conv weights (biases dense).

Every finished run appends one JSON line to ``benchmarks/results/mnist_runs.jsonl``
(``method, model, density, seed, epochs, test_error`` in %, ``wall_s``, plus
``machine`` and ``torch``); runs already in the file are skipped, so the
script can be restarted. Render the table with ``benchmarks/render_mnist_table.py``.

Example::

    nice -n 10 python benchmarks/sparse_momentum/reproduce_mnist.py \\
        --models lenet-300-100 --methods sparse-momentum --densities 0.05 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = ROOT / "benchmarks" / "results" / "mnist_runs.jsonl"

#: method name in the table -> (algorithm name or None for dense, algorithm options)
METHODS = {
    "sparse-momentum": ("sparse-momentum", {}),
    "sparse-momentum (redistribution=none)": ("sparse-momentum", {"redistribution": "none"}),
    "static": ("static", {}),
    "dense": (None, {}),
}
METHOD_ALIASES = {"sm": "sparse-momentum", "none": "sparse-momentum (redistribution=none)",
                  "sparse-momentum-none": "sparse-momentum (redistribution=none)"}


def machine() -> str:
    """A short description of this machine for the results."""
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core CPU ({cpu}), {torch.get_num_threads()} torch threads"


def done_runs(path: Path) -> set[tuple]:
    """Keys of the runs already recorded in ``path``."""
    keys = set()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                keys.add((row["method"], row["model"], float(row["density"]), int(row["seed"]), int(row["epochs"])))
    return keys


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Error in % of ``model`` on ``(x, y)``."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            wrong += int((model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]).sum())
    model.train()
    return 100.0 * wrong / x.shape[0]


def run(method: str, model_name: str, density: float, seed: int, epochs: int, data, args) -> dict:
    """Train one model with the reference recipe and return its result row."""
    algorithm, options = METHODS[method]
    torch.manual_seed(seed)
    model = create_model(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    n_train = int(math.floor((1.0 - args.valid_split) * data.train.x.shape[0]))
    x_train, y_train = data.train.x[:n_train], data.train.y[:n_train]
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    sparsifier = None
    if algorithm is not None:
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, density=density,
                                           total_steps=steps_per_epoch * epochs, seed=seed, **options)
    gen = torch.Generator().manual_seed(seed)
    iteration = 0
    start = time.time()
    for epoch in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for i in range(0, n_train, args.batch_size):
            # StepLR(25000, 0.1) stepped before every batch, as the reference does
            lr = args.lr * 0.1 ** ((iteration + 1) // args.decay_frequency)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i:i + args.batch_size]
            optimizer.zero_grad()
            F.nll_loss(model(x_train[idx]), y_train[idx]).backward()
            optimizer.step()
            iteration += 1
        if sparsifier is not None:
            sparsifier.epoch_end(epoch)
        if args.verbose:
            nnz = sparsifier.nnz if sparsifier is not None else "dense"
            print(f"  epoch {epoch + 1}/{epochs} nnz={nnz} {time.time() - start:.0f}s", flush=True)
    wall = time.time() - start
    error = evaluate(model, data.test.x, data.test.y)
    row = {"method": method, "model": model_name, "density": float(density), "seed": seed, "epochs": epochs,
           "test_error": round(error, 4), "wall_s": round(wall, 1), "machine": machine(), "torch": torch.__version__}
    if sparsifier is not None:
        row["final_density"] = round(sparsifier.nnz / sum(l.capacity for l in sparsifier.layers.values()), 6)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet-300-100"], help="lenet-300-100, lenet-5-caffe")
    parser.add_argument("--methods", nargs="+", default=["sparse-momentum"],
                        help=f"any of {list(METHODS)} (aliases: {METHOD_ALIASES})")
    parser.add_argument("--densities", nargs="+", type=float, default=[0.05],
                        help="weight densities (dense always runs at 1.0)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--decay-frequency", type=int, default=25000, help="iterations between lr x0.1")
    parser.add_argument("--valid-split", type=float, default=0.1,
                        help="fraction of the training set held out (unused for training), as the reference")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is far faster than 2 on a loaded 2-core machine (measured)")
    parser.add_argument("--limit-train", type=int, default=None, help="smoke tests only: fewer training images")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="JSON-lines file the rows are appended to")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    methods = [METHOD_ALIASES.get(m, m) for m in args.methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    data = load_dataset("mnist", limit_train=args.limit_train)
    done = done_runs(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model_name in args.models:
        for method in methods:
            for density in ([1.0] if method == "dense" else args.densities):
                for seed in args.seeds:
                    key = (method, model_name, float(density), seed, args.epochs)
                    if key in done:
                        print(f"skip (done): {key}", flush=True)
                        continue
                    print(f"run {key}", flush=True)
                    row = run(method, model_name, density, seed, args.epochs, data, args)
                    print(json.dumps(row), flush=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done.add(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
