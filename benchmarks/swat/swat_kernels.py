"""SWAT on the sparse kernels: CPU training step vs dense and vs SWAT's dense ops, A/B interleaved.

Model 512→4096→4096→4096→10 (ReLU), batch 256, SGD momentum 0.9. Three
models with the same initialisation and batches: dense (no sparsifier),
SWAT-U (first layer dense, activations at the weight density) with its own
dense ops, and the same SWAT-U with ``plugins=["sparse-kernels-cuda"]`` (the
top-K-weight forward and input gradient and the top-K-activation weight
gradient on CSR). Their steps alternate, so load from other processes hits
all alike; medians are reported. The first step's gradients of the two SWAT
runs are compared (the kernels change only the reduction order).

``--conv`` adds LeNet-5-Caffe (batch 100): its convolutions have no kernel
products and run SWAT's dense ops with or without the plugin; only its
Linear layers use the kernels.

Usage (repository root)::

    python benchmarks/swat/swat_kernels.py [--density 0.1] [--steps 9] [--warmup 2] [--threads 1] [--conv]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def make_mlp(seed: int) -> nn.Sequential:
    """The benchmark MLP, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))


def build(make, config: str, density: float):
    """``(model, optimizer, sparsifier or None)`` for ``config`` in dense / swat / swat+kernels."""
    import sparsecore
    from sparsecore_swat import SwatAlgorithm

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if config == "dense":
        return model, opt, None
    plugins = ["sparse-kernels-cuda"] if config == "swat+kernels" else []
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(), density=density, seed=0, plugins=plugins)
    return model, opt, sp


def step(model, opt, x, y) -> float:
    """One training step; returns seconds."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def first_step_gradients(make, density: float, x, y) -> float:
    """Largest difference between the first-step gradients of SWAT with and without the kernels."""
    grads = []
    for config in ("swat", "swat+kernels"):
        model, _, sp = build(make, config, density)
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
        sp.remove()
    return max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))


def compare(make, shape, batch: int, density: float, steps: int, warmup: int) -> dict:
    """Median step times of the three configs, interleaved, and the gradient check."""
    torch.manual_seed(1)
    batches = [(torch.randn(batch, *shape), torch.randint(0, 10, (batch,))) for _ in range(4)]
    runs = {config: build(make, config, density) for config in ("dense", "swat", "swat+kernels")}
    times: dict[str, list[float]] = {config: [] for config in runs}
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        for config, (model, opt, _) in runs.items():
            seconds = step(model, opt, x, y)
            if i >= warmup:
                times[config].append(seconds)
    plugin = runs["swat+kernels"][2].manager.plugins()[-1][1]
    calls = {name: dict(p.calls) for name, p in plugin.products.items()}
    medians = {config: statistics.median(t) * 1e3 for config, t in times.items()}
    iqr = {config: statistics.quantiles(t, n=4)[2] * 1e3 - statistics.quantiles(t, n=4)[0] * 1e3
           for config, t in times.items()}
    diff = first_step_gradients(make, density, *batches[0])
    return {"median": medians, "iqr": iqr, "calls": calls, "grad_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--conv", action="store_true", help="also LeNet-5-Caffe (convolutions run dense ops)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch thread(s), "
          f"torch {torch.__version__}, Python {platform.python_version()}; load average before: {load}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; SWAT-U at density {args.density}; "
          f"medians of {args.steps} interleaved steps after {args.warmup} warm-up steps\n")
    print("| model | batch | dense ms/step | SWAT-U (dense ops) ms/step | SWAT-U + sparse-kernels-cuda ms/step | "
          "kernels vs dense | kernels vs SWAT dense ops | max first-step grad diff | products (sparse/dense calls) |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [("mlp 512-4096-4096-4096-10", make_mlp, (512,), 256)]
    if args.conv:
        from sparsecore.models import create_model

        def lenet(seed: int = 0) -> nn.Module:
            torch.manual_seed(seed)
            return create_model("lenet-5-caffe")

        cases.append(("lenet-5-caffe", lenet, (1, 28, 28), 100))
    for label, make, shape, batch in cases:
        r = compare(lambda make=make: make(0), shape, batch, args.density, args.steps, args.warmup)
        m, q = r["median"], r["iqr"]
        calls = ", ".join(f"{name}: {c['sparse']}/{c['dense']}" for name, c in r["calls"].items())
        print(f"| {label} | {batch} | {m['dense']:.1f} (IQR {q['dense']:.1f}) | {m['swat']:.1f} (IQR {q['swat']:.1f}) "
              f"| {m['swat+kernels']:.1f} (IQR {q['swat+kernels']:.1f}) | {m['swat+kernels'] / m['dense']:.2f}× "
              f"| {m['swat+kernels'] / m['swat']:.2f}× | {r['grad_diff']:.1e} | {calls} |", flush=True)
    with open("/proc/loadavg") as f:
        print(f"\nload average after: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
