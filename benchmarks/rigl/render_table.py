"""Render ``benchmarks/results/rigl_mnist.md``: the RigL rows beside the other LeNet-300-100 rows.

RigL rows come from ``benchmarks/results/rigl_mnist.jsonl`` (written by
``benchmarks/rigl/reproduce_mnist.py``); the rows of the other methods
(sparse momentum, SNIP, static, dense) from ``benchmarks/results/mnist_runs.jsonl``,
the source of ``mnist_table.md``. Both files hold one finished run per line,
all trained with the same recipe. Rows are mean ± sample std over seeds.

Usage::

    python benchmarks/rigl/render_table.py [--quiet]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RIGL_RUNS = ROOT / "benchmarks" / "results" / "rigl_mnist.jsonl"
OTHER_RUNS = ROOT / "benchmarks" / "results" / "mnist_runs.jsonl"
OUT = ROOT / "benchmarks" / "results" / "rigl_mnist.md"
MODEL = "lenet-300-100"
EPOCHS = 100

_spec = importlib.util.spec_from_file_location("render_mnist_table", ROOT / "benchmarks" / "render_mnist_table.py")
shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shared)

#: How the RigL runs of this page were made (the engine in the working tree was changing meanwhile).
CODE_NOTE = ("commit b62cfbd of the repository, exported with `git archive` and run with its `packages/*/src` "
             "first on `PYTHONPATH`; RigL's algorithm code is unchanged since, apart from formatting and types.")

#: Order of the methods in the table.
ORDER = ["rigl", "rigl (uniform)", "set (rigl schedule)", "sparse-momentum", "sparse-momentum (redistribution=none)",
         "snip", "static", "dense"]

COMMANDS = {
    "rigl": "nice -n 10 python benchmarks/rigl/reproduce_mnist.py --densities D --seeds S",
    "rigl (uniform)": "nice -n 10 python benchmarks/rigl/reproduce_mnist.py --methods uniform --densities D --seeds S",
    "set (rigl schedule)": "nice -n 10 python benchmarks/rigl/reproduce_mnist.py --methods set --densities D "
                           "--seeds S",
}


def groups(rows: list[dict]) -> dict[tuple[float, str], list[dict]]:
    """Rows of LeNet-300-100 at 100 epochs by (density, method)."""
    out: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["model"] == MODEL and int(row["epochs"]) == EPOCHS:
            out[(float(row["density"]), row["method"])].append(row)
    return out


def render(rigl_rows: list[dict], other_rows: list[dict]) -> str:
    """The markdown page."""
    mine, others = groups(rigl_rows), groups(other_rows)
    densities = sorted({d for d, _ in mine} | {0.05, 0.02, 0.01}, reverse=True)
    lines = [
        "# RigL on MNIST (LeNet-300-100)",
        "",
        "Test error (%) on the 10,000 MNIST test images after the last of 100 epochs; mean ± sample std over",
        "seeds. Every row uses the recipe of the sparse momentum MNIST rows (TimDettmers/sparse_learning",
        "`mnist_cifar/main.py`): batch 100, SGD lr 0.1, momentum 0.9 nesterov, weight decay 5e-4, lr ×0.1 every",
        "25,000 iterations, the first 54,000 training images (540 steps per epoch, 54,000 in all).",
        "",
        "RigL: its defaults (drop fraction 0.3, cosine decay, an update every 100 steps until 75 % of training,",
        "grown weights at 0); `rigl` uses ERK densities (784-300: 3.8 %, 300-100: 11.1 %, 100-10: 92 % at 5 %",
        "overall), `rigl (uniform)` the same density in every layer, as the sparse momentum rows do.",
        "`set (rigl schedule)` is RigL's SET baseline: random growth, same ERK densities and schedule.",
        "The RigL paper reports no MNIST numbers; rows of the other methods are the runs of",
        "[mnist_table.md](mnist_table.md), with their published numbers there.",
        "",
        "| density | method | seeds | test error % | per seed | final density | wall per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for density in densities:
        for method in ORDER:
            found = mine.get((density, method)) or others.get((density, method))
            if not found:
                if method == "rigl":  # the row this page is for is always listed
                    lines.append(f"| {density:g} | {method} | 0 | not run | — | — | — |")
                continue
            found = sorted(found, key=lambda r: r["seed"])
            errors = [float(r["test_error"]) for r in found]
            per_seed = ", ".join(f"s{r['seed']}: {float(r['test_error']):.2f}" for r in found)
            final = [r["final_density"] for r in found if "final_density" in r]
            final_text = f"{statistics.mean(final):.4f}" if final else "—"
            wall = statistics.mean(float(r["wall_s"]) for r in found)
            name = f"**{method}**" if (density, method) in mine else method
            lines.append(f"| {density:g} | {name} | {len(found)} | {shared.fmt_mean(errors)} | {per_seed} | "
                         f"{final_text} | {wall / 60:.1f} min |")
    dense = sorted(others.get((1.0, "dense"), []), key=lambda r: r["seed"])
    if dense:
        errors = [float(r["test_error"]) for r in dense]
        per_seed = ", ".join(f"s{r['seed']}: {float(r['test_error']):.2f}" for r in dense)
        wall = statistics.mean(float(r["wall_s"]) for r in dense)
        lines.append(f"| 1 | dense | {len(dense)} | {shared.fmt_mean(errors)} | {per_seed} | 1 | {wall / 60:.1f} min |")
    machines = sorted({f"{r.get('machine', 'unknown machine')}, torch {r.get('torch', '?')}" for r in rigl_rows})
    lines += [
        "",
        "Bold rows: runs of this page (`rigl_mnist.jsonl`); the others come from `mnist_runs.jsonl`.",
        "",
        "## Notes",
        "",
        "- Machine of the RigL runs: " + ("; ".join(machines) if machines else "none yet") + ".",
        "- \"not run\": no run of that row was made (CPU time was the limit); it is not a result.",
        "- \"final density\": active weights over all sparse layers after training (RigL keeps every layer's count).",
        "- \"wall per run\": mean wall-clock time of a run on one torch thread of a shared 2-core machine with other",
        "  runs beside it; a cost indication, not a speed measurement. The load varied between rows (the RigL",
        "  runs ran three at a time beside other jobs, load average 10-15), so wall times do not compare across rows.",
        "- Code of the RigL runs: " + CODE_NOTE,
        "",
        "## Commands",
        "",
    ]
    for method in ORDER:
        if method in COMMANDS and any(m == method for _, m in mine):
            lines.append(f"- {method}: `{COMMANDS[method]}`")
    lines.append("- other rows: see [mnist_table.md](mnist_table.md)")
    lines.append("- this page: `python benchmarks/rigl/render_table.py`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="do not print the page")
    args = parser.parse_args(argv)
    text = render(shared.load_rows(RIGL_RUNS), shared.load_rows(OTHER_RUNS))
    OUT.write_text(text)
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
