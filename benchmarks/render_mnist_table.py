"""Render ``benchmarks/results/mnist_table.md`` from every row of ``benchmarks/results/mnist_runs.jsonl``.

Each line of the JSON-lines file is one finished run::

    {"method": "sparse-momentum", "model": "lenet-300-100", "density": 0.05, "seed": 0,
     "epochs": 100, "test_error": 1.52, "wall_s": 600.0}

(``test_error`` in %, ``density`` 1.0 for dense; extra keys such as ``machine``
and ``torch`` are shown in the notes). The finished runs of the LeNet-5-Caffe
queue (``sparse_momentum_lenet5_runs.jsonl``) are added as ``<arm> [snfs-lenet5]``
rows; collapsed runs (error above 50 %) are counted, not averaged. Any script may append rows; rows are
grouped by (model, method, density, epochs) and shown as mean ± sample std
over seeds beside the published number where the paper gives one. The rows the
paper's MNIST table needs are always listed, marked "not run" when absent.

Usage::

    python benchmarks/render_mnist_table.py [--runs FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "results" / "mnist_runs.jsonl"
OUT = ROOT / "benchmarks" / "results" / "mnist_table.md"
#: Finished runs of the LeNet-5-Caffe queue (``benchmarks/sparse_momentum/lenet5_queue.py``), one row per run.
LENET5_RUNS = ROOT / "benchmarks" / "results" / "sparse_momentum_lenet5_runs.jsonl"
#: Test error (%) above which a run counts as collapsed (chance is 90 %).
COLLAPSED_ABOVE = 50.0

#: Published test error (%) by (model, method, density): Dettmers & Zettlemoyer 2019 (sparse momentum)
#: and Lee et al. 2019, Table 1 (SNIP).
PUBLISHED = {
    ("lenet-300-100", "snip", 0.05): 1.6,
    ("lenet-300-100", "snip", 0.02): 2.4,
    ("lenet-300-100", "snip (variance-scaling init)", 0.05): 1.6,
    ("lenet-300-100", "snip (variance-scaling init)", 0.02): 2.4,
    ("lenet-300-100", "snip (official protocol)", 0.05): 1.6,
    ("lenet-300-100", "snip (official protocol)", 0.02): 2.4,
    ("lenet-300-100", "snip (official protocol, first release)", 0.05): 1.6,
    ("lenet-300-100", "snip (official protocol, first release)", 0.02): 2.4,
    ("lenet-300-100", "sparse-momentum", 0.01): 2.36,
    ("lenet-300-100", "sparse-momentum", 0.02): 1.99,
    ("lenet-300-100", "sparse-momentum", 0.05): 1.53,
    ("lenet-5-caffe", "sparse-momentum", 0.05): 0.69,
    ("lenet-5-caffe", "sparse-momentum [snfs-lenet5]", 0.05): 0.69,
    ("lenet-5-caffe", "sparse-momentum (warmup_steps=100) [snfs-lenet5]", 0.05): 0.69,
}

#: Rows always listed (model, method, density), in this order.
EXPECTED = [
    ("lenet-300-100", "dense", 1.0),
    ("lenet-300-100", "static", 0.05),
    ("lenet-300-100", "sparse-momentum", 0.01),
    ("lenet-300-100", "sparse-momentum", 0.02),
    ("lenet-300-100", "sparse-momentum", 0.05),
    ("lenet-300-100", "sparse-momentum (redistribution=none)", 0.05),
    ("lenet-300-100", "snip", 0.02),
    ("lenet-300-100", "snip", 0.05),
    ("lenet-300-100", "snip (official protocol)", 0.02),
    ("lenet-300-100", "snip (official protocol)", 0.05),
    ("lenet-300-100", "snip (official protocol, first release)", 0.02),
    ("lenet-300-100", "snip (official protocol, first release)", 0.05),
    ("lenet-5-caffe", "sparse-momentum", 0.05),
    ("lenet-5-caffe", "dense [snfs-lenet5]", 1.0),
    ("lenet-5-caffe", "static [snfs-lenet5]", 0.05),
    ("lenet-5-caffe", "sparse-momentum [snfs-lenet5]", 0.05),
    ("lenet-5-caffe", "sparse-momentum (warmup_steps=100) [snfs-lenet5]", 0.05),
    ("lenet-5-caffe", "sparse-momentum (redistribution=none) [snfs-lenet5]", 0.05),
]

#: How the rows of each method were produced (shown under the table).
COMMANDS = {
    "sparse-momentum": "python benchmarks/sparse_momentum/reproduce_mnist.py --models MODEL "
                       "--methods sparse-momentum --densities D --seeds S",
    "sparse-momentum (redistribution=none)": "python benchmarks/sparse_momentum/reproduce_mnist.py "
                                             "--methods none --densities 0.05 --seeds S",
    "static": "python benchmarks/sparse_momentum/reproduce_mnist.py --methods static --densities 0.05 --seeds S",
    "dense": "python benchmarks/sparse_momentum/reproduce_mnist.py --methods dense --seeds S",
    "snip": "python benchmarks/snip/reproduce_mnist.py --densities 0.05 0.02 --seeds S",
    "snip (variance-scaling init)": "python benchmarks/snip/reproduce_mnist.py --init vs --densities 0.05 0.02 "
                                    "--seeds S",
    "snip (official protocol)": "python benchmarks/snip/reproduce_mnist.py --official --densities 0.05 0.02 "
                                "--seeds S",
    "snip (official protocol, first release)": "python benchmarks/snip/reproduce_mnist.py --official "
                                               "--score-bias-init vs --densities 0.05 0.02 --seeds S",
}

REQUIRED = ("method", "model", "density", "seed", "epochs", "test_error", "wall_s")
QUEUE_COMMAND = "python benchmarks/sparse_momentum/lenet5_queue.py --stage full"


def load_rows(path: Path) -> list[dict]:
    """Every valid row of the JSON-lines file (rows missing a required key are an error)."""
    rows = []
    if not path.exists():
        return rows
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise SystemExit(f"{path}:{number}: row lacks {missing}")
        rows.append(row)
    return rows


def queue_rows(path: Path) -> list[dict]:
    """The finished 100-epoch runs of the LeNet-5-Caffe queue as table rows (method ``<arm> [snfs-lenet5]``)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        run = json.loads(line)
        if not run.get("completed") and not run.get("diverged_in_epoch"):
            continue
        rows.append({"method": f"{run['arm']} [snfs-lenet5]", "model": run["model"],
                     "density": 1.0 if run.get("dense") else float(run["density"]), "seed": run["seed"],
                     "epochs": run["epochs"], "test_error": run["test_error"], "wall_s": run["train_seconds"],
                     "diverged_in_epoch": run.get("diverged_in_epoch"),
                     "machine": "2-core CPU (x86_64), 1 torch threads", "torch": run.get("torch") or "?"})
    return rows


def fmt_errors(values: list[float], diverged: int = 0) -> str:
    """Mean ± std of the runs that did not collapse, with the count of those that collapsed (and of the
    ``diverged`` runs, which have no final error and count with them) when there are any."""
    kept = [v for v in values if v <= COLLAPSED_ABOVE]
    collapsed = len(values) - len(kept) + diverged
    if not collapsed:
        return fmt_mean(values)
    what = "collapsed or diverged" if diverged else "collapsed"
    return f"{fmt_mean(kept) if kept else '–'} ({collapsed} of {len(values) + diverged} {what})"


def fmt_mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(rows: list[dict]) -> str:
    """The markdown table and notes."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["method"], float(row["density"]), int(row["epochs"]))].append(row)
    keys = []
    for model, method, density in EXPECTED:
        found = sorted(k for k in groups if k[:3] == (model, method, density))
        keys.extend(found or [(model, method, density, None)])
    keys.extend(sorted((k for k in groups if k not in keys), key=lambda k: (k[0], k[1], k[2], k[3])))

    lines = [
        "# MNIST: sparse momentum and baselines against the published numbers",
        "",
        "Test error (%) on the 10,000 MNIST test images after the last epoch; mean ± sample std over seeds.",
        "Recipe of the reference code (TimDettmers/sparse_learning `mnist_cifar/main.py`): batch 100, SGD lr 0.1,",
        "momentum 0.9 nesterov, weight decay 5e-4, lr ×0.1 every 25,000 iterations, training on the first 54,000",
        "training images (`--valid_split 0.1`); SNIP rows use the same recipe (its paper: plain momentum, the",
        "same rate schedule). Published: Dettmers & Zettlemoyer 2019 (sparse momentum rows), Lee et al. 2019",
        "Table 1 (SNIP rows).",
        "",
        "| model | method | density | epochs | seeds | test error % | per seed | published | Δ vs published | wall per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, method, density, epochs in keys:
        published = PUBLISHED.get((model, method, density))
        pub = f"{published:.2f}" if published is not None else "—"
        if epochs is None:
            lines.append(f"| {model} | {method} | {density:g} | — | 0 | not run | — | {pub} | — | — |")
            continue
        group = sorted(groups[(model, method, density, epochs)], key=lambda r: r["seed"])
        ended = [r for r in group if not r.get("diverged_in_epoch")]
        errors = [float(r["test_error"]) for r in ended]
        per_seed = ", ".join(f"s{r['seed']}: diverged in epoch {r['diverged_in_epoch']}" if r.get("diverged_in_epoch")
                             else f"s{r['seed']}: {float(r['test_error']):.2f}" for r in group)
        kept = [e for e in errors if e <= COLLAPSED_ABOVE]
        delta = f"{statistics.mean(kept) - published:+.2f}" if published is not None and kept else "—"
        wall = f"{statistics.mean(float(r['wall_s']) for r in ended) / 60:.1f} min" if ended else "—"
        lines.append(f"| {model} | {method} | {density:g} | {epochs} | {len(group)} | "
                     f"{fmt_errors(errors, len(group) - len(ended))} | {per_seed} | {pub} | {delta} | {wall} |")

    machines = sorted({f"{r.get('machine', 'unknown machine')}, torch {r.get('torch', '?')}" for r in rows})
    lines += ["", "## Notes", ""]
    lines.append("- Machines of the rows: " + ("; ".join(machines) if machines else "none yet") + ".")
    lines.append("- Rows with fewer than 100 epochs are shorter runs than the paper's and not comparable to it.")
    lines.append("- \"not run\": no run of that row was made (CPU time was the limit); it is not a result.")
    lines.append(f"- Collapsed: a run whose final test error is above {COLLAPSED_ABOVE:.0f} % (chance is 90 %); the "
                 "mean ± std and Δ are over the other runs, and the count says how many collapsed. Diverged: "
                 "`sparsecore train` stopped the run in the epoch named because its training loss became "
                 "non-finite; it has no final error and counts with the collapsed runs.")
    lines.append("- Rows marked [snfs-lenet5]: `sparsecore train --recipe snfs-lenet5` (the reference recipe on all "
                 "60,000 training images, no validation split) through the resumable queue "
                 f"`{QUEUE_COMMAND}`; its page `sparse_momentum_lenet5_runs.md` has the early-collapse table "
                 "and the runs still going. The unmarked LeNet-5-Caffe rows are earlier runs of "
                 "`reproduce_mnist.py` (54,000 training images).")
    lines.append("- The LeNet-300-100 sparse-momentum rows were re-run with this release (sparsecore 0.4, seeds 0-2), "
                 "identical run for run to the code before the engine redesign ([engine_redesign_ab.md]"
                 "(engine_redesign_ab.md)). The earlier rows, made with a 0.3 version of the plugin that still ran a "
                 "topology update after the final epoch, are kept in `mnist_runs_0.3.jsonl` (5 %: 1.51 ± 0.11 over "
                 "5 seeds; 2 %: 1.85 ± 0.06; 1 %: 2.30 ± 0.07). The redistribution=none rows are from that version "
                 "too.")
    for key in keys:
        official = [r for r in groups.get(key, []) if r.get("official_error") is not None]
        if official:
            figures = ", ".join(f"s{r['seed']}: {float(r['official_error']):.2f}"
                                for r in sorted(official, key=lambda r: r["seed"]))
            lines.append(f"- {key[1]}, {key[0]}, density {key[2]:g}: snip-public's own figure, 1 − the best test "
                         f"accuracy of the last five checkpoints (one every 1,000 iterations): "
                         f"{fmt_mean([float(r['official_error']) for r in official])} ({figures}); the table shows "
                         "the final-epoch error.")
    lines.append("- \"wall per run\": mean wall-clock time of the row's runs (diverged runs left out), each on one "
                 "torch thread of a shared "
                 "2-core machine with other runs beside it; a cost indication, not a speed measurement.")
    lines.append("")
    lines.append("## Commands")
    lines.append("")
    for method in sorted({k[1] for k in keys}):
        if method in COMMANDS:
            lines.append(f"- {method}: `nice -n 10 {COMMANDS[method]}`")
    lines.append("- table: `python benchmarks/render_mnist_table.py`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the MNIST results table from the JSON-lines runs.")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--lenet5-runs", type=Path, default=LENET5_RUNS,
                        help="finished runs of the LeNet-5-Caffe queue (rows shown as '<arm> [snfs-lenet5]')")
    parser.add_argument("--quiet", action="store_true", help="write the file without printing the table")
    args = parser.parse_args(argv)
    text = render(load_rows(args.runs) + queue_rows(args.lenet5_runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
