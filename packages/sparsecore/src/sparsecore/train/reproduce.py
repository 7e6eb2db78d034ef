"""``sparsecore reproduce``: run paper recipes over several seeds and tabulate test error against the paper."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecore.errors import SparsecoreError
from sparsecore.train.cli import os_error_line
from sparsecore.train.job import RunResult, run_training
from sparsecore.train.recipes import RECIPES, get_recipe, recipe_config
from sparsecore.train.rundir import blocking_file


@dataclass(frozen=True)
class RecipeResult:
    """One recipe run over several seeds.

    Attributes:
        recipe: recipe name.
        runs: one :class:`RunResult` per seed.
        reference: the paper's number, as the recipe states it.
    """

    recipe: str
    runs: tuple[RunResult, ...]
    reference: str

    @property
    def errors(self) -> list[float]:
        """Final test error of every seed, in percent."""
        return [100 * r.test_error for r in self.runs]

    def mean_se(self) -> tuple[float, float]:
        """Mean test error (%) and its standard error (``nan`` for one seed)."""
        errors = self.errors
        se = statistics.stdev(errors) / math.sqrt(len(errors)) if len(errors) > 1 else math.nan
        return statistics.fmean(errors), se


def reproduce(recipes: Sequence[str], seeds: Sequence[int], dense: bool = False,
              **overrides: Any) -> list[RecipeResult]:
    """Run each recipe once per seed through :func:`~sparsecore.train.run_training`.

    Args:
        recipes: recipe names.
        seeds: seeds to run.
        dense: also run each recipe's dense baseline (reported as ``<recipe> (dense)``).
        **overrides: config fields applied to every run (e.g. ``epochs=10``, ``quiet=True``).

    Returns:
        One :class:`RecipeResult` per recipe (and per dense baseline), in order.
    """
    if not seeds:
        raise SparsecoreError("reproduce needs at least one seed")
    results = []
    for name in recipes:
        recipe = get_recipe(name)
        variants = [(name, False)] + ([(f"{name} (dense)", True)] if dense else [])
        for label, is_dense in variants:
            runs = tuple(run_training(recipe_config(name, seed=s, dense=is_dense, **overrides)) for s in seeds)
            results.append(RecipeResult(label, runs, "" if is_dense else recipe.reference))
    return results


def results_table(results: Sequence[RecipeResult]) -> str:
    """Markdown table: recipe, algorithm, model, density, seeds, epochs, test error, paper, time per run."""
    rows = ["| recipe | algorithm | model | density | seeds | epochs | test error (%) | paper | s / run |",
            "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        c = res.runs[0].config
        mean, se = res.mean_se()
        err = f"{mean:.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}")
        seconds = statistics.fmean(r.wall_seconds for r in res.runs)
        rows.append(f"| {res.recipe} | {'dense' if c.dense else c.algorithm} | {c.model} | {res.runs[0].density:.4f} | "
                    f"{len(res.runs)} | {res.runs[0].epochs_done} | {err} | {res.reference or '-'} | {seconds:.0f} |")
    return "\n".join(rows)


def add_reproduce_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to the ``sparsecore`` parser."""
    p = subparsers.add_parser("reproduce", help="run paper recipes over seeds and tabulate test error",
                              description="Run named recipes (" + ", ".join(RECIPES) + ") once per seed and print "
                                          "a table of test error (mean ± standard error) next to the paper's.")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe names")
    p.add_argument("--seeds", type=int, nargs="+", default=[17], help="seeds (default 17)")
    p.add_argument("--epochs", type=int, help="override the recipes' epochs (quick checks)")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on the first N samples only")
    p.add_argument("--limit-test", type=int, metavar="N", help="evaluate on the first N test samples only")
    p.add_argument("--dense", action="store_true", help="also run each recipe's dense baseline")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="parent of the run folders (default runs/)")
    p.add_argument("--output", metavar="FILE", help="write the table here (default <runs-dir>/reproduce-<time>.md)")
    p.add_argument("--verbose", action="store_true", help="show each run's progress")
    p.set_defaults(func=reproduce_command)
    return p


def reproduce_command(args: argparse.Namespace) -> int:
    """Run ``sparsecore reproduce``; errors print one line and return 2."""
    overrides = {k: getattr(args, k) for k in ("epochs", "limit_train", "limit_test", "threads")
                 if getattr(args, k) is not None}
    try:
        results = reproduce(args.recipes, args.seeds, dense=args.dense, device=args.device, runs_dir=args.runs_dir,
                            quiet=not args.verbose, **overrides)
    except (SparsecoreError, ValueError, RuntimeError) as exc:
        print(f"sparsecore reproduce: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sparsecore reproduce: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    table = results_table(results)
    print(table)
    default_output = Path(args.runs_dir) / f"reproduce-{time.strftime('%Y%m%d-%H%M%S')}.md"
    output = Path(args.output) if args.output else default_output
    runs = "\n".join(f"- {res.recipe}: " + ", ".join(str(r.run_dir) for r in res.runs) for res in results)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"# sparsecore reproduce\n\nseeds: {args.seeds}\n\n{table}\n\nRun folders:\n\n{runs}\n")
    except OSError as exc:
        blocker = blocking_file(output.parent)
        reason = f"{blocker} is a file, not a directory" if blocker is not None else os_error_line(exc)
        print(f"sparsecore reproduce: error: cannot write the table to {output}: {reason} (it is printed above)",
              file=sys.stderr)
        return 2
    print(f"table written to {output}")
    return 0
