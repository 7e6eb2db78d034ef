"""The TensorBoard observer: density, topology updates, weight histograms and the harness's metrics as event files.

An observer plugin answers broadcast hooks only and never changes masks,
weights or the optimizer, so it runs beside any algorithm. What it writes
(steps are the run's optimizer steps, ``sparsifier.step``):

* at every epoch end (``on_epoch_end``): ``density/overall`` and
  ``density_by_layer/<layer>``;
* after every topology update or recorded ``set_masks``
  (``on_topology_update``): ``topology/pruned``, ``topology/grown``,
  ``topology/density`` (overall, after the update),
  ``pruned_by_layer/<layer>``, ``grown_by_layer/<layer>`` and the histogram
  ``weights_abs/<layer>`` of ``|w|`` over the layer's active weights;
* per epoch of ``sparsecore train`` (``on_epoch_metrics``): ``loss/train``,
  ``loss/test``, ``accuracy/train``, ``accuracy/test``, ``lr``,
  ``flops/run_vs_dense`` (training FLOPs of the run so far over dense), and
  ``metrics/<key>`` for every other number of the epoch's record (bits per
  byte, the algorithm's own metrics) except bookkeeping and timings.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

import sparsecore
from sparsecore import distributed

#: Where a run not driven by ``sparsecore train`` writes without ``log_dir`` (relative to the working directory).
DEFAULT_LOG_DIR = "runs/tensorboard"

#: The folder inside the run folder that ``sparsecore train`` runs write to when no ``log_dir`` is given.
RUN_FOLDER_SUBDIR = "tensorboard"

#: Keys of the harness's epoch record logged under fixed tags.
HARNESS_TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
                "test_acc": "accuracy/test", "lr": "lr", "run_train_flops_ratio": "flops/run_vs_dense"}

#: Keys of the epoch record that are not logged: bookkeeping, timings, and densities (logged at the epoch end).
UNLOGGED_KEYS = frozenset({"epoch", "step", "density", "layer_densities", "epoch_seconds", "eval_seconds",
                           "update_seconds"})


class TensorBoardLogger:
    """Writes a run's density, topology updates, weight histograms and epoch metrics for TensorBoard.

    Events go to ``log_dir``; when it is not given, to ``<run folder>/tensorboard``
    in runs of ``sparsecore train`` and to :data:`DEFAULT_LOG_DIR` otherwise.
    The event file is opened at the first event and flushed after every hook,
    so TensorBoard shows a running job as it trains. Under DDP only rank 0
    writes (every rank computes the values, some of which are collectives).
    A resumed run (``sparsifier.load_state_dict``) discards the events that
    the interrupted run wrote after its checkpoint, so the curves show each
    step once.

    Args:
        log_dir: the directory of the event files, or ``None`` for the default above.
        histograms: write the ``|w|`` histograms of the active weights at every topology
            update (not for FSDP2-sharded weights, whose values sit on other ranks).
        per_layer: write the per-layer scalars (``density_by_layer``, ``pruned_by_layer``,
            ``grown_by_layer``) besides the totals.

    Attributes:
        log_dir: the directory written to (``None`` until it is known).
        writer: the open ``SummaryWriter``, or ``None`` before the first event and after :meth:`close`.

    Raises:
        sparsecore.ConfigurationError: an option of the wrong type, naming the plugin and the option.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, histograms: bool = True,
                 per_layer: bool = True) -> None:
        if log_dir is not None and (not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir)):
            raise sparsecore.ConfigurationError(f"plugin {self.name!r}: log_dir must be a directory name or None, "
                                                f"got {log_dir!r}")
        for option, value in (("histograms", histograms), ("per_layer", per_layer)):
            if not isinstance(value, bool):
                raise sparsecore.ConfigurationError(f"plugin {self.name!r}: {option} must be true or false, "
                                                    f"got {value!r}")
        self.log_dir: Path | None = None if log_dir is None else Path(log_dir)
        self.histograms = histograms
        self.per_layer = per_layer
        self.writer: SummaryWriter | None = None
        self._chosen_log_dir = log_dir is not None
        self._sparsifier: Any = None
        self._purge_step: int | None = None

    # ------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------
    @sparsecore.hookimpl
    def on_setup(self, sparsifier) -> None:
        """Keep the engine, so that :meth:`state_dict` can record the step of a checkpoint."""
        self._sparsifier = sparsifier

    @sparsecore.hookimpl
    def on_run_start(self, run_dir: Path) -> None:
        """``sparsecore train`` opened its run folder: write to ``<run folder>/tensorboard`` unless told otherwise."""
        if not self._chosen_log_dir:
            self._reopen_at(Path(run_dir) / RUN_FOLDER_SUBDIR)

    @sparsecore.hookimpl
    def on_epoch_end(self, sparsifier) -> None:
        """Overall and per-layer density at the end of the epoch (before the epoch's topology update)."""
        layers = sparsifier.layers
        nnz = {name: layer.nnz for name, layer in layers.items()}
        scalars = {"density/overall": sum(nnz.values()) / sum(layer.capacity for layer in layers.values())}
        if self.per_layer:
            scalars.update({f"density_by_layer/{name}": nnz[name] / layer.capacity for name, layer in layers.items()})
        self._write(scalars, sparsifier.step)

    @sparsecore.hookimpl
    def on_topology_update(self, sparsifier, report: sparsecore.TopologyReport) -> None:
        """Pruned and grown counts of the update, the density after it, and the ``|w|`` histograms."""
        updates = report.layers
        capacity = sum(layer.capacity for layer in sparsifier.layers.values())
        scalars: dict[str, float] = {"topology/pruned": sum(u.pruned for u in updates.values()),
                                     "topology/grown": sum(u.grown for u in updates.values()),
                                     "topology/density": report.nnz / capacity}
        if self.per_layer:
            for name, update in updates.items():
                scalars[f"pruned_by_layer/{name}"] = update.pruned
                scalars[f"grown_by_layer/{name}"] = update.grown
        histograms = {}
        if self.histograms:
            with torch.no_grad():
                for name, layer in sparsifier.layers.items():
                    if distributed.is_dtensor(layer.weight) or not bool(layer.mask.any()):
                        continue
                    histograms[f"weights_abs/{name}"] = layer.weight.detach()[layer.mask].abs().float().cpu()
        self._write(scalars, report.step, histograms)

    @sparsecore.hookimpl
    def on_epoch_metrics(self, sparsifier, metrics: Mapping[str, Any]) -> None:
        """The harness's loss, accuracy and learning rate of the epoch, and its other numeric metrics."""
        scalars = {}
        for key, value in metrics.items():
            if key in UNLOGGED_KEYS or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            scalars[HARNESS_TAGS.get(key, f"metrics/{key}")] = float(value)
        self._write(scalars, sparsifier.step)

    # ------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer step of the checkpoint (the engine stores it in the sparsifier's state)."""
        return {"step": None if self._sparsifier is None else int(self._sparsifier.step)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: events after the checkpoint's step, written by the interrupted run, are discarded."""
        if state.get("step") is None:
            return
        self._purge_step = int(state["step"]) + 1
        self.close()  # the next event reopens the writer, which marks the purge

    # ------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the event file; a later event opens a new one in the same directory."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _reopen_at(self, log_dir: Path) -> None:
        if self.writer is not None and self.log_dir != log_dir:
            self.close()
        self.log_dir = log_dir

    def _write(self, scalars: Mapping[str, float], step: int,
               histograms: Mapping[str, torch.Tensor] | None = None) -> None:
        if distributed.is_distributed() and torch.distributed.get_rank() != 0:
            return
        writer = self._open()
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        for tag, values in (histograms or {}).items():
            writer.add_histogram(tag, values, step)
        writer.flush()

    def _open(self) -> SummaryWriter:
        if self.writer is None:
            if self.log_dir is None:
                self.log_dir = Path(DEFAULT_LOG_DIR)
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
            self._purge_step = None
        return self.writer
