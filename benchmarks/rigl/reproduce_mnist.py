"""Train LeNet-300-100 on MNIST with RigL, on the recipe of the sparse momentum MNIST rows.

The training loop, data split and evaluation are those of
``benchmarks/sparse_momentum/reproduce_mnist.py`` (imported, not copied):
100 epochs, batch 100, SGD lr 0.1, momentum 0.9 nesterov, weight decay 5e-4,
lr x0.1 every 25,000 iterations, training on the first 54,000 training
images, test error on the 10,000 test images after the last epoch. So the
rows compare directly with the sparse momentum, static, SNIP and dense rows of
``benchmarks/results/mnist_table.md``.

RigL runs with its defaults (Evci et al. 2020): drop fraction 0.3 with
cosine decay, an update every 100 steps until 75 % of training (540 steps
per epoch: 405 updates), drop by ``|w|``, growth by ``|dense gradient|``,
grown weights at 0. Methods:

* ``rigl``: ERK densities, every layer sparse (the algorithm's default);
* ``rigl (uniform)``: the same density in every layer, every layer sparse
  (the distribution of the sparse momentum rows);
* ``set (rigl schedule)``: RigL's SET baseline: random growth instead of
  gradient growth, same ERK densities and schedule.

Every finished run appends one JSON line to ``benchmarks/results/rigl_mnist.jsonl``
(the fields of the sparse momentum script); runs already there are skipped, so
the script can be restarted. Render the table with ``benchmarks/rigl/render_table.py``
(done after every run).

Example::

    nice -n 10 python benchmarks/rigl/reproduce_mnist.py --densities 0.05 --seeds 0 1 2
    python benchmarks/rigl/reproduce_mnist.py --epochs 1 --limit-train 2000 --out rigl-smoke.jsonl  # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from sparsecore.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "benchmarks" / "results" / "rigl_mnist.jsonl"
MODEL = "lenet-300-100"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: The sparse momentum harness: training loop, data split, evaluation, machine description.
harness = _load("sparse_momentum_reproduce_mnist", ROOT / "benchmarks" / "sparse_momentum" / "reproduce_mnist.py")

#: method name in the table -> (algorithm, options for the Sparsifier: algorithm options and engine keywords)
METHODS = {
    "rigl": ("rigl", {}),
    "rigl (uniform)": ("rigl", {"distribution": "uniform", "dense_first_layer": False}),
    "set (rigl schedule)": ("set", {"distribution": "erk", "update_every": 100, "update_end": 0.75}),
}
METHOD_ALIASES = {"uniform": "rigl (uniform)", "rigl-uniform": "rigl (uniform)", "set": "set (rigl schedule)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["rigl"],
                        help=f"any of {list(METHODS)} (aliases: {METHOD_ALIASES})")
    parser.add_argument("--densities", nargs="+", type=float, default=[0.05])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--decay-frequency", type=int, default=25000, help="iterations between lr x0.1")
    parser.add_argument("--valid-split", type=float, default=0.1,
                        help="fraction of the training set held out (unused for training), as the reference")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--limit-train", type=int, default=None, help="smoke tests only: fewer training images")
    parser.add_argument("--out", type=Path, default=RUNS, help="JSON-lines file the rows are appended to")
    parser.add_argument("--no-render", action="store_true", help="do not re-render the table after each run")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    methods = [METHOD_ALIASES.get(m, m) for m in args.methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    harness.METHODS.update(METHODS)  # the harness's run() looks methods up there
    data = load_dataset("mnist", limit_train=args.limit_train)
    done = harness.done_runs(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for density in args.densities:
        for method in methods:
            for seed in args.seeds:
                key = (method, MODEL, float(density), seed, args.epochs)
                if key in done:
                    print(f"skip (done): {key}", flush=True)
                    continue
                print(f"run {key}", flush=True)
                row = harness.run(method, MODEL, density, seed, args.epochs, data, args)
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done.add(key)
                if not args.no_render and args.out == RUNS:
                    render = _load("rigl_render_table", Path(__file__).with_name("render_table.py"))
                    render.main(["--quiet"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
