"""Training-step time of convolutional models with their weights in the channels-last memory format.

``sparsecore train --channels-last`` (``TrainConfig.channels_last``) converts the
model's 4-D weights to ``torch.channels_last`` before the optimizer and the
engine see them; the engine's masks (``ones_like`` of the weights) follow. This
benchmark times training steps of each model in both formats, dense and with a
``sparsecore.Sparsifier`` (sparse momentum, 5 %), on random inputs of the
model's input shape (the work of a step does not depend on the values).

Every setup builds its own copy of the model from the same seed. Each repeat
runs every setup for ``chunks`` chunks of ``steps`` steps, rotating the order of
the setups every chunk, so a slow phase of a shared machine hits all alike.
Reported per model: the median step time of each setup over repeats and the
median of the paired per-repeat ratios channels-last / contiguous.

Usage:
    python benchmarks/channels_last.py --threads 1 --output benchmarks/results/channels_last.md
    python benchmarks/channels_last.py --models lenet-5-caffe --repeats 9   # one model, more repeats
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import sparsecore
from sparsecore.models import create_model, model_info

DENSITY = 0.05


@dataclass(frozen=True)
class ModelPlan:
    """How one model is timed: batch size, steps per chunk, chunks per repeat."""

    name: str
    batch: int
    steps: int
    chunks: int


PLANS = {
    "lenet-5-caffe": ModelPlan("lenet-5-caffe", batch=100, steps=25, chunks=4),
    "vgg16-c": ModelPlan("vgg16-c", batch=128, steps=2, chunks=2),
    "wrn-16-8": ModelPlan("wrn-16-8", batch=128, steps=1, chunks=2),
}


class Setup:
    """One model copy in one memory format, dense or kept sparse by the engine, with its own batch."""

    def __init__(self, plan: ModelPlan, channels_last: bool, sparse: bool) -> None:
        self.label = f"{'sparse momentum 5 %' if sparse else 'dense'}, {'channels-last' if channels_last else 'contiguous'}"
        self.channels_last, self.sparse = channels_last, sparse
        torch.manual_seed(0)
        info = model_info(plan.name)
        self.model: nn.Module = create_model(plan.name)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.sparsifier = (sparsecore.Sparsifier(self.model, self.optimizer, algorithm="sparse-momentum",
                                                 density=DENSITY, total_steps=10**6, seed=0) if sparse else None)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(plan.batch, *info.input_shape, generator=generator)
        self.y = torch.randint(0, info.num_classes, (plan.batch,), generator=generator)

    def step(self) -> None:
        """One training step (forward, backward, optimizer step; the engine masks in its hooks)."""
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def weights_in_format(self) -> bool:
        """Whether every 4-D weight is still in the format the setup chose (the engine keeps it)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return all(p.is_contiguous(memory_format=fmt) for p in self.model.parameters() if p.dim() == 4)


def time_model(plan: ModelPlan, repeats: int) -> dict[str, Any]:
    """Per-setup step times (ms) over ``repeats`` and the paired channels-last / contiguous ratios."""
    setups = [Setup(plan, cl, sparse) for sparse in (False, True) for cl in (False, True)]
    for setup in setups:  # warm-up: oneDNN primitive caches, allocator
        for _ in range(2):
            setup.step()
    per_repeat: dict[str, list[float]] = {s.label: [] for s in setups}
    for repeat in range(repeats):
        spent = dict.fromkeys(per_repeat, 0.0)
        for chunk in range(plan.chunks):
            shift = (repeat * plan.chunks + chunk) % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                tick = time.perf_counter()
                for _ in range(plan.steps):
                    setup.step()
                spent[setup.label] += time.perf_counter() - tick
        for label, seconds in spent.items():
            per_repeat[label].append(1000 * seconds / (plan.steps * plan.chunks))
    if not all(s.weights_in_format() for s in setups):
        raise RuntimeError(f"{plan.name}: a setup's weights left their memory format during training")
    rows = []
    for sparse in ("dense", "sparse momentum 5 %"):
        base, fast = per_repeat[f"{sparse}, contiguous"], per_repeat[f"{sparse}, channels-last"]
        rows.append({"setup": sparse, "contiguous_ms": statistics.median(base),
                     "channels_last_ms": statistics.median(fast),
                     "ratio": statistics.median(f / b for f, b in zip(fast, base, strict=True))})
    return {"plan": plan, "rows": rows}


def render(results: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, float]) -> str:
    """The results file: command, machine, one table."""
    lines = ["# Channels-last convolution weights: training-step time", "",
             f"Command (repository root): `python benchmarks/channels_last.py --threads {args.threads} "
             f"--repeats {args.repeats} --models {' '.join(args.models)}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
             f"torch {torch.__version__}, Python {platform.python_version()}; load average before/after "
             f"{load[0]:.2f}/{load[1]:.2f}.", "",
             f"Random inputs of each model's input shape; SGD (Nesterov 0.9, weight decay 5e-4); sparse rows: "
             f"`sparsecore.Sparsifier` with sparse momentum at {DENSITY * 100:g} % density (dense matmuls, masks applied "
             f"by the engine's optimizer hooks). Setups interleaved (order rotating every chunk); medians over "
             f"{args.repeats} repeats; ratio = median of the paired per-repeat ratios channels-last / contiguous "
             f"(below 1: channels-last is faster).", "",
             "| model | batch | setup | contiguous step (ms) | channels-last step (ms) | channels-last / contiguous |",
             "|---|---|---|---|---|---|"]
    for result in results:
        plan = result["plan"]
        for row in result["rows"]:
            lines.append(f"| {plan.name} | {plan.batch} | {row['setup']} | {row['contiguous_ms']:.1f} | "
                         f"{row['channels_last_ms']:.1f} | {row['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Time the chosen models and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(PLANS), default=list(PLANS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the markdown table here as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    before = os.getloadavg()[0]
    results = [time_model(PLANS[name], args.repeats) for name in args.models]
    text = render(results, args, (before, os.getloadavg()[0]))
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)


if __name__ == "__main__":
    main()
