"""Trace the first optimizer steps of a ``sparsecore train`` run after its checkpoint, one line per step.

For a run that diverged or collapsed, what happened right after its last checkpoint: the run folder is
copied to a temporary folder (the original is never touched) and resumed there with
:func:`sparsecore.train.resume_training`, as ``sparsecore train --resume`` would (on the CPU with the run's
thread count, the resumed steps are the run's own, bit for bit). For each of the first ``--steps`` steps it
records the training loss, the largest ``|logit|`` of the batch, and per weight tensor how far the step moved
it (largest ``|Δw|``) and its largest ``|w|`` after the step (weights are named by their shape, in the
optimizer's order). The trace stops after
``--steps`` steps or when the run stops (a divergence ends it with the harness's message).

Usage (from the repository root)::

    python benchmarks/trace_steps.py runs/lenet5-cl/sm-s0 --steps 8
    python benchmarks/trace_steps.py runs/lenet5-cl/sm-s0 --steps 8 --out trace.md

The training code is the one imported; to trace with the code a queue ran, put that snapshot first on
``PYTHONPATH`` (``cli_queue.code_snapshot``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


class _TraceDone(BaseException):
    """Stops the resumed run once the trace has its steps (a BaseException, so nothing on the way catches it)."""


def trace(run_dir: Path, steps: int, threads: int = 1) -> tuple[list[dict[str, Any]], str | None]:
    """Resume a copy of ``run_dir`` for up to ``steps`` optimizer steps; the per-step records and how the run
    ended (``None`` when the trace stopped it, else the error message that stopped it).

    Each record has ``step`` (0-based, counted from the checkpoint), ``loss``, ``max_abs_logit`` and
    ``max_abs_step`` and ``max_abs_weight`` (weight shape -> largest ``|Δw|`` of the step, largest ``|w|`` after
    it; tensors with fewer than two dimensions are left out).
    """
    from sparsecore.errors import SparsecoreError
    from sparsecore.train import resume_training

    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt to resume from")
    records: list[dict[str, Any]] = []
    cross_entropy = F.cross_entropy

    def recording_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any):
        loss = cross_entropy(logits, target, *args, **kwargs)
        records.append({"step": len(records), "loss": float(loss.detach()),
                        "max_abs_logit": float(logits.detach().abs().max())})
        return loss

    before: dict[str, torch.Tensor] = {}

    def weights(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        return {"×".join(map(str, p.shape)): p.detach()
                for group in optimizer.param_groups for p in group["params"] if p.dim() >= 2}

    def before_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        before.clear()
        before.update({name: w.clone() for name, w in weights(optimizer).items()})

    def after_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        now = weights(optimizer)
        records[-1]["max_abs_step"] = {name: float((w - before[name]).abs().max()) for name, w in now.items()}
        records[-1]["max_abs_weight"] = {name: float(w.abs().max()) for name, w in now.items()}
        if len(records) >= steps:
            raise _TraceDone

    ended: str | None = None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run_dir.name
        shutil.copytree(run_dir, copy)
        handles = (register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step))
        F.cross_entropy = recording_cross_entropy
        try:
            resume_training(copy, quiet=True, plots=False, threads=threads)
            ended = "the run finished"
        except _TraceDone:
            pass
        except SparsecoreError as exc:
            ended = str(exc).replace(str(copy), str(run_dir))
        finally:
            F.cross_entropy = cross_entropy
            for handle in handles:
                handle.remove()
    return [r for r in records if "max_abs_weight" in r], ended  # a batch the run stopped on has no step


def render(run_dir: Path, records: list[dict[str, Any]], ended: str | None, steps: int) -> str:
    """A Markdown table of the trace of ``steps`` steps (fewer rows when the run stopped first)."""
    shapes = list(records[0]["max_abs_weight"]) if records else []
    lines = [f"Steps after the checkpoint of `{run_dir}` (`python benchmarks/trace_steps.py {run_dir} "
             f"--steps {steps}`):", "",
             "| step | training loss | max \\|logit\\| | "
             + " | ".join(f"{s}: max \\|Δw\\| / max \\|w\\| after" for s in shapes) + " |",
             "|---|---|---|" + "---|" * len(shapes)]

    def number(value: float) -> str:
        return f"{value:.4g}" if math.isfinite(value) else str(value)

    for r in records:
        lines.append(f"| {r['step']} | {number(r['loss'])} | {number(r['max_abs_logit'])} | "
                     + " | ".join(f"{number(r['max_abs_step'][s])} / {number(r['max_abs_weight'][s])}" for s in shapes)
                     + " |")
    if ended:
        lines += ["", f"The run stopped: {ended}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Trace a run folder's first steps after its checkpoint and print (or write) the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a sparsecore train run folder with a checkpoint.pt")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the run's own count resumes it exactly)")
    p.add_argument("--out", type=Path, help="write the table here instead of printing it")
    args = p.parse_args(argv)
    try:
        records, ended = trace(args.run_dir, args.steps, args.threads)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    page = render(args.run_dir, records, ended, args.steps)
    if args.out:
        args.out.write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
