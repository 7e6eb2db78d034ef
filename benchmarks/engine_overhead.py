"""Engine overhead on a LeNet-300-100 MNIST epoch: dense vs the same epoch with a Sparsifier active.

Each repeat trains one full epoch (60k images, batch 100, SGD Nesterov) per
setup, with the setups interleaved and their order rotated, so slow phases of
a shared machine hit every setup alike. Reported: the median epoch time per
setup, its ratio to dense, the median of the per-repeat paired ratios, the
time of the per-epoch topology update (``sparsifier.epoch_end``) as a share of
the epoch, and the engine's own per-step hook cost measured in isolation.

Usage:
    python benchmarks/engine_overhead.py --repeats 7 --threads 2 [--output benchmarks/results/engine_overhead.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import sparsecore
import torch
from sparsecore.data import load_dataset
from sparsecore.models import create_model
from sparsecore.train import TrainConfig
from sparsecore.train.job import make_optimizer, train_epoch


def build(name: str, steps_per_epoch: int, epochs: int):
    """Model, optimizer and (unless dense) sparsifier of one setup, seeded alike."""
    torch.manual_seed(0)
    model = create_model("lenet-300-100")
    optimizer = make_optimizer(TrainConfig(), model)  # SGD lr 0.1, Nesterov 0.9, wd 5e-4
    sparsifier = None
    if name != "dense":
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=name, density=0.05,
                                           total_steps=steps_per_epoch * epochs, seed=0)
    return model, optimizer, sparsifier


def hook_cost(sparsifier, steps: int = 2000) -> float:
    """Microseconds per optimizer step spent in the engine's pre- and post-step hooks."""
    opt = sparsifier.optimizer
    for p in opt.param_groups[0]["params"]:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    start = time.perf_counter()
    for _ in range(steps):
        sparsifier._before_step(opt, (), {})
        sparsifier._after_step(opt, (), {})
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="engine setups to compare with dense (default: set, static and sparse-momentum if installed)")
    parser.add_argument("--output", help="also write the Markdown report here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    algorithms = args.algorithms or [a for a in ("set", "static", "sparse-momentum")
                                     if a in sparsecore.available_algorithms()]
    data = load_dataset("mnist")
    batch = 100
    steps = data.train.num_batches(batch)
    setups = {name: build(name, steps, args.repeats + 1) for name in ["dense", *algorithms]}
    names = list(setups)
    times = {n: [] for n in names}
    updates = {n: [] for n in names}
    ratios = {n: [] for n in algorithms}
    # warm-up epoch-fraction per setup
    for n, (model, opt, sp) in setups.items():
        gen = torch.Generator().manual_seed(1)
        it = data.train.batches(batch, generator=gen)
        for _ in range(20):
            x, y = next(it)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        this = {}
        for n in order:
            model, opt, sp = setups[n]
            gen = torch.Generator().manual_seed(100 + rep)
            start = time.perf_counter()
            train_epoch(model, opt, None, data.train, batch, gen, sparsifier=sp)
            this[n] = time.perf_counter() - start
            times[n].append(this[n])
            if sp is not None:
                start = time.perf_counter()
                sp.epoch_end(rep)
                updates[n].append(time.perf_counter() - start)
        for a in algorithms:
            ratios[a].append(this[a] / this["dense"])
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{n} {this[n]:.2f} s" for n in names), flush=True)
    load_after = os.getloadavg()

    dense = statistics.median(times["dense"])
    rows = [("| setup | median epoch (s) | min epoch (s) | vs dense (medians) | vs dense (median of paired) | "
             "topology update per epoch (ms) | update / epoch | engine hooks per step (µs) |"),
            "|---|---|---|---|---|---|---|---|"]
    for n in names:
        med = statistics.median(times[n])
        if n == "dense":
            rows.append(f"| dense | {med:.3f} | {min(times[n]):.3f} | 1.000 | 1.000 | - | - | - |")
            continue
        upd = statistics.median(updates[n])
        rows.append(f"| {n} | {med:.3f} | {min(times[n]):.3f} | {med / dense:.3f} | "
                    f"{statistics.median(ratios[n]):.3f} | {1e3 * upd:.1f} | {upd / med:.2%} | "
                    f"{hook_cost(setups[n][2]):.0f} |")
    table = "\n".join(rows)
    header = (f"LeNet-300-100, MNIST 60k, batch 100 ({steps} steps/epoch), SGD Nesterov 0.9, density 0.05, "
              f"{args.threads} threads, {args.repeats} interleaved repeats; torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}")
    print(header)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
