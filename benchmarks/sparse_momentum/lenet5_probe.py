"""Probe: sparse momentum on LeNet-5-Caffe at 5 %, what each topology update does to the network.

The ``snfs-lenet5`` recipe (SGD lr 0.1, Nesterov 0.9, weight decay 5e-4, batch 100, all 60,000 training
images, uniform 5 %, prune rate 0.5 cosine-decayed over the 100-epoch schedule, lr ×0.1 every 25,000
iterations) is run for a few epochs with its own loop. Around every update (after each epoch) the probe
records:

* ``before``: accuracy on the first ``--eval-images`` test images and active weights per layer;
* ``update``: active weights per layer after it, and per layer the weights grown, the mean ``|momentum|``
  of the grown weights and of the kept ones (``grown/kept`` is how much harder the next step pushes a
  grown weight than a kept one);
* ``after``: accuracy after 1, 10, 100 and 300 steps and at the end of the next epoch.

Candidate fixes of the collapse (each off unless asked for; combinable):

* ``--reset-grown``: grown weights start with zero momentum (``MaskingPolicy(reset_grown_state=True)``);
* ``--option layer_floor=F``: the plugin option: redistribution never leaves a layer with fewer than
  ``F`` × its initial active weights;
* ``--warmup-steps K``: the learning rate ramps linearly from ``1/K`` to 1 over the ``K`` steps after each
  update (``sparsifier.lr_factor``);
* any other algorithm option with ``--option KEY=VALUE`` (``redistribution=none``, ...).

Every probe prints one line per update and appends one JSON line (``--out``) with everything measured.
A run has *collapsed* when its final accuracy is below ``--collapse-below`` (default 50 %, chance is ~10 %).

Usage (from the repository root; one torch thread)::

    python benchmarks/sparse_momentum/lenet5_probe.py --seeds 0 1 2 --epochs 3
    python benchmarks/sparse_momentum/lenet5_probe.py --seeds 0 1 2 --epochs 3 --reset-grown
    python benchmarks/sparse_momentum/lenet5_probe.py --seeds 0 1 2 --epochs 3 --option layer_floor=0.5
    python benchmarks/sparse_momentum/lenet5_probe.py --seeds 0 1 2 --epochs 3 --warmup-steps 100
    python benchmarks/sparse_momentum/lenet5_probe.py --dense --seeds 0 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import sparsecore
import torch
import torch.nn.functional as F
from sparse_momentum import SparseMomentumAlgorithm
from sparsecore.data import load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
STEPS_AFTER = (1, 10, 100, 300)


class WarmupAfterUpdate:
    """Plugin: after every topology update, ramp ``sparsifier.lr_factor`` from ``1/K`` back to 1 over ``K`` steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.since_update: int | None = None

    @sparsecore.hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        """Start a ramp after a scheduled update."""
        if report.reason == "update":
            self.since_update = 0
            sparsifier.lr_factor = 1.0 / self.steps

    @sparsecore.hookimpl
    def on_step(self, sparsifier, step) -> None:
        """Advance the ramp by one step."""
        if self.since_update is None:
            return
        self.since_update += 1
        if self.since_update >= self.steps:
            sparsifier.lr_factor, self.since_update = 1.0, None
        else:
            sparsifier.lr_factor = (self.since_update + 1) / self.steps


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with the value read as JSON when it parses (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs to run (updates after all but the last)")
    p.add_argument("--schedule-epochs", type=int, default=100, help="length of the prune-rate and lr schedules")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--dense", action="store_true", help="no sparsity (the dense baseline)")
    p.add_argument("--reset-grown", action="store_true", help="grown weights start with zero momentum")
    p.add_argument("--warmup-steps", type=int, default=0, help="lr ramp after each update (0: none)")
    p.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="sparse-momentum option, repeatable")
    p.add_argument("--eval-images", type=int, default=2000, help="first N test images for the probe accuracies")
    p.add_argument("--collapse-below", type=float, default=0.5, help="final accuracy that counts as a collapse")
    p.add_argument("--label", default=None, help="name of the variant in the output (default: from the flags)")
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file the probes are appended to")
    args = p.parse_args(argv)
    if args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    return args


def variant_label(args: argparse.Namespace) -> str:
    """A short name of the probed variant."""
    if args.label:
        return args.label
    if args.dense:
        return "dense"
    parts = [f"{k}={v}" for k, v in args.option]
    if args.reset_grown:
        parts.append("reset_grown")
    if args.warmup_steps:
        parts.append(f"warmup={args.warmup_steps}")
    return ", ".join(parts) or "faithful"


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return round(acc, 4)


def grown_momentum(sparsifier, before: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer: weights grown by the last update, mean |momentum| of the grown and of the kept weights."""
    rows = {}
    for name, layer in sparsifier.layers.items():
        grown = layer.mask & ~before[name]
        kept = layer.mask & before[name]
        momentum = sparsifier.momentum(layer).abs()
        rows[name] = {"grown": int(grown.sum()),
                      "grown_momentum": float(momentum[grown].mean()) if grown.any() else 0.0,
                      "kept_momentum": float(momentum[kept].mean()) if kept.any() else 0.0}
    return rows


def probe(args: argparse.Namespace, data, seed: int) -> dict[str, Any]:
    """Run one seed and return its record."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model("lenet-5-caffe")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(data.train.y) // 100
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=25_000, gamma=0.1)
    sparsifier = None
    if not args.dense:
        algorithm = SparseMomentumAlgorithm(**dict(args.option))
        if args.reset_grown:
            algorithm.masking_policy = sparsecore.MaskingPolicy(mask_weights=True, mask_gradients=False,
                                                                mask_optimizer_state=False, reset_grown_state=True)
        plugins = [WarmupAfterUpdate(args.warmup_steps)] if args.warmup_steps else []
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, density=args.density,
                                           distribution="uniform", total_steps=steps_per_epoch * args.schedule_epochs,
                                           seed=seed, plugins=plugins)
    x_eval, y_eval = data.test.x[:args.eval_images], data.test.y[:args.eval_images]
    order = torch.Generator().manual_seed(seed)
    updates: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    step = 0
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(data.train.batches(100, generator=order)):
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if pending is not None and i + 1 in STEPS_AFTER:
                pending["after"][str(i + 1)] = accuracy(model, x_eval, y_eval)
        end_acc = accuracy(model, x_eval, y_eval)
        if pending is not None:
            pending["after"]["epoch_end"] = end_acc
            _print_update(seed, pending)
            pending = None
        if sparsifier is None:
            continue
        masks = {name: layer.mask.clone() for name, layer in sparsifier.layers.items()}
        nnz_before = {name: layer.nnz for name, layer in sparsifier.layers.items()}
        sparsifier.epoch_end(epoch)
        if any(not torch.equal(masks[n], layer.mask) for n, layer in sparsifier.layers.items()):
            pending = {"epoch": epoch, "step": step, "before": {"acc": end_acc, "nnz": nnz_before},
                       "update": {"nnz": {n: layer.nnz for n, layer in sparsifier.layers.items()},
                                  "layers": grown_momentum(sparsifier, masks)},
                       "after": {}}
            updates.append(pending)
    final = accuracy(model, data.test.x, data.test.y)
    return {"variant": variant_label(args), "seed": seed, "epochs": args.epochs, "lr": args.lr,
            "density": None if args.dense else args.density, "final_test_acc": final,
            "collapsed": final < args.collapse_below, "updates": updates,
            "wall_s": round(time.perf_counter() - start, 1), "torch": torch.__version__}


def _print_update(seed: int, u: dict[str, Any]) -> None:
    ratio = ", ".join(f"{n} {r['grown']}g x{r['grown_momentum'] / r['kept_momentum']:.1f}"
                      for n, r in u["update"]["layers"].items() if r["kept_momentum"] > 0 and r["grown"])
    nnz = "/".join(str(v) for v in u["update"]["nnz"].values())
    after = " ".join(f"{k}:{100 * v:.1f}" for k, v in u["after"].items())
    print(f"  seed {seed} update after epoch {u['epoch'] + 1}: acc {100 * u['before']['acc']:.1f} -> {after} | "
          f"nnz {nnz} | grown |m|/kept |m|: {ratio}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Probe every seed, print and (with ``--out``) append the records."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    print(f"variant: {variant_label(args)}", flush=True)
    for seed in args.seeds:
        record = probe(args, data, seed)
        print(f"seed {seed}: final test accuracy {100 * record['final_test_acc']:.2f} % "
              f"({'collapsed' if record['collapsed'] else 'trains'}), {record['wall_s']} s", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
