"""Probe: sparse momentum on LeNet-5-Caffe at 5 %, what each topology update does to the network.

The ``snfs-lenet5`` recipe (SGD lr 0.1, Nesterov 0.9, weight decay 5e-4, batch 100, all 60,000 training
images, uniform 5 %, prune rate 0.5 cosine-decayed over the 100-epoch schedule, lr ×0.1 every 25,000
iterations) runs with its own loop. Several variants of the plugin are compared on one seed in one
process: the first epoch (no update before its end, so identical for every variant) is trained once and
its state (weights, optimizer, engine, data order) copied into every variant, which then trains on
from there. Around every update the probe records:

* ``before``: accuracy on the first ``--eval-images`` test images and active weights per layer;
* ``update``: active weights per layer after it, and per layer the weights grown, the mean ``|momentum|``
  of the grown weights and of the kept ones (``grown/kept``: how much harder the next step pushes a
  grown weight than a kept one);
* ``after``: accuracy after 1, 10, 100 and 300 steps and at the end of the next epoch (when reached).

Variants are ``faithful`` or comma-separated sparse-momentum options, e.g. ``warmup_steps=100`` (the
robustness option, a deviation from the paper that is off by default; see the plugin README) or
``redistribution=none``. The screening in ``benchmarks/results/sparse_momentum_lenet5.md`` also ran
``layer_floor=0.5`` and ``reset_grown_momentum=true``, options of the plugin at commit ``fcfbc96`` that
were dropped because they did not prevent the collapse.

The run stops ``--steps-after-last`` steps after the last update it makes (default 300: the collapse
of the faithful runs shows right after the second update, after epoch 2). A variant *collapsed* when its
accuracy at the end is below ``--collapse-below`` (default 50 %; chance is ~10 %). Every variant appends
one JSON line to ``--out`` with everything measured.

Usage (from the repository root; one torch thread)::

    python benchmarks/sparse_momentum/lenet5_probe.py --seed 0 --variants faithful warmup_steps=100 \\
        --out runs/probe/screen.jsonl
    python benchmarks/sparse_momentum/lenet5_probe.py --seed 1 --updates 3 --variants faithful
    python benchmarks/sparse_momentum/lenet5_probe.py --summarize runs/probe/screen.jsonl   # Markdown table
"""

from __future__ import annotations

import argparse
import copy
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

STEPS_AFTER = (1, 10, 100, 300)
BATCH = 100


def parse_variant(text: str) -> dict[str, Any]:
    """``faithful`` or ``key=value[,key=value...]`` with JSON values (``true``, ``0.5``) or strings."""
    if text == "faithful":
        return {}
    options: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"a variant is 'faithful' or KEY=VALUE[,KEY=VALUE...], got {text!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["faithful"], help="'faithful' or KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--updates", type=int, default=2, help="topology updates to run (one after each epoch)")
    p.add_argument("--steps-after-last", type=int, default=300, help="steps trained after the last update")
    p.add_argument("--schedule-epochs", type=int, default=100, help="length of the prune-rate schedule")
    p.add_argument("--eval-images", type=int, default=2000, help="first N test images for the probe accuracies")
    p.add_argument("--collapse-below", type=float, default=0.5, help="final accuracy that counts as a collapse")
    p.add_argument("--out", type=Path, default=None, help="JSON-lines file the records are appended to")
    p.add_argument("--summarize", type=Path, default=None, metavar="JSONL",
                   help="print the Markdown table of the records in JSONL and exit")
    args = p.parse_args(argv)
    if args.updates < 1 or args.steps_after_last < 1:
        p.error("--updates and --steps-after-last must be >= 1")
    return args


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
                      "grown_momentum": round(float(momentum[grown].mean()), 6) if grown.any() else 0.0,
                      "kept_momentum": round(float(momentum[kept].mean()), 6) if kept.any() else 0.0}
    return rows


class Run:
    """One variant: model, optimizer, lr scheduler, engine and data order."""

    def __init__(self, seed: int, options: dict[str, Any], total_steps: int) -> None:
        torch.manual_seed(seed)
        self.model = create_model("lenet-5-caffe")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=25_000, gamma=0.1)
        self.sparsifier = sparsecore.Sparsifier(self.model, self.optimizer,
                                                algorithm=SparseMomentumAlgorithm(**options), density=0.05,
                                                distribution="uniform", total_steps=total_steps, seed=seed)
        self.order = torch.Generator().manual_seed(seed)

    def copy_from(self, other: Run) -> None:
        """Take over ``other``'s weights, optimizer, scheduler, engine state and data order."""
        self.model.load_state_dict(other.model.state_dict())
        self.optimizer.load_state_dict(copy.deepcopy(other.optimizer.state_dict()))
        self.scheduler.load_state_dict(other.scheduler.state_dict())
        self.sparsifier.load_state_dict(copy.deepcopy(other.sparsifier.state_dict()))
        self.order.set_state(other.order.get_state())

    def train(self, data, steps: int | None = None, watch: dict[str, Any] | None = None, eval_xy=None) -> None:
        """One epoch (or its first ``steps`` steps), recording accuracies after the steps in STEPS_AFTER."""
        for i, (x, y) in enumerate(data.train.batches(BATCH, generator=self.order)):
            self.optimizer.zero_grad(set_to_none=True)
            F.nll_loss(self.model(x), y).backward()
            self.optimizer.step()
            self.scheduler.step()
            if watch is not None and i + 1 in STEPS_AFTER:
                watch["after"][str(i + 1)] = accuracy(self.model, *eval_xy)
            if steps is not None and i + 1 >= steps:
                break

    def update(self, epoch: int, eval_xy) -> dict[str, Any]:
        """The end of ``epoch``: the engine's update, with what it did."""
        masks = {name: layer.mask.clone() for name, layer in self.sparsifier.layers.items()}
        before = {"acc": accuracy(self.model, *eval_xy), "nnz": {n: l.nnz for n, l in self.sparsifier.layers.items()}}
        self.sparsifier.epoch_end(epoch)
        return {"epoch": epoch, "before": before,
                "update": {"nnz": {n: layer.nnz for n, layer in self.sparsifier.layers.items()},
                           "layers": grown_momentum(self.sparsifier, masks)},
                "after": {}}


def probe(args: argparse.Namespace, data) -> list[dict[str, Any]]:
    """Every variant on one seed; returns one record per variant."""
    eval_xy = (data.test.x[:args.eval_images], data.test.y[:args.eval_images])
    total_steps = (len(data.train.y) // BATCH) * args.schedule_epochs
    start = time.perf_counter()
    shared = Run(args.seed, {}, total_steps)
    shared.train(data)  # epoch 0: no update before its end, the same for every variant
    shared_seconds = time.perf_counter() - start
    records = []
    for text in args.variants:
        start = time.perf_counter()
        run = Run(args.seed, parse_variant(text), total_steps)
        run.copy_from(shared)
        updates = []
        for epoch in range(args.updates):
            record = run.update(epoch, eval_xy)
            updates.append(record)
            last = epoch == args.updates - 1
            run.train(data, steps=args.steps_after_last if last else None, watch=record, eval_xy=eval_xy)
            if not last:
                record["after"]["epoch_end"] = accuracy(run.model, *eval_xy)
            _print_update(args.seed, text, record)
        final = accuracy(run.model, data.test.x, data.test.y)
        records.append({"variant": text, "seed": args.seed, "updates": updates, "final_test_acc": final,
                        "collapsed": final < args.collapse_below, "steps_after_last": args.steps_after_last,
                        "wall_s": round(time.perf_counter() - start + shared_seconds, 1),
                        "torch": torch.__version__})
        print(f"seed {args.seed} {text}: test accuracy {100 * final:.2f} % {args.steps_after_last} steps after "
              f"update {args.updates} ({'collapsed' if final < args.collapse_below else 'trains'})", flush=True)
    return records


def _print_update(seed: int, variant: str, u: dict[str, Any]) -> None:
    ratio = ", ".join(f"{n} +{r['grown']} x{r['grown_momentum'] / r['kept_momentum']:.1f}"
                      for n, r in u["update"]["layers"].items() if r["kept_momentum"] > 0 and r["grown"])
    nnz = "/".join(str(v) for v in u["update"]["nnz"].values())
    after = " ".join(f"{k}:{100 * v:.1f}" for k, v in u["after"].items())
    print(f"  seed {seed} {variant} update {u['epoch'] + 1}: acc {100 * u['before']['acc']:.1f} -> {after} | "
          f"nnz {nnz} | grown (|m| grown / kept): {ratio}", flush=True)


def summarize(records: list[dict[str, Any]]) -> str:
    """A Markdown table: accuracy (2,000 test images) around each update, layer sizes, grown momentum."""
    lines = ["| seed | variant | update | acc. before | after 1 / 10 / 100 / 300 steps | end of epoch | "
             "active weights after (conv1/conv2/fc3/fc4) | max grown/kept \\|m\\| | final (10k) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for record in sorted(records, key=lambda r: r["seed"]):
        for u in record["updates"]:
            after = " / ".join(f"{100 * u['after'][str(k)]:.1f}" if str(k) in u["after"] else "–" for k in STEPS_AFTER)
            end = f"{100 * u['after']['epoch_end']:.1f}" if "epoch_end" in u["after"] else "–"
            ratios = [r["grown_momentum"] / r["kept_momentum"] for r in u["update"]["layers"].values()
                      if r["grown"] and r["kept_momentum"] > 0]
            ratio = f"{max(ratios):.1f}" if ratios else "–"
            last = u is record["updates"][-1]
            final = (f"{100 * record['final_test_acc']:.2f}" + (" (collapsed)" if record["collapsed"] else "")) \
                if last else ""
            nnz = " / ".join(f"{v:,}" for v in u["update"]["nnz"].values())
            lines.append(f"| {record['seed']} | {record['variant']} | {u['epoch'] + 1} | "
                         f"{100 * u['before']['acc']:.1f} | {after} | {end} | {nnz} | {ratio} | {final} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Probe the variants, print and (with ``--out``) append the records; or summarize earlier records."""
    args = parse_args(argv)
    if args.summarize is not None:
        records = [json.loads(line) for line in args.summarize.read_text().splitlines() if line.strip()]
        print(summarize(records))
        return 0
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    for record in probe(args, data):
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
