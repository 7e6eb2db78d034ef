"""The ``rigl`` algorithm: RigL (Evci et al. 2020) through sparsecore's hooks.

The engine's :class:`~sparsecore.UpdateSchedule` runs the updates: after every
``update_every``-th optimizer step up to ``update_end * total_steps`` (never
at the final step), each with the drop fraction
``prune_rate * (1 + cos(pi * t / T_end)) / 2``. One update maps onto the
engine's cycle like this:

* ``before_optimizer_step``: on a step that ends with an update, keep
  ``|grad|`` of every sparse weight: the dense gradient of that step (the
  engine masks gradients right after this hook);
* ``plan_update`` and ``redistribute``: the engine's defaults, ``floor(rate *
  nnz)`` removed per layer (whole blocks) and as many regrown in the same layer;
* ``select_prune``: the engine's default, the smallest ``|w|`` among active weights;
* ``select_grow``: the inactive weights (after pruning, so a weight just
  dropped may come back with its value) of largest ``|dense gradient|``;
* the masking policy zeroes inactive weights, their gradients and optimizer
  state; grown weights and their optimizer state start at 0.

Differences from the reference code are listed in the package README.
"""

from __future__ import annotations

import numbers
import warnings
from types import MappingProxyType
from typing import Any

import torch

from sparsecore import (
    Algorithm,
    ConfigurationError,
    MaskingPolicy,
    SparsecoreError,
    UpdateSchedule,
    hookimpl,
    selection,
)


class RigLAlgorithm(Algorithm):
    """RigL (Evci et al. 2020): drop the smallest weights, grow where the dense gradient is largest.

    Every ``update_every`` optimizer steps until ``update_end * total_steps``
    (and never at the final step), each sparse layer drops ``floor(f(t) *
    nnz)`` of its active weights of smallest ``|w|`` and activates as many
    inactive weights with the largest ``|dense gradient|`` of that step's
    batch, where ``f(t) = prune_rate * (1 + cos(pi * t / T_end)) / 2`` and
    ``T_end = update_end * total_steps``. Every layer keeps its number of
    active weights. Newly activated weights and their optimizer state start
    at 0; a weight dropped and grown again in the same update keeps its value
    and state. Inactive weights, their gradients and their optimizer state
    stay 0 between updates. Ties (equal magnitudes or gradients) are broken
    by position.

    By default the densities follow ERK with every layer sparse (the paper's
    best setting). The paper's uniform runs keep the first layer dense, and so
    does ``distribution="uniform"`` here (``distribution_defaults``; pass
    ``dense_first_layer=False`` to make it sparse).

    Example:
        ```python
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="rigl", density=0.1,
                                           total_steps=len(loader) * epochs)
        ```

    Args:
        prune_rate: the drop fraction at step 0 (the paper's alpha), in (0, 1].
        decay: ``"cosine"`` (the paper's), ``"linear"`` or ``"constant"`` (the
            reference code's flag default) decay of the drop fraction to 0
            over ``update_end * total_steps`` steps.
        update_every: optimizer steps between updates (the paper's delta T), a
            positive int.
        update_end: fraction of ``total_steps`` in (0, 1] after which the
            masks stay fixed (the paper's T_end, 0.75).

    Raises:
        ConfigurationError: an option of the wrong type or out of range,
            naming ``rigl`` and the option; at set-up, a sparsifier without
            ``total_steps``.
    """

    name = "rigl"
    masking_policy = MaskingPolicy(mask_weights=True, mask_gradients=True, mask_optimizer_state=True,
                                   reset_grown_state=True)
    engine_defaults = MappingProxyType({"distribution": "erk"})
    #: The paper's uniform runs keep the first layer dense; its ERK runs make every layer sparse.
    distribution_defaults = MappingProxyType({"uniform": MappingProxyType({"dense_first_layer": True})})
    patterns = ("unstructured", "block", "n:m")

    def __init__(self, prune_rate: float = 0.3, decay: str = "cosine", update_every: int = 100,
                 update_end: float = 0.75) -> None:
        if isinstance(update_every, bool) or not isinstance(update_every, numbers.Integral) or update_every <= 0:
            raise ConfigurationError(f"rigl: update_every must be a positive int number of optimizer steps (RigL "
                                     f"grows by the dense gradient of the update step), got {update_every!r}")
        self.schedule: UpdateSchedule = UpdateSchedule(prune_rate, decay, 0.0, int(update_every), update_end,
                                                       owner=self.name)
        self.prune_rate: float = self.schedule.prune_rate
        self.decay: str = self.schedule.decay
        self.update_every: int = int(update_every)
        self.update_end: float = self.schedule.update_end
        #: ``|dense gradient|`` per layer name, kept for the update that follows optimizer step :attr:`_scores_step`.
        self._grow_scores: dict[str, torch.Tensor] = {}
        self._scores_step: int | None = None
        self._warned_masked: set[str] = set()

    # ------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------
    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Check that the run has ``total_steps`` and forget any gradient kept by an earlier run.

        Raises:
            ConfigurationError: the sparsifier has no ``total_steps``.
        """
        if sparsifier.total_steps is None:
            raise ConfigurationError(
                "rigl needs total_steps (steps_per_epoch * epochs): updates stop at update_end * total_steps and "
                "the drop fraction decays over those steps; pass total_steps= to the Sparsifier")
        self._forget_scores()
        self._warned_masked = set()

    def drop_fraction(self, step: int) -> float:
        """The drop fraction of an update after optimizer step ``step``: ``prune_rate (1 + cos(pi t / T_end)) / 2``.

        Only meaningful once the run is set up (it needs ``total_steps``).
        """
        return self.schedule.rate(step)

    # ------------------------------------------------------------------
    # the dense gradient
    # ------------------------------------------------------------------
    @hookimpl
    def before_optimizer_step(self, sparsifier, step: int) -> None:
        """Keep ``|grad|`` of every sparse weight when this step ends with a topology update.

        The gradients are still dense here (the engine masks them after this
        hook), so these are the growth scores. A weight without a gradient
        scores 0 everywhere.
        """
        if not sparsifier.is_update_step(step + 1):
            return
        scores = {}
        for name, layer in sparsifier.layers.items():
            grad = layer.weight.grad
            if grad is None:
                scores[name] = torch.zeros_like(layer.weight, dtype=torch.float32)
                continue
            scores[name] = grad.detach().abs().float()
            self._warn_if_masked(layer, scores[name])
        self._grow_scores, self._scores_step = scores, step + 1

    def _warn_if_masked(self, layer, score: torch.Tensor) -> None:
        """Warn once per layer whose replaced forward left the gradient 0 at every inactive weight.

        A plugin's forward (a sparse kernel) may compute the weight gradient on
        the mask only; the module's own forward always gives the dense one.
        """
        inactive = ~layer.mask
        replaced = "forward" in vars(layer.module)
        if not replaced or layer.name in self._warned_masked or not bool(inactive.any()) or not bool(score.any()):
            return
        if not bool(score[inactive].any()):
            self._warned_masked.add(layer.name)
            warnings.warn(f"rigl: the gradient of layer {layer.name!r} is 0 at every inactive weight, so growth "
                          "there falls back to position order; its forward (e.g. a sparse kernel) does not compute "
                          "the dense weight gradient RigL grows by", UserWarning, stacklevel=2)

    def _forget_scores(self) -> None:
        self._grow_scores, self._scores_step = {}, None

    # ------------------------------------------------------------------
    # topology update
    # ------------------------------------------------------------------
    @hookimpl
    def select_grow(self, sparsifier, layer, n: int) -> torch.Tensor:
        """The ``n`` inactive weights of largest ``|dense gradient|`` (ties by position; whole blocks in block runs).

        Raises:
            SparsecoreError: no dense gradient was kept for this update (an
                update started by hand rather than by the schedule).
        """
        score = self._grow_scores.get(layer.name) if self._scores_step == sparsifier.step else None
        if score is None:
            raise SparsecoreError(
                f"rigl: no dense gradient of step {sparsifier.step} for layer {layer.name!r}; RigL grows by the dense "
                f"gradient it keeps on the schedule's update steps (every {self.update_every} steps), so its "
                "updates must come from the schedule, not from calling update_topology by hand")
        return selection.largest(score, ~layer.mask, n, layer.pattern)

    @hookimpl
    def on_topology_update(self, report) -> None:
        """Release the kept gradients once the update is done."""
        if report.reason == "update":
            self._forget_scores()

    # ------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------
    @hookimpl
    def layer_train_flops(self, sparsifier, layer) -> tuple[int, int]:
        """RigL's training FLOPs per sample (see :func:`rigl_train_flops`): the amortised dense weight gradient
        counts while an update is still ahead (at or after the current step), not after the last one."""
        step, every = sparsifier.step, self.update_every
        next_update = max(every, -(-step // every) * every)  # the first multiple of update_every >= step
        updates_ahead = sparsifier.is_update_step(next_update)
        return rigl_train_flops(layer.nnz, layer.capacity, layer.output_positions or 0,
                                every if updates_ahead else None)

    def metrics(self, sparsifier) -> dict[str, Any]:
        """``drop_fraction``: the fraction the next scheduled update would drop (0 once no update is left)."""
        step = sparsifier.step
        following = (step // self.update_every + 1) * self.update_every
        return {"drop_fraction": self.drop_fraction(following) if sparsifier.is_update_step(following) else 0.0}

    def __repr__(self) -> str:
        return (f"RigLAlgorithm(prune_rate={self.prune_rate}, decay={self.decay!r}, "
                f"update_every={self.update_every}, update_end={self.update_end})")


def rigl_train_flops(nnz: int, numel: int, positions: int, update_every: int | None) -> tuple[int, int]:
    """Forward and backward FLOPs per sample of one RigL layer (a multiply-add counts 2).

    Forward ``2 nnz P``; backward ``2 nnz P`` (input gradient) ``+ 2 nnz P``
    (masked weight gradient) ``+ 2 numel P / update_every`` (the dense weight
    gradient of every update step, amortised over the steps between updates;
    rounded down). ``P`` is the number of output positions (1 for a Linear
    layer on vectors). This is the cost per step while updates happen; after
    ``update_end`` the last term vanishes.

    Args:
        nnz: active weights of the layer.
        numel: all weights of the layer.
        positions: output positions ``P``.
        update_every: optimizer steps between updates; ``None`` once no update is left.
    """
    forward = 2 * nnz * positions
    backward = 4 * nnz * positions + ((2 * numel * positions) // update_every if update_every else 0)
    return forward, backward
