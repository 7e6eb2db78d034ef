"""Where a SWAT-U training step's time goes on CPU: ``torch.profiler`` over steps of the benchmark MLP.

Same model, batch and optimizer as ``swat_kernels.py`` (512→4096→4096→4096→10,
batch 256, SGD momentum 0.9), SWAT-U with its own dense ops (or ``--dense``
for the dense model). Prints the profiler's table of operators by self CPU time;
divide by ``--steps`` for per-step figures.

Usage (repository root)::

    python benchmarks/swat/swat_profile.py [--density 0.1] [--steps 3] [--threads 1] [--dense]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swat_kernels import build, make_mlp, step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense", action="store_true", help="profile the dense model instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, opt, _ = build(lambda: make_mlp(0), "dense" if args.dense else "swat", args.density)
    torch.manual_seed(1)
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    for _ in range(2):  # warm-up
        step(model, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(model, opt, x, y)
    print(f"{'dense' if args.dense else 'SWAT-U'} at density {args.density}, {args.steps} steps, "
          f"{args.threads} thread(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
