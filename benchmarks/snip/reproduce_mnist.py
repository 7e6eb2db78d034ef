"""Reproduce SNIP on MNIST: LeNet-300-100 at 5 % and 2 % weights (Lee et al. 2019, Table 1).

Published test error: 1.6 % at 5 % weights (95 % sparsity), 2.4 % at 2 %.

Recipe (the paper's, as quoted in ``shared/reference/algorithms.md`` §4.2):
SGD momentum 0.9, lr 0.1 multiplied by 0.1 every 25,000 iterations, weight
decay 5e-4, batch 100, 100 epochs (60,000 iterations). Momentum is Nesterov by
default, as in the sparse-momentum reference code (``mnist_cifar/main.py``) so
the rows compare with sparse momentum's; ``--no-nesterov`` gives the paper's
plain momentum. Like the paper (10 % held out for validation) and the
sparse-momentum script (``--valid_split 0.1``), training uses the first 54,000
of the 60,000 training images (540 iterations per epoch, 54,000 in all); the
error is measured once, on the 10,000 test images, after the last epoch.

SNIP scores one training batch of 100 (``loader=`` with ``num_batches=1``) at
the model's actual initialisation, keeps the global top-κ of ``|g ⊙ w|`` with
κ = round(N · density) over the three weight matrices, and never changes the
mask; the layer guard is on (it never triggered at these densities in our
runs: the script prints what it did).

``--init vs`` draws the weights as snip-public does (TF1
``variance_scaling_initializer`` defaults: truncated normal with variance
1/fan_in, zero biases) instead of PyTorch's default (uniform, variance
1/(3·fan_in)); its rows are labelled ``snip (variance-scaling init)``.

``--official`` runs snip-public's own protocol (the recipe ``snip-official``):
plain momentum (no Nesterov), variance-scaling weights with zero biases
(SNIP's ``init="variance_scaling"``), masks scored on a separate
variance-scaling draw of the weights with zero biases
(``score_init="variance_scaling"``), biases competing with the weights for the
budget (``prune_biases=True``; scored from zero, they are all pruned) and no
layer guard; its rows are labelled ``snip (official protocol)``. With
``--score-bias-init vs`` the scored draw's biases are drawn like its weights,
as in snip-public's first release (commit b00bef0; f028496 made zeros the
default), so some biases win places; those rows are labelled
``snip (official protocol, first release)``.

Every run reports two figures. ``test_error`` is the error after the last
epoch (what the shared table shows). ``official_error`` is snip-public's
reported figure: the test set is evaluated after every 1,000th iteration
(``--checkpoint-interval``), the last five evaluations are retained
(``--checkpoints-kept``, its ``tf.train.Saver`` default) and the error is
1 − the best retained accuracy (``snip_baseline.RetainedCheckpoints``).

Each finished run appends one JSON line to ``benchmarks/results/mnist_runs.jsonl``::

    {"method": "snip", "model": "lenet-300-100", "density": 0.05, "seed": 0,
     "epochs": 100, "test_error": 1.61, "official_error": 1.55,
     "checkpoints": [[50000, 0.9843], ...], "wall_s": 312.4, "machine": "...", "torch": "..."}

Errors are in percent, as the shared table expects (``official_error`` is
``null`` for a run shorter than one checkpoint interval); ``checkpoints``
holds the retained ``[iteration, test accuracy]`` pairs; ``wall_s`` covers
scoring, training and every evaluation. After each row the table is
re-rendered with ``benchmarks/render_mnist_table.py`` if that script exists.

Usage (from the repository root; CPU is shared, so be nice)::

    nice -n 10 python benchmarks/snip/reproduce_mnist.py --densities 0.05 0.02 --seeds 0 1 2
    nice -n 10 python benchmarks/snip/reproduce_mnist.py --official --densities 0.05 0.02 --seeds 0 1 2
    nice -n 10 python benchmarks/snip/reproduce_mnist.py --official --score-bias-init vs --seeds 0 1 2
    python benchmarks/snip/reproduce_mnist.py --epochs 1 --limit-train 2000 --no-append   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import sparsecore
import torch
import torch.nn.functional as F
from snip_baseline import OFFICIAL_CHECKPOINT_INTERVAL, OFFICIAL_CHECKPOINTS_KEPT, RetainedCheckpoints
from snip_baseline import variance_scaling_init_ as variance_scaling_init
from sparsecore.data import DataSplit, load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "mnist_runs.jsonl"
RENDER = ROOT / "benchmarks" / "render_mnist_table.py"
MODEL = "lenet-300-100"
#: SNIP options of snip-public's protocol (the recipe ``snip-official``); ``score_bias_init`` follows ``--score-bias-init``.
OFFICIAL_OPTIONS = {"init": "variance_scaling", "score_init": "variance_scaling", "prune_biases": True,
                    "keep_every_layer": False}
#: ``--score-bias-init`` to SNIP's ``score_bias_init``.
SCORE_BIAS_INITS = {"zeros": "zeros", "vs": "variance_scaling"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the reference recipe."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.02], help="fractions of weights kept")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", help="plain momentum, as in the paper")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--decay-every", type=int, default=25_000, help="iterations between lr decays")
    p.add_argument("--gamma", type=float, default=0.1, help="lr decay factor")
    p.add_argument("--valid-split", type=float, default=0.1,
                   help="fraction of the training images held out (the last ones); 0 trains on all")
    p.add_argument("--score-init", choices=["actual", "fresh"], default="actual")
    p.add_argument("--init", choices=["default", "vs"], default="default",
                   help="weight init: PyTorch's default, or 'vs' = TF1 variance_scaling_initializer defaults "
                        "(truncated normal, std 1/sqrt(fan_in), biases 0) as snip-public uses")
    p.add_argument("--official", action="store_true",
                   help="snip-public's protocol: plain momentum, variance-scaling init, a separate variance-scaling "
                        "draw scored, biases as candidates, no layer guard (excludes --init, --score-init)")
    p.add_argument("--score-bias-init", choices=["zeros", "vs"], default="zeros",
                   help="with --official: the scored draw's biases, zero (snip-public's default since f028496) or "
                        "variance-scaling like the weights (its first release, b00bef0)")
    p.add_argument("--checkpoint-interval", type=int, default=OFFICIAL_CHECKPOINT_INTERVAL,
                   help="iterations between the test evaluations of the official figure")
    p.add_argument("--checkpoints-kept", type=int, default=OFFICIAL_CHECKPOINTS_KEPT,
                   help="latest evaluations the official figure takes the best of")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON-lines file the rows are appended to")
    p.add_argument("--no-append", dest="append", action="store_false", help="print rows without writing them")
    args = p.parse_args(argv)
    if args.official and (args.init != "default" or args.score_init != "actual"):
        p.error("--official sets the initialisation and the scored draw itself; drop --init and --score-init")
    if args.score_bias_init != "zeros" and not args.official:
        p.error("--score-bias-init applies to the scored draw of --official only")
    if args.checkpoint_interval < 1 or args.checkpoints_kept < 1:
        p.error("--checkpoint-interval and --checkpoints-kept must be positive")
    return args


@torch.no_grad()
def test_error(model: torch.nn.Module, split, batch_size: int = 1000) -> float:
    """Fraction of misclassified test images."""
    model.eval()
    wrong = 0
    for x, y in split.batches(batch_size, shuffle=False):
        wrong += int((model(x).argmax(1) != y).sum())
    model.train()
    return wrong / len(split)


def machine() -> str:
    """A short description of this machine for the results."""
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core CPU ({cpu}), {torch.get_num_threads()} torch threads"


def run(args: argparse.Namespace, train: DataSplit, test: DataSplit, density: float, seed: int) -> dict:
    """Train one SNIP model and return its result row."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model(MODEL)
    if args.init == "vs":
        variance_scaling_init(model)  # from the global generator, seeded above
    options = ({**OFFICIAL_OPTIONS, "score_bias_init": SCORE_BIAS_INITS[args.score_bias_init]} if args.official
               else {"score_init": args.score_init})
    nesterov = args.nesterov and not args.official and args.momentum > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=nesterov, weight_decay=args.weight_decay)
    steps_per_epoch = train.num_batches(args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.decay_every, gamma=args.gamma)
    scoring = train.batches(args.batch_size, generator=torch.Generator().manual_seed(10_000 + seed))
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="snip", density=density, seed=seed,
                                       total_steps=total_steps, loader=scoring, num_batches=1, **options)
    result = sparsifier.algorithm.result
    print(f"[snip d={density} seed={seed}] kept {result.kept}/{result.total} weights per layer {result.per_layer}, "
          f"{result.bias_kept}/{result.bias_total} competing biases, guard added {result.guard_added or 'nothing'}",
          flush=True)
    checkpoints = RetainedCheckpoints(args.checkpoint_interval, args.checkpoints_kept)
    order = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(args.epochs):
        for x, y in train.batches(args.batch_size, generator=order):
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x), y).backward()  # LeNet-300-100 returns log-probabilities
            optimizer.step()
            scheduler.step()
            step += 1
            if checkpoints.due(step):
                checkpoints.record(step, 1.0 - test_error(model, test))
        sparsifier.epoch_end(epoch)
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(f"[snip d={density} seed={seed}] epoch {epoch + 1}/{args.epochs} "
                  f"lr {scheduler.get_last_lr()[0]:.4g} {time.perf_counter() - start:.0f}s", flush=True)
    assert sparsifier.nnz == result.kept and not sparsifier.history, "the SNIP mask changed during training"
    assert all(not model.get_parameter(key)[~kept].any() for key, kept in sparsifier.algorithm.bias_masks.items()), \
        "a pruned bias moved during training"
    err = test_error(model, test)
    official = checkpoints.error if checkpoints.kept else None
    print(f"[snip d={density} seed={seed}] final-epoch test error {100 * err:.2f} %, official "
          f"(1 - best of the last {len(checkpoints.kept)} checkpoints) "
          f"{'n/a' if official is None else f'{100 * official:.2f} %'}", flush=True)
    if args.official:
        method = "snip (official protocol" + (", first release)" if args.score_bias_init == "vs" else ")")
    else:
        method = "snip" if args.init == "default" else "snip (variance-scaling init)"
    return {"method": method, "model": MODEL, "density": density, "seed": seed, "epochs": args.epochs,
            "test_error": round(100 * err, 4),
            "official_error": None if official is None else round(100 * official, 4),
            "checkpoints": [[s, round(a, 6)] for s, a in checkpoints.kept],
            "wall_s": round(time.perf_counter() - start, 1), "machine": machine(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    """Run every (seed, density) pair, one at a time, appending each row as it finishes."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", limit_train=args.limit_train)
    n_train = math.floor((1.0 - args.valid_split) * len(data.train))
    train = DataSplit(data.train.x[:n_train], data.train.y[:n_train])
    for seed in args.seeds:
        for density in args.densities:
            row = run(args, train, data.test, density, seed)
            line = json.dumps(row)
            print(line, flush=True)
            if args.append:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                if RENDER.exists():
                    subprocess.run([sys.executable, str(RENDER)], check=False, cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
