"""CPU training step of a wide MLP: sparse-kernels-cuda plugin vs masked dense, A/B interleaved.

Model 512→4096→4096→4096→10 (ReLU), batch 256, SGD with momentum, sparsecore's
``static`` algorithm at each density. Two identical models (same seed, same
masks, same batches) run in one process; their steps alternate so load from
other processes hits both alike. Reports the median step time of each, the
speed-up, the backend chosen per layer, and the largest loss difference
between the two runs (the plugin must not change results).

Usage::

    python benchmarks/kernels/cpu_mlp_step.py [--densities 0.2 0.1 0.05 0.01]
        [--steps 15] [--warmup 3] [--threads 2] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def make_mlp(seed: int) -> nn.Sequential:
    """The benchmark MLP, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(512, 4096), nn.ReLU(),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, 10),
    )


def build(density: float, plugin: bool, seed: int):
    """A model, its optimizer and its sparsifier."""
    import sparsecore
    from sparse_kernels_cuda import KernelPlugin

    model = make_mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    plugins = [KernelPlugin()] if plugin else []
    sp = sparsecore.Sparsifier(model, opt, algorithm="static", density=density, seed=seed, plugins=plugins)
    return model, opt, sp, (plugins[0] if plugin else None)


def step(model, opt, x, y) -> tuple[float, float]:
    """One training step; returns (seconds, loss)."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - start, float(loss.detach())


def run_density(density: float, steps: int, warmup: int, seed: int = 0) -> dict:
    """Interleaved A/B timing at one density."""
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(256, 512, generator=gen), torch.randint(0, 10, (256,), generator=gen))
               for _ in range(4)]
    ma, oa, sa, plug = build(density, True, seed)
    mb, ob, sb, _ = build(density, False, seed)
    for (name, la), lb in zip(sa.layers.items(), sb.layers.values()):
        assert torch.equal(la.mask, lb.mask), f"masks differ in {name}"
    ta, tb, max_loss_diff = [], [], 0.0
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        order = [(ma, oa, ta), (mb, ob, tb)] if i % 2 == 0 else [(mb, ob, tb), (ma, oa, ta)]
        losses = {}
        for model, opt, times in order:
            t, loss = step(model, opt, x, y)
            losses[id(times)] = loss
            if i >= warmup:
                times.append(t)
        max_loss_diff = max(max_loss_diff, abs(losses[id(ta)] - losses[id(tb)]))
    a, b = statistics.median(ta), statistics.median(tb)
    return {
        "density": density,
        "plugin_ms": a * 1e3,
        "dense_ms": b * 1e3,
        "speedup": b / a,
        "backends": plug.summary(),
        "densities": {n: round(layer.density, 4) for n, layer in sa.layers.items()},
        "max_loss_diff": max_loss_diff,
        "plugin_iqr_ms": (statistics.quantiles(ta, n=4)[2] - statistics.quantiles(ta, n=4)[0]) * 1e3 if len(ta) > 3 else 0.0,
        "dense_iqr_ms": (statistics.quantiles(tb, n=4)[2] - statistics.quantiles(tb, n=4)[0]) * 1e3 if len(tb) > 3 else 0.0,
    }


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.01])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model and density")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (include the dispatch timing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads={args.threads}, load avg before {load_before[0]:.2f}")
    if args.markdown:
        print("| density | masked dense step (ms) | plugin step (ms) | speed-up | backends (per sparse layer) | max loss diff |")
        print("|---|---|---|---|---|---|", flush=True)
    for d in args.densities:  # print each row as soon as it is measured
        r = run_density(d, args.steps, args.warmup)
        if args.markdown:
            be = ", ".join(f"{v}" for v in r["backends"].values())
            print(f"| {r['density']} | {r['dense_ms']:.1f} (IQR {r['dense_iqr_ms']:.1f}) | {r['plugin_ms']:.1f} "
                  f"(IQR {r['plugin_iqr_ms']:.1f}) | **{r['speedup']:.2f}×** | {be} | {r['max_loss_diff']:.1e} |", flush=True)
        else:
            print(r, flush=True)
    print(f"# load avg after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
