"""The run folder (config, metrics, summary) and the job's console output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparsecore.__about__ import __version__
from sparsecore.train.config import is_plain_folder_name
from sparsecore.train.errors import RunFolderError, os_reason

if TYPE_CHECKING:
    from sparsecore.train.config import TrainConfig
    from sparsecore.train.job import RunResult

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.md"


def blocking_file(path: Path) -> Path | None:
    """The file (not directory) at ``path`` or at one of its ancestors, if any: what blocks creating ``path``."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def check_runs_dir(runs_dir: str | Path) -> None:
    """Fail early when ``runs_dir`` cannot be a directory because it, or a folder above it, is a file.

    Raises:
        RunFolderError: names the file in the way.
    """
    root = Path(runs_dir)
    blocker = blocking_file(root)
    if blocker == root:
        raise RunFolderError(f"--runs-dir {root} is a file, not a directory")
    if blocker is not None:
        raise RunFolderError(f"--runs-dir {root} cannot be created: {blocker} is a file, not a directory")


def create_run_dir(runs_dir: str | Path, run_name: str | None, algorithm: str, model: str) -> Path:
    """Create ``<runs_dir>/<run_name>`` (default ``<timestamp>-<algorithm>-<model>``), unique with a ``-N`` suffix.

    Raises:
        RunFolderError: ``runs_dir`` is (or is under) a file, or the folder cannot be created (names the reason,
            e.g. ``Permission denied``).
    """
    base = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{algorithm}-{model}"
    if not is_plain_folder_name(base):
        raise RunFolderError(f"run folder name {base!r} is not a single folder name inside --runs-dir")
    root = Path(runs_dir)
    check_runs_dir(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create --runs-dir {root}: {os_reason(exc)}") from exc
    path, n = root / base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{base}-{n}"
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {path} in --runs-dir {root}: "
                                 f"{os_reason(exc)}") from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader (or a crash) sees the old file or the new one.

    Raises:
        RunFolderError: the file cannot be written (names it and the reason); no temporary file is left.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunFolderError(f"cannot write {path}: {os_reason(exc)}") from exc


def write_config(run_dir: Path, config: TrainConfig, *, algorithm: str, dataset: Any, model: torch.nn.Module,
                 notices: list[str], device: torch.device) -> None:
    """Write ``config.json``: the configuration plus what it resolved to on this machine.

    Its ``resolved`` part records what ran: the algorithm, the distribution and
    per-layer target densities the engine chose (``None`` for a dense run), and
    every active plugin (the algorithm first) with the distribution that
    provides it and its version (:func:`engine_record`).
    """
    data = {"config": config.to_dict(),
            "resolved": {"algorithm": "dense" if config.dense else algorithm, "dataset_source": dataset.source,
                         "train_samples": len(dataset.train), "test_samples": len(dataset.test),
                         "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
                         "threads": torch.get_num_threads(), **engine_record(model)},
            "environment": {"sparsecore": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "command": sys.argv},
            "notices": notices}
    write_text_atomic(run_dir / CONFIG_NAME, json.dumps(data, indent=2) + "\n")


def engine_record(model: torch.nn.Module) -> dict[str, Any]:
    """What the sparsifier attached to ``model`` runs with, for ``config.json``.

    Returns:
        ``distribution`` (its name, or ``"custom"`` for a mapping or callable), ``density``,
        ``layers`` (layer name -> ``{"target_density", "shape"}``) and ``plugins`` (one
        ``{"name", "kind", "distribution", "version"}`` per active plugin, the algorithm first; the
        distribution and version are ``None`` when no installed distribution holds the plugin's code);
        all ``None`` (``plugins`` empty) when no sparsifier is attached (a dense run).
    """
    from sparsecore.plugins import distribution_of
    from sparsecore.sparsifier import attached_sparsifier

    sparsifier = attached_sparsifier(model)
    if sparsifier is None:
        return {"distribution": None, "density": None, "layers": None, "plugins": []}
    distribution = sparsifier.distribution if isinstance(sparsifier.distribution, str) else "custom"
    layers = {name: {"target_density": layer.target_density, "shape": list(layer.shape)}
              for name, layer in sparsifier.layers.items()}
    active = [("algorithm", sparsifier.algorithm_name, sparsifier.algorithm)]
    active += [("plugin", sparsifier.manager.names.get(id(plugin), type(plugin).__name__), plugin)
               for plugin in sparsifier.plugins]
    plugins = []
    for kind, name, plugin in active:
        provider = distribution_of(plugin, name)
        plugins.append({"name": name, "kind": kind, "distribution": provider[0] if provider else None,
                        "version": provider[1] if provider else None})
    return {"distribution": distribution, "density": sparsifier.density, "layers": layers, "plugins": plugins}


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """(Re)write ``metrics.jsonl`` with ``records``."""
    write_text_atomic(run_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl``.

    Raises:
        RunFolderError: the line cannot be written; the file is cut back to its previous lines.
    """
    path = run_dir / METRICS_NAME
    data = memoryview((json.dumps(record) + "\n").encode())
    try:
        with open(path, "ab", buffering=0) as f:
            size = f.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[f.write(data):]
            except OSError:
                f.truncate(size)
                raise
    except OSError as exc:
        raise RunFolderError(f"cannot append to {path}: {os_reason(exc)}") from exc


def read_metrics(run_dir: Path | str, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (empty when absent).

    An unreadable last line (the process died writing it) is dropped, with a
    warning that names the file and line through ``warn`` (default: :func:`warnings.warn`).

    Raises:
        RunFolderError: the file cannot be read, or a line other than the last is not an epoch record
            (the message names the file and the line).
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {os_reason(exc)}") from exc
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for number, line in lines:
        try:
            records.append(_metrics_record(line))
        except _BadLine as exc:
            if number != lines[-1][0]:
                raise RunFolderError(f"{path} line {number} {exc}; repair or delete that line") from None
            what = "incomplete" if not text.endswith("\n") else "unreadable"
            (warn or _warn)(f"warning: dropped the {what} last line {number} of {path} "
                            f"(the process writing it was stopped)")
    return records


class _BadLine(Exception):
    """A ``metrics.jsonl`` line that is not an epoch record; the message says why."""


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _metrics_record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"is not a JSON record: {exc.msg} at column {exc.colno}") from None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise _BadLine("is not an epoch record (a JSON object with an integer 'epoch')")
    return record


def run_title(config: TrainConfig, algorithm: str, dataset: str) -> str:
    """A one-line title: algorithm, model, dataset, density."""
    what = "dense" if config.dense else f"{algorithm} at {config.density:.0%} density"
    return f"{config.model} on {dataset}, {what}"


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch (bits per byte instead of accuracy for a language model)."""
    phase = f"  phase {record['phase']}" if "phase" in record else ""
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} {_quality(record, 'train')} | "
            f"test loss {record['test_loss']:.4f} {_quality(record, 'test')} | density {record['density']:.4f} | "
            f"lr {record['lr']:.3g} | {record['epoch_seconds']:.1f} s{phase}")


def _quality(record: dict[str, Any], split: str) -> str:
    """``acc 97.10%``, or ``bpb 2.314`` for a record with bits per byte."""
    bpb = record.get(f"{split}_bits_per_byte")
    return f"acc {record[f'{split}_acc']:.2%}" if bpb is None else f"bpb {bpb:.3f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def layer_table(layers: list[dict[str, Any]], density: float, flops_ratio: float | None) -> str:
    """Markdown table of the per-layer rows and the total."""
    out = ["| layer | shape | density | nonzeros / weights | train FLOPs vs dense |", "|---|---|---|---|---|"]
    for r in layers:
        out.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['density']:.4f} | "
                   f"{r['nnz']:,} / {r['numel']:,} | {_fmt_ratio(r['train_flops_ratio'])} |")
    nnz, numel = sum(r["nnz"] for r in layers), sum(r["numel"] for r in layers)
    out.append(f"| **total** | | {density:.4f} | {nnz:,} / {numel:,} | {_fmt_ratio(flops_ratio)} |")
    return "\n".join(out)


def result_lines(result: RunResult, algorithm: str) -> list[str]:
    """The headline numbers of a run, one per line."""
    c = result.config
    status = "" if result.completed else f" (stopped; resume with `sparsecore train --resume {result.run_dir}`)"
    flops = "n/a" if result.train_flops_ratio is None else f"{result.train_flops_ratio:.3f}x dense"
    run_flops = "n/a" if result.run_train_flops_ratio is None else f"{result.run_train_flops_ratio:.3f}x dense"
    forward = "n/a" if result.forward_flops_ratio is None else f"{result.forward_flops_ratio:.3f}x dense"
    quality = (f"test accuracy: {result.test_accuracy:.2%}   test error: {result.test_error:.2%}   "
               if result.test_bits_per_byte is None else f"test bits per byte: {result.test_bits_per_byte:.4f}   ")
    return [
        f"algorithm: {'dense' if c.dense else algorithm}   model: {c.model}   dataset: {c.dataset}",
        f"epochs: {result.epochs_done}/{c.epochs}{status}",
        f"{quality}test loss: {result.test_loss:.4f}",
        f"density: {result.density:.4f}   inference FLOPs (sparse layers): {forward}",
        f"training FLOPs (sparse layers): {flops} per step now, {run_flops} over the run",
        f"wall time (this call): {result.wall_seconds:.1f} s   "
        f"training time (all epochs): {result.train_seconds:.1f} s",
    ]


def write_summary(run_dir: Path, result: RunResult, algorithm: str) -> None:
    """Write ``summary.md``: headline numbers, layer table, per-epoch table, plots."""
    c = result.config
    lines = [f"# {run_title(c, algorithm, c.dataset)}", ""]
    lines += [f"- {line}" for line in result_lines(result, algorithm)]
    if c.recipe:
        lines.append(f"- recipe: `{c.recipe}`")
    for notice in result.notices:
        lines.append(f"- {notice}")
    bpb = result.test_bits_per_byte is not None
    quality = "bits/byte" if bpb else "acc"
    lines += ["", "## Layers", "", layer_table(result.layers, result.density, result.train_flops_ratio), "",
              "## Epochs", "",
              f"| epoch{' (phase at its end)' if any('phase' in m for m in result.metrics) else ''} | train loss | "
              f"train {quality} | test loss | test {quality} | density | lr | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for m in result.metrics:
        phase = f" ({m['phase']})" if "phase" in m else ""
        train, test = ((f"{m['train_bits_per_byte']:.4f}", f"{m['test_bits_per_byte']:.4f}") if bpb
                       else (f"{m['train_acc']:.2%}", f"{m['test_acc']:.2%}"))
        lines.append(f"| {m['epoch']}{phase} | {m['train_loss']:.4f} | {train} | {m['test_loss']:.4f} | "
                     f"{test} | {m['density']:.4f} | {m['lr']:.3g} | {m['epoch_seconds']:.1f} |")
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    lines += ["", "## Configuration", "", "```json", json.dumps(c.to_dict(), indent=2), "```", ""]
    write_text_atomic(run_dir / SUMMARY_NAME, "\n".join(lines))


def discard_summary(run_dir: Path) -> None:
    """Remove ``summary.md``: a run folder has one only while it describes the run's checkpoint.

    Raises:
        RunFolderError: it cannot be removed.
    """
    path = run_dir / SUMMARY_NAME
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot remove the outdated {path}: {os_reason(exc)}") from exc


class Printer:
    """Console output of the job; silent with ``quiet`` (notices go to stderr unless quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def line(self, text: str) -> None:
        """A progress line (stdout)."""
        if not self.quiet:
            print(text, flush=True)

    def notice(self, text: str) -> None:
        """A one-line notice (stderr)."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def summary(self, result: RunResult, algorithm: str) -> None:
        """The final summary: headline numbers and the layer table."""
        if self.quiet:
            return
        print("\n" + "\n".join(result_lines(result, algorithm)))
        print(layer_table(result.layers, result.density, result.train_flops_ratio))
        plots = any(result.run_dir.glob("*.png"))  # none when matplotlib is missing, even with plots on
        print(f"run folder: {result.run_dir}  (summary.md, metrics.jsonl, checkpoint.pt"
              f"{', plots' if plots else ''})", flush=True)
