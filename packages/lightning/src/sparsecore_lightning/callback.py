"""The Lightning callback that runs a sparsecore :class:`~sparsecore.Sparsifier` inside ``Trainer.fit``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from sparsecore import CheckpointError, ConfigurationError, Sparsifier

#: Key of the sparsifier's state inside the callback's checkpoint entry.
STATE_KEY = "sparsifier"
#: Key of the last topology update's pruned and grown totals inside the callback's checkpoint entry.
LAST_UPDATE_KEY = "last_update"
#: Sparsifier arguments the callback supplies itself.
_SUPPLIED = ("model", "optimizer")


class SparsityCallback(Callback):
    """Keeps a LightningModule sparse through ``Trainer.fit`` with a sparsecore algorithm.

    Example:
        ```python
        trainer = pl.Trainer(max_epochs=10, callbacks=[SparsityCallback("set", density=0.1)])
        trainer.fit(module, train_loader)
        ```

    What it does in ``fit``:

    * ``on_fit_start`` (the first hook where the optimizer exists) builds the
      :class:`~sparsecore.Sparsifier` on the LightningModule and the trainer's
      single torch optimizer, with ``total_steps`` from
      ``trainer.estimated_stepping_batches`` (unless given). From then on the
      engine keeps the masks applied through the optimizer's step hooks, and
      step-scheduled updates run from there (counted in optimizer steps, so
      ``accumulate_grad_batches`` counts one step per accumulated batch).
      Lightning hands the step a closure (forward, backward, clipping); the
      engine masks the gradients and runs ``before_optimizer_step`` after the
      closure, so it sees each step's gradients as in a plain loop.
    * ``on_train_epoch_end`` calls :meth:`Sparsifier.epoch_end
      <sparsecore.Sparsifier.epoch_end>` (epoch-scheduled updates), before
      ``ModelCheckpoint`` saves, and logs the overall density and the last
      update's pruned and grown counts through ``pl_module.log``. Those
      counts travel in the checkpoint too, so a resumed run logs the last
      update before the resume until it makes one of its own.
    * Checkpoints: the sparsifier's state (masks, step, schedule position,
      random generator, algorithm state) is the callback's ``state_dict``, so
      it travels inside every Lightning checkpoint. ``trainer.fit(...,
      ckpt_path=...)`` hands it back before the optimizer exists; it is
      applied once the sparsifier is built, so a resumed run continues exactly
      as an uninterrupted one would.
    * Under ``ddp`` / ``ddp_spawn`` every rank builds its sparsifier with the
      same seed (broadcast from rank 0) and the engine broadcasts every new
      mask from rank 0, so masks are identical on every rank.
    * At the end of ``fit`` the engine stays attached, so ``validate``, ``test``
      and ``predict`` see the sparse model (also for algorithms whose sparsity
      lives in a replaced forward). A later
      ``fit`` with this callback continues from the current masks and state
      (its ``total_steps``: the steps done so far plus that fit's remaining
      ones). :meth:`remove` detaches the engine for good (weights the
      algorithm masks stay sparse; ``sparsecore.export.squash`` also zeroes
      the inactive weights of algorithms whose sparsity lives in the forward).

    Args:
        algorithm: a registered algorithm name (``sparsecore.available_algorithms()``)
            or an algorithm object.
        density: fraction of weights kept over the sparse layers; ``None``: the
            algorithm's default.
        log_metrics: log ``sparsity/density``, ``sparsity/pruned`` and ``sparsity/grown``
            (and the algorithm's numeric :meth:`~sparsecore.Sparsifier.algorithm_metrics`
            as ``sparsity/<name>``) at each training epoch end.
        **sparsifier_kwargs: any other :class:`~sparsecore.Sparsifier` argument
            (``distribution``, ``seed``, ``total_steps``, ``exclude``, algorithm
            options such as ``prune_rate``, ...).

    Attributes:
        sparsifier: the run's :class:`~sparsecore.Sparsifier` once ``fit`` has
            started (``None`` before; under ``ddp_spawn`` it lives in the worker
            processes only).

    Raises:
        ConfigurationError: ``model`` or ``optimizer`` among the keyword
            arguments (the callback takes them from the trainer); at
            ``fit``: not exactly one optimizer.
        CheckpointError: at ``fit``: the checkpoint's sparsifier state does not
            fit this run (another algorithm, density, layers, ...).
    """

    def __init__(self, algorithm: str | Any = "set", density: float | None = None, *, log_metrics: bool = True,
                 **sparsifier_kwargs: Any) -> None:
        supplied = sorted(set(sparsifier_kwargs) & set(_SUPPLIED))
        if supplied:
            raise ConfigurationError(f"SparsityCallback: {supplied} come from the Trainer (the LightningModule and "
                                     "its configured optimizer); do not pass them")
        self.algorithm = algorithm
        self.density = density
        self.log_metrics = log_metrics
        self.sparsifier_kwargs = dict(sparsifier_kwargs)
        self.sparsifier: Sparsifier | None = None
        self._pending_state: dict[str, Any] | None = None
        # the last update's (pruned, grown) totals from before this sparsifier was built (checkpoint or earlier fit)
        self._earlier_update: tuple[int, int] = (0, 0)
        self._pending_update: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------
    # building the sparsifier
    # ------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the sparsifier on the module and the trainer's optimizer; apply a checkpoint's state if one came."""
        optimizer = self._single_optimizer(trainer)
        total_steps = self._total_steps(trainer)
        state = self._pending_state
        earlier_update = self._pending_update if state is not None else (0, 0)
        if state is None and self.sparsifier is not None:  # a later fit continues this callback's run
            state = self.sparsifier.state_dict()
            earlier_update = self._last_update(self.sparsifier)
            if total_steps is not None:  # the steps done so far, then this fit's remaining ones
                total_steps += self.sparsifier.step - trainer.global_step
        if self.sparsifier is not None:
            self.sparsifier.remove()
        self.sparsifier = None
        kwargs = dict(self.sparsifier_kwargs)
        kwargs.setdefault("total_steps", total_steps)
        if state is None:
            sparsifier = Sparsifier(pl_module, optimizer, self.algorithm, self.density, **kwargs)
        else:  # the weights Lightning restored stay; a refused resume leaves them as they are
            sparsifier = Sparsifier.resume(pl_module, optimizer, state, self.algorithm, self.density, **kwargs)
        self.sparsifier = sparsifier
        self._pending_state = None
        self._pending_update = (0, 0)
        self._earlier_update = earlier_update

    @staticmethod
    def _single_optimizer(trainer: pl.Trainer) -> torch.optim.Optimizer:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ConfigurationError(f"SparsityCallback needs exactly one optimizer from configure_optimizers, "
                                     f"the trainer has {len(optimizers)}")
        optimizer = optimizers[0]
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(f"SparsityCallback needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        return optimizer

    @staticmethod
    def _total_steps(trainer: pl.Trainer) -> int | None:
        """Optimizer steps of the whole fit (``None`` for an unbounded one)."""
        steps = trainer.estimated_stepping_batches
        if isinstance(steps, float) and not math.isfinite(steps):
            return None
        steps = int(steps)
        return steps if steps > 0 else None

    # ------------------------------------------------------------------
    # the training loop
    # ------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Tell the engine the epoch ended (epoch-scheduled updates run here), then log."""
        sparsifier = self._require_sparsifier()
        sparsifier.epoch_end(trainer.current_epoch)
        if self.log_metrics:
            for name, value in self.metrics().items():
                pl_module.log(f"sparsity/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                              reduce_fx="max")

    def metrics(self) -> dict[str, float]:
        """What the callback logs: ``density`` (nonzeros over all sparse layers), the last update's ``pruned`` and
        ``grown`` counts (0 before the first update; after a resume, the last update before it until the run makes
        one), ``run_train_flops_ratio`` (training FLOPs of the sparse layers over the steps so far against dense,
        :meth:`Sparsifier.run_flops <sparsecore.Sparsifier.run_flops>`, once known), and the algorithm's numeric
        metrics.

        Raises:
            ConfigurationError: ``fit`` has not built the sparsifier yet.
        """
        sparsifier = self._require_sparsifier()
        capacity = sum(layer.capacity for layer in sparsifier.layers.values())
        pruned, grown = self._last_update(sparsifier)
        values: dict[str, float] = {"density": sparsifier.nnz / capacity, "pruned": float(pruned),
                                    "grown": float(grown)}
        flops = sparsifier.run_flops()
        if flops is not None and flops.ratio is not None:
            values["run_train_flops_ratio"] = flops.ratio
        for name, value in sparsifier.algorithm_metrics().items():
            if isinstance(value, numbers.Real) and name not in values:
                values[name] = float(value)
        return values

    def remove(self) -> None:
        """Detach the engine from the model and optimizer (:meth:`Sparsifier.remove <sparsecore.Sparsifier.remove>`).

        Weights the algorithm masks stay sparse; an algorithm whose sparsity
        lives in a replaced forward (SWAT, SR-STE) leaves dense weights, which
        ``sparsecore.export.squash(callback.sparsifier)`` zeroes instead. The
        sparsifier stays readable as :attr:`sparsifier` (masks, ``report()``,
        ``state_dict()``).
        """
        if self.sparsifier is not None:
            self.sparsifier.remove()

    def _last_update(self, sparsifier: Sparsifier) -> tuple[int, int]:
        """The (pruned, grown) totals of the run's last topology update, also one made before a resume."""
        last = next((r for r in reversed(sparsifier.history) if r.reason == "update"), None)
        if last is None:  # the history holds this sparsifier's updates only
            return self._earlier_update
        return sum(u.pruned for u in last.layers.values()), sum(u.grown for u in last.layers.values())

    def _require_sparsifier(self) -> Sparsifier:
        if self.sparsifier is None:
            raise ConfigurationError("SparsityCallback: no sparsifier yet; it is built when Trainer.fit starts")
        return self.sparsifier

    # ------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sparsifier's state and the last update's counts, stored in Lightning checkpoints.

        Empty before ``fit`` built the sparsifier (or a checkpoint handed one).
        """
        if self.sparsifier is not None:
            state, (pruned, grown) = self.sparsifier.state_dict(), self._last_update(self.sparsifier)
        elif self._pending_state is not None:
            state, (pruned, grown) = self._pending_state, self._pending_update
        else:
            return {}
        return {STATE_KEY: state, LAST_UPDATE_KEY: {"pruned": pruned, "grown": grown}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's sparsifier state until ``on_fit_start`` has built the sparsifier.

        An entry without the last update's counts (or with ``None``) counts as no update yet.

        Raises:
            CheckpointError: the entry holds no sparsifier state, or its last update's counts are not two
                non-negative integers ``pruned`` and ``grown``.
        """
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get(STATE_KEY), Mapping):
            raise CheckpointError(f"the checkpoint's {self.state_key!r} entry holds no sparsifier state "
                                  f"(expected a mapping with key {STATE_KEY!r})")
        counts = state_dict.get(LAST_UPDATE_KEY) or {"pruned": 0, "grown": 0}
        if not (isinstance(counts, Mapping) and all(
                isinstance(counts.get(key), int) and not isinstance(counts.get(key), bool) and counts[key] >= 0
                for key in ("pruned", "grown"))):
            raise CheckpointError(f"the checkpoint's {self.state_key!r} entry has {LAST_UPDATE_KEY!r} = {counts!r}; "
                                  "expected {'pruned': int >= 0, 'grown': int >= 0}")
        self._pending_state = dict(state_dict[STATE_KEY])
        self._pending_update = (counts["pruned"], counts["grown"])
