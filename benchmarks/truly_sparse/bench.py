"""Truly sparse training on CPU: memory and step time against nnz, and a model whose dense form does not fit.

MLP 784 → W → W → 10 (ReLU) of ``SparseLinear`` layers, ERK densities at
overall density D (sparsecore's ``erk``), SGD with momentum 0.9, SET topology
updates (``TrulySparseTrainer``), fp32, one thread. Sub-commands:

* ``point``: one configuration in this process; prints one JSON line: nnz,
  peak RSS (``ru_maxrss``) and the RSS before the model was built, median
  step time, the time of one SET update, bytes of values / gradients /
  optimizer state / indices (``memory_report``). Batches are random
  (``--data random``) or MNIST. ``--masked`` runs the same model as dense
  ``nn.Linear`` layers under ``sparsecore.Sparsifier(algorithm="set")``
  (the masked mode) for comparison where the dense form fits.
* ``curve``: runs ``point`` in a fresh process per configuration (one at a
  time, so each peak RSS is its own) over widths and densities; appends to
  ``--out`` (JSON lines).
* ``huge``: trains W = 100,000 at D = 0.001 on MNIST for ``--steps`` steps
  (a fraction of an epoch); prints the loss every ``--log-every`` steps and
  the test accuracy before and after; appends one JSON line to ``--out``.
* ``render``: writes the markdown table and the plot from the JSON lines.

Usage (repository root)::

    python benchmarks/truly_sparse/bench.py curve --out benchmarks/results/truly_sparse.jsonl
    python benchmarks/truly_sparse/bench.py huge --steps 120 --out benchmarks/results/truly_sparse.jsonl
    python benchmarks/truly_sparse/bench.py render --out benchmarks/results/truly_sparse.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
#: Bytes per weight of the dense form under SGD with momentum: weight, gradient, momentum buffer (fp32).
DENSE_BYTES_PER_WEIGHT = 12


def rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now (MiB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def warm_up_torch() -> None:
    """Run what every configuration uses once on a tiny model, so lazy imports (optimizer, sparse
    kernels) land before the RSS baseline."""
    import sparsecore
    from sparse_kernels_cuda.truly_sparse import SparseLinear

    sparsecore.registry.load()
    tiny = nn.Sequential(SparseLinear.random(8, 8, 0.5, torch.Generator().manual_seed(0)), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(tiny(torch.randn(4, 8)), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()


def sizes_for(width: int) -> list[int]:
    """Layer widths of the benchmark MLP."""
    return [784, width, width, 10]


def densities_for(width: int, density: float) -> dict[str, float]:
    """ERK densities of the three layers (named as in the ``nn.Sequential``: "0", "2", "4")."""
    from sparsecore import distributions

    sizes = sizes_for(width)
    shapes = {str(2 * i): (sizes[i + 1], sizes[i]) for i in range(3)}
    return distributions.resolve("erk", shapes, density)


def build_sparse(width: int, density: float, seed: int) -> nn.Sequential:
    """The MLP of ``SparseLinear`` layers (positions and values drawn from ``seed``)."""
    from sparse_kernels_cuda.truly_sparse import SparseLinear

    g = torch.Generator().manual_seed(seed)
    sizes, dens = sizes_for(width), densities_for(width, density)
    layers: list[nn.Module] = []
    for i in range(3):
        layers.append(SparseLinear.random(sizes[i], sizes[i + 1], dens[str(2 * i)], g))
        if i < 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def param_groups(model: nn.Module, lr: float, lr_scale: float) -> list[dict]:
    """One group per layer, learning rate ``min(lr, lr_scale / active fan-in)``.

    A unit's output moves by about ``lr * fan_in`` per step; with 100,000
    dense inputs to the last layer a single rate would be either too small
    for the sparse layers or divergent for the last one.
    """
    from sparse_kernels_cuda.truly_sparse import SparseLinear

    groups = []
    for module in model.modules():
        if isinstance(module, SparseLinear):
            fan_in = max(1.0, module.nnz / module.out_features)
            groups.append({"params": list(module.parameters()), "lr": min(lr, lr_scale / fan_in)})
        elif isinstance(module, nn.Linear):
            fan_in = float(module.in_features) * float((module.weight != 0).float().mean())
            groups.append({"params": list(module.parameters()), "lr": min(lr, lr_scale / max(1.0, fan_in))})
    return groups


def batches(kind: str, batch: int, seed: int):
    """An endless iterator of (x, y): random normal inputs, or shuffled MNIST training batches."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        while True:
            yield torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    from sparsecore.data import load_dataset

    train = load_dataset("mnist").train
    while True:
        for x, y in train.batches(batch, generator=g):
            yield x.reshape(x.shape[0], -1), y


def machine() -> str:
    """CPU model, core count and torch version."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


# ----------------------------------------------------------------------
def cmd_point(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    from sparse_kernels_cuda.truly_sparse import TrulySparseTrainer, memory_report

    import sparsecore

    warm_up_torch()
    data = batches(args.data, args.batch, args.seed + 1)
    next(data)
    base = current_rss_mb()
    t0 = time.perf_counter()
    if args.masked:
        sizes = sizes_for(args.width)
        torch.manual_seed(args.seed)
        model: nn.Module = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]),
                                         nn.ReLU(), nn.Linear(sizes[2], sizes[3]))
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        driver = sparsecore.Sparsifier(model, optimizer, algorithm="set", density=args.density, distribution="erk",
                                       total_steps=10**6, seed=args.seed, update_every=10**5)
        nnz = driver.nnz
    else:
        model = build_sparse(args.width, args.density, args.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        driver = TrulySparseTrainer(model, optimizer, "set", total_steps=10**6, seed=args.seed + 2,
                                    update_every=10**5)
        nnz = sum(layer.nnz for layer in driver.layers.values())
    build_s = time.perf_counter() - t0
    times = []
    for step in range(args.warmup + args.steps):
        x, y = next(data)
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    state_bytes = None if args.masked else memory_report(model, optimizer)  # gradients still held
    t = time.perf_counter()
    driver.update_topology(0.3)
    update_s = time.perf_counter() - t
    row = {
        "kind": "point", "mode": "masked" if args.masked else "truly_sparse", "width": args.width,
        "density": args.density, "batch": args.batch, "nnz": nnz,
        "dense_numel": sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
        if args.masked else memory_report(model)["dense_numel"],
        "peak_rss_mb": round(rss_mb(), 1), "base_rss_mb": round(base, 1),
        "step_ms": round(1000 * statistics.median(times), 2), "steps_timed": len(times),
        "update_ms": round(1000 * update_s, 1), "build_s": round(build_s, 2),
    }
    if state_bytes is not None:
        row["bytes"] = state_bytes
    print(json.dumps(row), flush=True)
    return row


def cmd_curve(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)  # as the configurations run (machine() reports it)
    configs = [(w, args.width_density, False) for w in args.widths]
    configs += [(args.density_width, d, False) for d in args.densities if d != args.width_density]
    configs += [(w, args.width_density, True) for w in args.masked_widths]
    configs += [(args.density_width, d, True) for d in args.densities
                if d != args.width_density and args.density_width in args.masked_widths]
    out = Path(args.out)
    for width, density, masked in configs:
        cmd = [sys.executable, __file__, "point", "--width", str(width), "--density", str(density),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
               "--threads", str(args.threads)] + (["--masked"] if masked else [])
        print("$", " ".join(cmd[1:]), flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-2000:], flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=machine())
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def evaluate(model: nn.Module, limit: int) -> float:
    """Accuracy on the first ``limit`` MNIST test images."""
    from sparsecore.data import load_dataset

    test = load_dataset("mnist").test
    correct = seen = 0
    with torch.no_grad():
        for x, y in test.batches(500):
            if seen >= limit:
                break
            correct += int((model(x.reshape(x.shape[0], -1)).argmax(1) == y).sum())
            seen += y.numel()
    return correct / seen


def cmd_huge(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from sparse_kernels_cuda.truly_sparse import TrulySparseTrainer, memory_report

    warm_up_torch()
    data = batches("mnist", args.batch, args.seed + 1)
    next(data)
    base = current_rss_mb()
    t0 = time.perf_counter()
    model = build_sparse(args.width, args.density, args.seed)
    optimizer = torch.optim.SGD(param_groups(model, args.lr, args.lr_scale), lr=args.lr, momentum=0.9)
    trainer = TrulySparseTrainer(model, optimizer, "set", total_steps=args.steps + 1, seed=args.seed + 2,
                                 update_every=args.update_every)
    build_s = time.perf_counter() - t0
    print(f"built in {build_s:.1f} s: {trainer}; lrs {[round(g['lr'], 6) for g in optimizer.param_groups]}",
          flush=True)
    acc_before = evaluate(model, args.eval_images)
    print(f"test accuracy before: {acc_before:.4f}", flush=True)
    losses, times = [], []
    for step in range(1, args.steps + 1):
        x, y = next(data)
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
        if step % args.log_every == 0 or step == 1:
            print(f"step {step}: loss {loss.item():.4f}, {times[-1]:.2f} s, peak RSS {rss_mb():.0f} MiB", flush=True)
    acc_after = evaluate(model, args.eval_images)
    print(f"test accuracy after: {acc_after:.4f}", flush=True)
    k = max(1, args.log_every)
    row = {
        "kind": "huge", "width": args.width, "density": args.density, "batch": args.batch, "steps": args.steps,
        "epoch_fraction": round(args.steps * args.batch / 60000, 3), "update_every": args.update_every,
        "updates": len(trainer.history), "nnz": sum(layer.nnz for layer in trainer.layers.values()),
        "dense_numel": memory_report(model)["dense_numel"], "layer_density": densities_for(args.width, args.density),
        "lrs": [g["lr"] for g in optimizer.param_groups], "peak_rss_mb": round(rss_mb(), 1),
        "base_rss_mb": round(base, 1), "build_s": round(build_s, 1),
        "step_s_median": round(statistics.median(times), 3), "step_s_max": round(max(times), 3),
        "loss_first": round(statistics.mean(losses[:k]), 4), "loss_last": round(statistics.mean(losses[-k:]), 4),
        "losses": [round(v, 4) for v in losses], "test_acc_before": acc_before, "test_acc_after": acc_after,
        "eval_images": args.eval_images, "bytes": memory_report(model, optimizer),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
    }
    if args.out:
        with Path(args.out).open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)


# ----------------------------------------------------------------------
def load_rows(path: Path) -> list[dict]:
    """The JSON lines of ``path``; a later row of the same configuration replaces an earlier one."""
    rows: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["kind"], row.get("mode"), row["width"], row["density"])] = row
    return list(rows.values())


def cmd_render(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(Path(args.out))
    points = sorted((r for r in rows if r["kind"] == "point"), key=lambda r: (r["mode"], r["width"], r["density"]))
    huge = [r for r in rows if r["kind"] == "huge"]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [("truly_sparse", "width", args.width_density, "truly sparse, width sweep (D = {})", "o-"),
              ("truly_sparse", "density", args.density_width, "truly sparse, density sweep (W = {})", "s-"),
              ("masked", "width", args.width_density, "masked (dense weights), width sweep (D = {})", "x--"),
              ("masked", "density", args.density_width, "masked (dense weights), density sweep (W = {})", "+--")]
    for mode, sweep, fixed, label, style in series:
        if sweep == "width":
            chosen = [r for r in points if r["mode"] == mode and r["density"] == fixed]
        else:
            chosen = [r for r in points if r["mode"] == mode and r["width"] == fixed]
        chosen.sort(key=lambda r: r["nnz"])
        if not chosen:
            continue
        nnz = [r["nnz"] for r in chosen]
        ax_mem.plot(nnz, [r["peak_rss_mb"] - r["base_rss_mb"] for r in chosen], style, label=label.format(fixed))
        ax_time.plot(nnz, [r["step_ms"] for r in chosen], style, label=label.format(fixed))
    width_rows = sorted((r for r in points if r["mode"] == "truly_sparse" and r["density"] == args.width_density),
                        key=lambda r: r["nnz"])
    if width_rows:
        ax_mem.plot([r["nnz"] for r in width_rows],
                    [DENSE_BYTES_PER_WEIGHT * r["dense_numel"] / 2**20 for r in width_rows], ":", color="grey",
                    label=f"dense form, width sweep (weights+grads+momentum, {DENSE_BYTES_PER_WEIGHT} B/weight)")
        ax_mem.axhline(24 * 1024, color="red", lw=0.8, label="this machine's memory (24 GiB)")
    for r in huge:
        ax_mem.plot([r["nnz"]], [r["peak_rss_mb"] - r["base_rss_mb"]], "*", ms=14, color="black",
                    label=f"MNIST run, W = {r['width']:,}, D = {r['density']}")
        ax_time.plot([r["nnz"]], [1000 * r["step_s_median"]], "*", ms=14, color="black",
                     label=f"MNIST run, W = {r['width']:,}, D = {r['density']}")
    for ax, title, ylabel in ((ax_mem, "memory", "peak RSS above the pre-model baseline (MiB)"),
                              (ax_time, "time", "median training step (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("active weights (nnz)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"MLP 784-W-W-10, ERK, batch {points[0]['batch'] if points else '?'}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = Path(args.out).with_suffix(".png")
    fig.savefig(png, dpi=110)
    md = [
        "# Truly sparse training (sparse-kernels-cuda `truly_sparse`)",
        "",
        "Commands (repository root, one process at a time, 1 thread):",
        "",
        "```bash",
        "python benchmarks/truly_sparse/bench.py curve --out benchmarks/results/truly_sparse.jsonl",
        f"python benchmarks/truly_sparse/bench.py huge --steps {huge[-1]['steps'] if huge else 'N'} "
        "--out benchmarks/results/truly_sparse.jsonl",
        "python benchmarks/truly_sparse/bench.py render --out benchmarks/results/truly_sparse.jsonl",
        "```",
        "",
        f"Machine: {points[0]['machine'] if points else (huge[0]['machine'] if huge else '?')} "
        "(a shared 2-core VM with 24 GiB; other jobs ran beside these, so times are indicative).",
        f"Dates: {', '.join(sorted({r['date'][:10] for r in rows}))}.",
        "",
        "Model: MLP 784 → W → W → 10 (ReLU), every layer sparse with ERK densities at overall density D "
        "(sparsecore's `erk`), fp32, SGD momentum 0.9; truly sparse = `SparseLinear` layers driven by "
        "`TrulySparseTrainer(algorithm=\"set\")`; masked = the same MLP as dense `nn.Linear` under "
        "`sparsecore.Sparsifier(algorithm=\"set\")`. Peak RSS is the process's `ru_maxrss`; the baseline is "
        "its RSS after imports and one batch, before the model is built. Each configuration runs in its own "
        "process. Step = zero_grad + forward + backward + optimizer step (median); update = one SET update at "
        "rate 0.3 (prune smallest |w|, regrow at random) with structure and optimizer-state rebuild; random growth "
        "draws the engine's permutation for layers with up to 2^26 inactive weights and samples by rejection above "
        "(`growth=\"auto\"`), so the update time is not monotone in nnz.",
        "",
    ]
    for r in huge:
        dense_gb = DENSE_BYTES_PER_WEIGHT * r["dense_numel"] / 1e9
        md += [
            f"## A model whose dense form does not fit: W = {r['width']:,}, D = {r['density']} on MNIST",
            "",
            f"* {r['dense_numel']:,} weights in dense form: {4 * r['dense_numel'] / 1e9:.1f} GB of fp32 weights "
            f"alone, {dense_gb:.0f} GB with gradients and momentum; this machine has 24 GiB.",
            f"* Truly sparse: {r['nnz']:,} active weights (layer densities "
            + ", ".join(f"{float(v):.3g}" for v in r["layer_density"].values())
            + f"); values + gradients + momentum + indices = {r['bytes']['total'] / 2**20:.0f} MiB "
            f"({r['bytes']['total'] / r['nnz']:.1f} B per active weight, indices {r['bytes']['indices'] / 2**20:.0f} "
            f"MiB); **peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB** (baseline {r['base_rss_mb']:.0f} MiB, MNIST "
            "loaded).",
            f"* Trained {r['steps']} steps of batch {r['batch']} ({r['epoch_fraction']:.0%} of an epoch), SET "
            f"update every {r['update_every']} steps ({r['updates']} updates), per-layer learning rates "
            f"{', '.join(f'{v:.3g}' for v in r['lrs'])} (`min(lr, lr_scale / active fan-in)`): "
            f"**loss {r['loss_first']:.3f} → {r['loss_last']:.3f}** (mean of the first / last logged stretch), "
            f"**test accuracy {r['test_acc_before']:.2%} → {r['test_acc_after']:.2%}** on the first "
            f"{r['eval_images']:,} MNIST test images (chance 10 %).",
            f"* Median step {r['step_s_median']:.2f} s (slowest, with an update, {r['step_s_max']:.1f} s); "
            f"model built in {r['build_s']:.0f} s. Run on {r['date']}.",
            "",
        ]
    md += ["## Memory and step time against nnz", "",
           f"Plot: `benchmarks/results/{png.name}` (left: peak RSS above the baseline against nnz, with the "
           "dense form's memory; right: median step time against nnz).", "",
           "| mode | W | D | nnz | dense form (GB, 12 B/weight) | peak RSS − baseline (MiB) | sparse state "
           "(MiB) | B per nnz (state) | step (ms) | SET update (ms) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in points:
        state = r.get("bytes", {}).get("total")
        md.append("| {} | {:,} | {} | {:,} | {:.2f} | {:.0f} | {} | {} | {:.1f} | {:.0f} |".format(
            r["mode"].replace("_", " "), r["width"], r["density"], r["nnz"],
            DENSE_BYTES_PER_WEIGHT * r["dense_numel"] / 1e9, r["peak_rss_mb"] - r["base_rss_mb"],
            "–" if state is None else f"{state / 2**20:.1f}", "–" if state is None else f"{state / r['nnz']:.1f}",
            r["step_ms"], r["update_ms"]))
    md += ["", "Sparse state = values, gradients, momentum and both CSR index structures of the `SparseLinear` "
           "layers (`memory_report`); RSS also holds activations (batch × W floats per layer and their "
           "gradients), torch's allocator slack and the transient tensors of the products.", ""]
    Path(args.out).with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {png} and {Path(args.out).with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    point = sub.add_parser("point", help="one configuration, in this process")
    point.add_argument("--width", type=int, required=True)
    point.add_argument("--density", type=float, required=True)
    point.add_argument("--masked", action="store_true", help="dense nn.Linear under sparsecore (masked mode)")
    curve = sub.add_parser("curve", help="a fresh process per configuration")
    curve.add_argument("--widths", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    curve.add_argument("--densities", type=float, nargs="+", default=[0.0003, 0.001, 0.003, 0.01, 0.03])
    curve.add_argument("--masked-widths", type=int, nargs="*", default=[1000, 3000, 10000])
    for p in (point, curve):
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--batch", type=int, default=128)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--data", choices=("random", "mnist"), default="random")
    huge = sub.add_parser("huge", help="train W = 100,000 at D = 0.001 on MNIST")
    huge.add_argument("--width", type=int, default=100_000)
    huge.add_argument("--density", type=float, default=0.001)
    huge.add_argument("--steps", type=int, default=120)
    huge.add_argument("--batch", type=int, default=128)
    huge.add_argument("--lr", type=float, default=0.05)
    huge.add_argument("--lr-scale", type=float, default=2.0)
    huge.add_argument("--update-every", type=int, default=50)
    huge.add_argument("--log-every", type=int, default=10)
    huge.add_argument("--eval-images", type=int, default=2000)
    render = sub.add_parser("render", help="markdown + png from the JSON lines")
    for p in (point, curve, huge, render):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", default=str(RESULTS / "truly_sparse.jsonl"))
    for p in (curve, render):
        p.add_argument("--width-density", type=float, default=0.001, help="density of the width sweep")
        p.add_argument("--density-width", type=int, default=10000, help="width of the density sweep")
    args = parser.parse_args()
    {"point": cmd_point, "curve": cmd_curve, "huge": cmd_huge, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()
