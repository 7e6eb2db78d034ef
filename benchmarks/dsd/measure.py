"""Dense vs DSD at the same number of epochs: LeNet-300-100 / LeNet-5-Caffe on MNIST and Fashion-MNIST, several seeds.

Arms (same model initialisation, data order and optimizer per seed):

* ``dense``: SGD at a constant learning rate for all epochs.
* ``dense-llr``: dense, with the learning rate ×0.1 for the last third, the same
  schedule DSD's re-dense phase gets (the paper's "lower learning rate" control:
  it separates DSD's sparse phase from the plain effect of a smaller final rate).
* ``dsd``: ``algorithm="dsd"``, dense / sparse / re-dense thirds (by epoch),
  kept fraction ``--density`` in the sparse phase, re-dense at 0.1 × the rate.
  LeNet-300-100's first layer is a fully connected layer, not the 3-channel conv
  the paper keeps dense, so every layer is pruned (``dense_first_layer=False``);
  LeNet-5-Caffe keeps its first conv dense as the paper does (the plugin default).

Results of LeNet-300-100 are keyed by the dataset name alone (``mnist``), those of
other models by ``dataset:model`` (``mnist:lenet-5-caffe``).

Writes ``benchmarks/results/dsd.json`` after every run (re-running skips runs
already there) and renders ``benchmarks/results/dsd.md``.

Usage::

    nice -n 10 python benchmarks/dsd/measure.py --seeds 0 1 2 --epochs 30
    nice -n 10 python benchmarks/dsd/measure.py --models lenet-5-caffe --datasets mnist --seeds 0 1 --epochs 15
    python benchmarks/dsd/measure.py --render-only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import sparsecore
from sparsecore.data import load_dataset
from sparsecore.models import create_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("dense", "dense-llr", "dsd")
DEFAULT_MODEL = "lenet-300-100"


def result_key(dataset: str, model: str) -> str:
    """Key of a (dataset, model) pair in the results file."""
    return dataset if model == DEFAULT_MODEL else f"{dataset}:{model}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`result_key`: ``(dataset, model)``."""
    dataset, _, model = key.partition(":")
    return dataset, model or DEFAULT_MODEL


def evaluate(model: nn.Module, split, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in split.batches(batch_size, shuffle=False):
            correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / len(split.y)


def run(arm: str, dataset, seed: int, args, model_name: str = DEFAULT_MODEL) -> dict:
    """Train one arm on one seed and return its record (per-epoch test accuracy, phases, wall time)."""
    torch.manual_seed(seed)
    model = create_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    third = args.epochs // 3
    phase_epochs = (third, third, args.epochs - 2 * third)
    sp = None
    if arm == "dsd":
        sp = sparsecore.Sparsifier(model, opt, algorithm="dsd", density=args.density, phase_epochs=phase_epochs,
                                   dense_first_layer=model_name != "lenet-5-caffe", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    history, phases = [], []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if arm == "dense-llr":
            for g in opt.param_groups:
                g["lr"] = args.lr * (0.1 if epoch >= 2 * third else 1.0)
        for x, y in dataset.train.batches(args.batch_size, shuffle=True, generator=gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if sp is not None:
            phases.append(sp.algorithm.phase_at(epoch=epoch))
            density = sp.nnz / sum(l.capacity for l in sp.layers.values())
            sp.epoch_end(epoch)
        else:
            density = 1.0
        history.append({"epoch": epoch, "test_acc": evaluate(model, dataset.test), "density_end": density})
    seconds = time.perf_counter() - start
    if sp is not None:
        assert all(bool(l.mask.all()) for l in sp.layers.values()), "DSD must end dense"
        sp.remove()
        sp.algorithm.remove()
    return {"arm": arm, "seed": seed, "final_test_acc": history[-1]["test_acc"], "history": history,
            "phases": phases, "seconds": round(seconds, 1)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def render(data: dict) -> str:
    cfg = data["config"]
    lines = [
        "# DSD vs dense at the same number of epochs",
        "",
        "Commands: " + ", ".join(f"`{c}`" for c in data.get("commands") or [data["command"]]) + "  ",
        f"Machine: {data['machine']}  ",
        f"Recipe: {cfg['epochs']} epochs, batch {cfg['batch_size']}, SGD lr {cfg['lr']} momentum {cfg['momentum']} "
        f"weight decay {cfg['weight_decay']}, no augmentation, no LR schedule except as stated. "
        f"DSD: phase_epochs {cfg['phase_epochs']} (dense / sparse / re-dense), density {cfg['density']} "
        f"(kept fraction in the sparse phase, i.e. {1 - cfg['density']:.0%} sparsity; every layer of LeNet-300-100 "
        "pruned, LeNet-5-Caffe's first conv kept dense as in the paper), "
        "re-dense at 0.1 × lr, optimizer state reset at each phase change (plugin defaults). "
        "`dense-llr`: dense with lr × 0.1 over the last third, the same rate schedule as DSD without the sparse phase. "
        "Test accuracy after the final epoch (no best-epoch selection), mean ± sample std over the seeds run "
        "(n per row); every arm of a seed shares the initialisation and the data order.",
        "",
        "| dataset | model | arm | test accuracy (%) | DSD − arm (pp) | DSD − arm per seed (pp) | s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds, runs in data["results"].items():
        by_arm = {a: {r["seed"]: r for r in runs if r["arm"] == a} for a in ARMS}
        seeds = sorted(set.intersection(*(set(v) for v in by_arm.values()))) if all(by_arm.values()) else []
        for arm in ARMS:
            rs = by_arm[arm]
            if not rs:
                continue
            m, s = mean_std([100 * r["final_test_acc"] for r in rs.values()])
            secs = statistics.fmean(r["seconds"] for r in rs.values())
            if arm != "dsd" and seeds:
                diffs = [100 * (by_arm["dsd"][k]["final_test_acc"] - rs[k]["final_test_acc"]) for k in seeds]
                dm, dsd_ = mean_std(diffs)
                diff = f"{dm:+.2f} ± {dsd_:.2f}"
                per = ", ".join(f"{d:+.2f}" for d in diffs)
            else:
                diff = per = "–"
            lines.append(f"| {' | '.join(split_key(ds))} | {arm} | {m:.2f} ± {s:.2f} (n={len(rs)}) | {diff} | {per} "
                         f"| {secs:.0f} |")
    lines += ["", "Test accuracy (%) at the end of each DSD phase (mean over seeds; dense arms at the same epochs):", "",
              "| dataset | model | arm | end of dense | end of sparse | end of re-dense |", "|---|---|---|---|---|---|"]
    for ds, runs in data["results"].items():
        ends = [cfg["phase_epochs"][0] - 1, sum(cfg["phase_epochs"][:2]) - 1, cfg["epochs"] - 1]
        for arm in ARMS:
            rs = [r for r in runs if r["arm"] == arm]
            if rs:
                cells = [f"{statistics.fmean(100 * r['history'][e]['test_acc'] for r in rs):.2f}" for e in ends]
                lines.append(f"| {' | '.join(split_key(ds))} | {arm} | " + " | ".join(cells) + " |")
    dsd_runs = [r for runs in data["results"].values() for r in runs if r["arm"] == "dsd"]
    if dsd_runs:
        r = dsd_runs[0]
        lines += ["", "Phase and density (sparse layers, measured before `epoch_end`) per epoch of one DSD run: "
                  + ", ".join(f"{e}:{p[0].upper()}{h['density_end']:.2f}"
                              for e, (p, h) in enumerate(zip(r["phases"], r["history"]))) + "."]
    lines += ["", "Raw per-run data (per-epoch test accuracy): `benchmarks/results/dsd.json`.", ""]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} torch thread(s) on a shared 2-core machine, "
            f"Python {platform.python_version()}, torch {torch.__version__}, CPU only")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--models", nargs="+", default=[DEFAULT_MODEL], help="lenet-300-100, lenet-5-caffe")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--density", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "dsd.json"))
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        data = json.loads(out.read_text())
        out.with_suffix(".md").write_text(render(data))
        return 0
    torch.set_num_threads(args.threads)
    third = args.epochs // 3
    config = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
              "weight_decay": args.weight_decay, "density": args.density,
              "phase_epochs": [third, third, args.epochs - 2 * third]}
    data = json.loads(out.read_text()) if out.exists() else {}
    data.get("config", {}).pop("seeds", None)  # older files listed the seeds in the recipe
    if data.get("config") != config:
        if data.get("results"):
            p.error(f"{out} holds runs of another recipe ({data.get('config')}); pass --out to write elsewhere")
        data = {"config": config, "results": {}}
    commands = data.setdefault("commands", [data.pop("command")] if "command" in data else [])
    command = "nice -n 10 python benchmarks/dsd/measure.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if command not in commands:
        commands.append(command)
    data["machine"] = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    for ds_name in args.datasets:
        dataset = load_dataset(ds_name)
        for model_name in args.models:
            key = result_key(ds_name, model_name)
            runs = data["results"].setdefault(key, [])
            for seed in args.seeds:
                for arm in args.arms:
                    if any(r["arm"] == arm and r["seed"] == seed for r in runs):
                        continue
                    r = run(arm, dataset, seed, args, model_name)
                    runs.append(r)
                    print(f"{key} seed {seed} {arm}: {100 * r['final_test_acc']:.2f}% ({r['seconds']} s)", flush=True)
                    out.write_text(json.dumps(data, indent=1))
                    out.with_suffix(".md").write_text(render(data))
    out.with_suffix(".md").write_text(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
