"""SWAT measurements: analytic training FLOPs, saved-for-backward bytes, CPU step time, short accuracy.

Usage (from the repository root, with sparsecore and sparsecore-swat importable)::

    python benchmarks/swat/swat_bench.py flops
    python benchmarks/swat/swat_bench.py memory
    python benchmarks/swat/swat_bench.py time
    python benchmarks/swat/swat_bench.py accuracy --epochs 2
    python benchmarks/swat/swat_bench.py topk

Each prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import sparsecore
import torch
import torch.nn.functional as F
from sparsecore import distributions
from sparsecore.models import create_model
from sparsecore_swat import SwatAlgorithm
from torch import nn

MODELS = {"lenet-5-caffe": (1, 28, 28), "vgg16-c": (3, 32, 32), "wrn-16-8": (3, 32, 32)}
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def machine() -> str:
    """One line describing the machine the numbers come from."""
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def prunable_layers(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, nn.Module, int]]:
    """``(name, module, output positions per sample)`` of every Linear/Conv, in call order."""
    found: list[tuple[str, nn.Module, int]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            def hook(mod, args, out, name=name):
                positions = math.prod(out.shape[2:]) if not isinstance(mod, nn.Linear) else math.prod(out.shape[1:-1])
                found.append((name, mod, positions))
            handles.append(module.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return found


def training_flops(layers, densities: dict[str, float]) -> tuple[float, float]:
    """Dense and SWAT training FLOPs per sample (forward + input gradient + weight gradient).

    Per layer with P output positions and |W| weights, one product costs
    ``2 * P * |W|`` FLOPs dense. SWAT: forward and input gradient use the
    top-K weights (``d_w``), the weight gradient uses the top-K activations
    (``d_a = d_w``, as the reference): ``2P|W| (2 d_w + d_a)``. The first layer
    needs no input gradient in either case. Only Linear/Conv products are counted.
    """
    dense = swat = 0.0
    for i, (name, module, positions) in enumerate(layers):
        macs = 2.0 * positions * module.weight.numel()
        d = densities.get(name, 1.0)
        n_products_dense = 2 if i == 0 else 3
        dense += n_products_dense * macs
        swat += macs * ((d if i > 0 else 0.0) + d + d)
    return dense, swat


def cmd_flops(args) -> None:
    print(f"machine-independent (analytic). torch {torch.__version__}\n")
    print("| model | variant | weight/act. sparsity | dense GFLOPs/sample | SWAT GFLOPs/sample | reduction |")
    print("|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        layers = prunable_layers(create_model(name), shape)
        names = [n for n, _, _ in layers]
        shapes = {n: tuple(m.weight.shape) for n, m, _ in layers}
        for sparsity in (0.8, 0.9):
            density = 1 - sparsity
            # SWAT-U: first layer dense, the rest (last included) at the density
            uniform = {n: (1.0 if i == 0 else density) for i, n in enumerate(names)}
            # rescale so the overall weight budget matches the engine's (dense first layer excluded)
            erk = distributions.erk(shapes, density)
            for variant, dens in (("SWAT-U", uniform), ("SWAT-ERK", erk)):
                dense, swat = training_flops(layers, dens)
                print(f"| {name} | {variant} | {sparsity:.0%} | {dense / 1e9:.4f} | {swat / 1e9:.4f} | "
                      f"{1 - swat / dense:.1%} |")


class SavedBytes:
    """Counts bytes autograd saves for backward: inside SWAT/linear/conv layers, and model-wide unique storages."""

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.data_ptr() for p in model.parameters()}
        self.inside = 0
        self.layer_bytes = 0
        self.storages: dict[int, int] = {}
        self.handles = []
        for module in model.modules():
            if isinstance(module, LAYER_TYPES):
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, *args) -> None:
        self.inside += 1

    def _leave(self, *args) -> None:
        self.inside -= 1

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() in self.params:
            return t
        if self.inside:
            self.layer_bytes += t.numel() * t.element_size()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total_unique(self) -> int:
        return sum(self.storages.values())


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    counter = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in counter.handles:
        h.remove()
    return counter.layer_bytes, counter.total_unique


def _swat(model: nn.Module, density: float, **options) -> tuple[sparsecore.Sparsifier, torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sp = sparsecore.Sparsifier(model, opt, algorithm=SwatAlgorithm(**options), density=density, seed=0)
    return sp, opt


MEMORY_CONFIGS = ("dense", "80 layers", "80 model", "90 layers", "90 model")


def _memory_model(name: str, config: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model of a memory row: dense, or SWAT-U with ``activation_memory`` "layers" or "model"."""
    torch.manual_seed(0)
    model = create_model(name)
    if config == "dense":
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsity, memory = config.split()
    return model, _swat(model, 1 - int(sparsity) / 100, activation_memory=memory)[1]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_step_bytes(name: str, config: str, batch: int) -> int:
    """Peak resident memory a training step adds, in this (fresh) process; Linux only.

    One warm-up step first (gradients and momentum exist afterwards), then the
    freed memory is handed back to the OS (``malloc_trim``), the peak RSS
    counter is reset (``/proc/self/clear_refs``) and one more step runs: the
    result is its peak RSS minus the RSS before it. Run with
    ``MALLOC_MMAP_THRESHOLD_`` set so large tensors are mapped and unmapped
    one by one.
    """
    import ctypes
    import gc

    model, opt = _memory_model(name, config)
    torch.manual_seed(0)
    x, y = torch.randn(batch, *MODELS[name]), torch.randint(0, 10, (batch,))
    for i in range(2):
        if i == 1:
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            base = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (_status_kib("VmHWM") - base) * 1024


def _peak_in_subprocess(name: str, config: str, batch: int) -> int:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--threads", str(torch.get_num_threads()), "peak", name, config,
                          "--batch", str(batch)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def cmd_peak(args) -> None:
    print(peak_step_bytes(args.model, args.config, args.batch))


def cmd_memory(args) -> None:
    import datetime

    print(f"machine: {machine()}; batch {args.batch}; float32; model in train mode; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print("| model | config | saved by Linear/Conv layers (MiB) | all saved tensors, unique storages (MiB) | "
          "vs dense | peak RSS added by a training step (MiB) | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        torch.manual_seed(0)
        x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        dense_total = dense_peak = 0
        for config in MEMORY_CONFIGS:
            model, _ = _memory_model(name, config)
            layer, total = saved_bytes(model, x, y)
            peak = _peak_in_subprocess(name, config, args.batch) if args.peak else 0
            if config == "dense":
                dense_total, dense_peak = total, peak
                label = "dense"
            else:
                sparsity, memory = config.split()
                label = f"SWAT-U {sparsity}%, activation_memory={memory!r}"
            peak_cells = (f"{peak / 2**20:.1f} | {peak / dense_peak:.1%}" if args.peak else "– | –")
            print(f"| {name} | {label} | {layer / 2**20:.2f} | {total / 2**20:.2f} | {total / dense_total:.1%} | "
                  f"{peak_cells} |", flush=True)


def _step_times(model: nn.Module, opt: torch.optim.Optimizer, x, y, repeats: int) -> list[float]:
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return times


def cmd_time(args) -> None:
    print(f"machine: {machine()}; median of {args.repeats} steps after 2 warm-up steps\n")
    print("| model | batch | dense ms/step | SWAT-U 80 % ms/step | SWAT-U 90 % ms/step | SWAT-U 90 % period 10 ms/step |")
    print("|---|---|---|---|---|---|")
    for name, batch in (("lenet-5-caffe", 100), ("vgg16-c", 16)):
        shape = MODELS[name]
        torch.manual_seed(0)
        x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
        cells = []
        for config in ("dense", 0.8, 0.9, "p10"):
            torch.manual_seed(0)
            model = create_model(name)
            model.train()
            if config == "dense":
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            elif config == "p10":
                _, opt = _swat(model, 0.1, period=10)
            else:
                _, opt = _swat(model, 1 - config)
            cells.append(statistics.median(_step_times(model, opt, x, y, args.repeats)) * 1e3)
        print(f"| {name} | {batch} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def cmd_accuracy(args) -> None:
    from sparsecore.data import load_dataset

    ds = load_dataset("mnist")
    print(f"machine: {machine()}; LeNet-5-Caffe on MNIST, {args.epochs} epochs, batch 100, "
          f"SGD lr 0.01 momentum 0.9, seed {args.seed}, same data order for every run\n")
    print("| config | test accuracy (%) | train s/epoch |")
    print("|---|---|---|")
    for config in ("dense", 0.8, 0.9):
        torch.manual_seed(args.seed)
        model = create_model("lenet-5-caffe")
        if config == "dense":
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            sp = None
        else:
            sp, opt = _swat(model, 1 - config)
        g = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for epoch in range(args.epochs):
            model.train()
            for xb, yb in ds.train.batches(100, generator=g):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            if sp is not None:
                sp.epoch_end(epoch)
        per_epoch = (time.perf_counter() - start) / args.epochs
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(ds.test.y), 1000):
                correct += int((model(ds.test.x[i:i + 1000]).argmax(1) == ds.test.y[i:i + 1000]).sum())
        label = "dense" if config == "dense" else f"SWAT-U {config:.0%} (weights and activations)"
        print(f"| {label} | {100 * correct / len(ds.test.y):.2f} | {per_epoch:.1f} |", flush=True)


def cmd_topk(args) -> None:
    print(f"machine: {machine()}; median of 5 runs, ms\n")
    print("| entries | keep | kthvalue | topk | sort |")
    print("|---|---|---|---|---|")
    for n in (4096, 300_000, 2_000_000, 8_000_000):
        a = torch.randn(n).abs()
        for keep in (0.2, 0.1):
            k = math.ceil(keep * n)
            fns = (lambda a=a, n=n, k=k: torch.kthvalue(a, n - k + 1).values,
                   lambda a=a, k=k: torch.topk(a, k, sorted=False).values.min(),
                   lambda a=a, n=n, k=k: torch.sort(a).values[n - k])
            cells = []
            for fn in fns:
                fn()
                runs = []
                for _ in range(5):
                    start = time.perf_counter()
                    fn()
                    runs.append(time.perf_counter() - start)
                cells.append(statistics.median(runs) * 1e3)
            print(f"| {n:,} | {keep} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("flops")
    p = sub.add_parser("memory")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-peak", dest="peak", action="store_false", help="skip the peak-RSS column")
    p = sub.add_parser("peak", help="(internal) peak RSS of one training step, in bytes")
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("config", choices=MEMORY_CONFIGS)
    p.add_argument("--batch", type=int, default=16)
    p = sub.add_parser("time")
    p.add_argument("--repeats", type=int, default=7)
    p = sub.add_parser("accuracy")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("topk")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commands = {"flops": cmd_flops, "memory": cmd_memory, "peak": cmd_peak, "time": cmd_time,
                "accuracy": cmd_accuracy, "topk": cmd_topk}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
