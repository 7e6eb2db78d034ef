"""Per-step cost of keeping LeNet-300-100 sparse, against dense and against peer libraries.

Every setup trains its own copy of LeNet-300-100 (same initial weights) on MNIST
(batch 100, SGD lr 0.1 Nesterov 0.9, weight decay 5e-4) at 5 % density, with
dense matmuls: what differs from dense is the cost of the masking machinery.
Setups:

* ``dense``: no masking at all;
* ``sparse-momentum``, ``set``, ``static``: a ``sparsecore.Sparsifier`` (engine
  hooks on the optimizer; ``set``/``static`` also mask gradients);
* ``torch.nn.utils.prune``: ``prune.random_unstructured`` on every Linear
  weight (a forward pre-hook recomputes ``weight = weight_orig * mask``);
* ``torch.ao.pruning``: ``WeightNormSparsifier`` at 95 % sparsity, prepared and
  stepped once (a parametrization multiplies by the mask on every access).

Each repeat walks one epoch of 600 steps in chunks of ``--chunk`` steps; every
chunk runs every setup in turn (the order rotates each chunk), so a slow phase
of a shared machine hits all setups alike. Per repeat, each setup's time is the
sum of its chunks; reported are medians over repeats, the median of the paired
per-repeat ratios to dense, and the engine's per-epoch topology update
(``sparsifier.epoch_end``) timed separately.

With ``--compile`` every setup runs twice, eagerly and as ``torch.compile(model)``
(inductor unless ``--compile BACKEND``; set up, then compiled, as the engine's
docs advise: masks stay eager on the optimizer hooks); each compiled setup is
compared with the compiled dense model. Compilation happens in the warm-up.

Usage:
    python benchmarks/engine_overhead.py --repeats 30 --threads 1 --output benchmarks/results/engine_overhead.md
    python benchmarks/engine_overhead.py --compile --no-peers --repeats 10 --threads 1 \\
        --output benchmarks/results/engine_overhead_compile.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

DENSITY = 0.05
BATCH = 100


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("lenet-300-100")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer


def build_engine(algorithm: str, total_steps: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """A sparsecore setup: the engine's hooks on the optimizer."""
    model, optimizer = _model_and_optimizer()
    sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm=algorithm, density=DENSITY,
                                       total_steps=total_steps, seed=0)
    return model, optimizer, sparsifier


def build_dense(total_steps: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """No masking at all."""
    model, optimizer = _model_and_optimizer()
    return model, optimizer, None


def build_torch_prune(total_steps: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """``torch.nn.utils.prune``: a random 95 % of every Linear weight pruned (forward pre-hook re-masks)."""
    from torch.nn.utils import prune

    model, _ = _model_and_optimizer()
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            prune.random_unstructured(module, "weight", amount=1 - DENSITY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer, None


def build_torch_ao(total_steps: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """``torch.ao.pruning.WeightNormSparsifier`` at 95 % sparsity (parametrized weights)."""
    from torch.ao.pruning import WeightNormSparsifier

    model, _ = _model_and_optimizer()
    config = [{"tensor_fqn": f"{name}.weight"} for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    ao = WeightNormSparsifier(sparsity_level=1 - DENSITY, sparse_block_shape=(1, 1), zeros_per_block=1)
    ao.prepare(model, config)
    ao.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return model, optimizer, None


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    """The training loop of ``sparsecore train`` without its bookkeeping."""
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=25, help="steps per setup before the next setup runs")
    parser.add_argument("--algorithms", nargs="+", default=["sparse-momentum", "set"])
    parser.add_argument("--no-peers", action="store_true", help="leave out torch.nn.utils.prune and torch.ao.pruning")
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="also run every setup under torch.compile (default backend: inductor)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="leave denormal floats on (default: flushed to zero for every setup alike)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Sparse momentum keeps the momentum of inactive weights; where their gradient is exactly 0 (MNIST's blank
    # border pixels, dead units) it decays geometrically into denormal floats after ~800 steps, and denormal
    # arithmetic is many times slower on x86 CPUs. That is a cost of the algorithm, not of the engine: flush them.
    torch.set_flush_denormal(not args.keep_denormals)

    data = load_dataset("mnist")
    steps = data.train.num_batches(BATCH)
    total = steps * (args.repeats + 1)
    builders: dict[str, Callable[[int], tuple]] = {"dense": build_dense}
    for name in args.algorithms:
        builders[name] = lambda t, name=name: build_engine(name, t)
    if not args.no_peers:
        builders["torch.nn.utils.prune"] = build_torch_prune
        builders["torch.ao.pruning"] = build_torch_ao
    setups = {name: build(total) for name, build in builders.items()}
    baseline = dict.fromkeys(setups, "dense")  # the setup each one is compared with
    if args.compile:
        for name, build in builders.items():
            model, optimizer, sparsifier = build(total)
            setups[f"{name} (compiled)"] = (torch.compile(model, backend=args.compile), optimizer, sparsifier)
            baseline[f"{name} (compiled)"] = "dense (compiled)"
    names = list(setups)
    compile_seconds = {}
    for n, (model, optimizer, _) in setups.items():  # warm-up (and compilation)
        t0 = time.perf_counter()
        train_steps(model, optimizer, list(data.train.batches(BATCH, generator=torch.Generator().manual_seed(1)))[:20])
        compile_seconds[n] = time.perf_counter() - t0

    epoch_time = {n: [] for n in names}
    update_time = {n: [] for n in names}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        batches = list(data.train.batches(BATCH, shuffle=True, generator=torch.Generator().manual_seed(100 + rep)))
        spent = dict.fromkeys(names, 0.0)
        for c, start in enumerate(range(0, len(batches), args.chunk)):
            chunk = batches[start:start + args.chunk]
            order = names[c % len(names):] + names[:c % len(names)]
            for n in order:
                model, optimizer, _ = setups[n]
                t0 = time.perf_counter()
                train_steps(model, optimizer, chunk)
                spent[n] += time.perf_counter() - t0
        for n in names:
            epoch_time[n].append(spent[n])
            sparsifier = setups[n][2]
            if sparsifier is not None:
                t0 = time.perf_counter()
                sparsifier.epoch_end(rep)
                update_time[n].append(time.perf_counter() - t0)
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{n} {spent[n]:.2f} s" for n in names), flush=True)
    load_after = os.getloadavg()

    rows = ["| setup | median epoch (s) | per step (ms) | vs dense (median of paired ratios) | vs dense (medians) | "
            "topology update per epoch (ms) |" + (" warm-up incl. compilation (s) |" if args.compile else ""),
            "|---|---|---|---|---|---|" + ("---|" if args.compile else "")]
    for n in names:
        med, dense_times = statistics.median(epoch_time[n]), epoch_time[baseline[n]]
        paired = statistics.median(t / d for t, d in zip(epoch_time[n], dense_times))
        update = f"{1e3 * statistics.median(update_time[n]):.1f}" if update_time[n] else "-"
        rows.append(f"| {n} | {med:.3f} | {1e3 * med / steps:.3f} | {paired:.3f} | "
                    f"{med / statistics.median(dense_times):.3f} | {update} |"
                    + (f" {compile_seconds[n]:.1f} |" if args.compile else ""))
    table = "\n".join(rows)
    header = (f"LeNet-300-100, MNIST 60k, batch {BATCH} ({steps} steps/epoch), density {DENSITY}, {args.threads} "
              f"thread(s), {args.repeats} repeats, setups interleaved every {args.chunk} steps, denormals "
              f"{'kept' if args.keep_denormals else 'flushed'}"
              f"{f'; compiled setups: torch.compile(backend={args.compile!r}), against compiled dense' if args.compile else ''}; torch "
              f"{torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs; load average before/after: "
              f"{load_before[0]:.2f}/{load_after[0]:.2f}")
    print(header)
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(f"{header}\n\n{table}\n")


if __name__ == "__main__":
    main()
