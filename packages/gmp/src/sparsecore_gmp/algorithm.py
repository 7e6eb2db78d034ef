"""The ``gmp`` algorithm: gradual magnitude pruning through sparsecore's hooks.

The run starts dense and prunes on the cubic schedule of
:mod:`sparsecore_gmp.schedule`. The engine's :class:`~sparsecore.UpdateSchedule`
(a prune *rate* decaying over the run, as SET and RigL use) does not describe
a sparsity *target* on a ramp, so the algorithm drives its own updates:

* ``init_masks``: every mask all-True (or, when the first pruning step is
  step 0, the masks of that step);
* ``on_step``: after every pruning step, ``sparsifier.update_topology(rate)``;
* ``plan_update``: per layer, prune exactly ``nnz - k_l(t)`` weights, with
  ``k_l(t)`` the scheduled count (the engine's default ``select_prune``
  removes the smallest ``|w|``); with ``prune="global_magnitude"``, the
  selection of the ``sum(nnz) - sum(k_l(t))`` smallest ``|w|`` over all
  layers; in an N:M run (``pattern="N:M"``), the selection that leaves the
  ``k(t)`` largest ``|w|`` in every group. Growth is always 0, so masks only
  shrink;
* ``nm_group_count``: in an N:M run, the per-group count ``k(t)`` the engine
  holds every group to (``M`` before the first pruning step, ``N`` from the
  last one on);
* the engine's default :class:`~sparsecore.MaskingPolicy` zeroes pruned
  weights, their gradients and their optimizer state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from sparsecore import Algorithm, CheckpointError, ConfigurationError, MaskingPolicy, UpdatePlan, hookimpl, selection
from sparsecore.selection import NMPattern
from sparsecore_gmp.flops import RunFlops, integrate_flops
from sparsecore_gmp.schedule import ROUNDINGS, PruningSchedule, kept_count

#: How the weights to remove are chosen: per layer, or over all layers together.
PRUNE_MODES = ("magnitude", "global_magnitude")
#: First pruning step as a fraction of ``total_steps`` when neither ``start`` nor ``start_step`` is given.
DEFAULT_START = 0.1
#: Last pruning step as a fraction of ``total_steps`` when neither ``end`` nor ``end_step`` is given.
DEFAULT_END = 0.75
STATE_FORMAT = 1


class GMPAlgorithm(Algorithm):
    """Gradual magnitude pruning (Zhu & Gupta 2017): dense-to-sparse training on a cubic sparsity ramp.

    Every mask starts all-True. At the pruning steps ``t0, t0 + dt, ...,
    t_end`` each sparse layer keeps the ``k_l(t)`` weights of largest
    ``|w|`` among those still active, where

        d_l(t) = d_l + (d_i - d_l) * (1 - (t - t0) / (t_end - t0)) ** power,
        k_l(t) = max(rounding(d_l(t) * n_l), rounding(d_l * n_l)),

    ``d_l`` is the layer's final density (``layer.target_density``: the
    engine's ``density`` spread by its ``distribution``, uniform or ERK),
    ``d_i = max(initial_density, d_l)`` and ``n_l`` the layer's size (counts
    in whole blocks in a block-sparse run). Before ``t0`` the model is dense;
    at ``t_end`` every layer holds exactly its final count and the masks stay
    fixed. Masks only shrink: a pruned weight is 0, and so are its gradient
    and optimizer state (momentum, Adam moments) for the rest of the run.

    With ``prune="global_magnitude"`` one threshold spans all layers: the
    ``sum(nnz) - sum(k_l(t))`` smallest ``|w|`` over every layer are removed,
    so the total follows the schedule but layer densities differ (a layer may
    lose all its weights).

    **Gradual N:M** (``pattern="N:M"``): the ramp applies to the count per
    group. Every group of every layer holds the same count

        k(t) = max(N, rounding(M * d(t))),   d(t) = N/M + (d_i - N/M) * (1 - p) ** power,

    ``M`` before ``t0`` (dense), falling at every pruning step to exactly
    ``N`` at ``t_end``; each pruning step keeps the ``k(t)`` largest ``|w|``
    of every group among those still active. ``rounding`` is the option
    above, so a group counts like an unstructured layer of ``M`` weights.
    The engine checks every group against :meth:`nm_group_count` after every
    update. ``prune="global_magnitude"`` cannot apply (every group holds the
    same count) and is refused.

    The engine's ``density`` is the **final** density. Training FLOPs in
    ``sparsifier.report()`` are a snapshot at the current masks (dense before
    ``t0``); :meth:`train_flops` integrates them over the whole run.

    Example:
        ```python
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="gmp", density=0.05,
                                           total_steps=len(loader) * epochs, start=0.1, end=0.5)
        ```

    Args:
        initial_density: density ``1 - s_i`` at the first pruning step, in
            (0, 1] (default 1: the ramp starts from dense). A layer whose final
            density is higher starts the ramp at its final density.
        start: first pruning step as a fraction of ``total_steps`` (default 0.1).
        end: last pruning step as a fraction of ``total_steps`` (default 0.75).
        start_step: first pruning step in optimizer steps, instead of ``start``.
        end_step: last pruning step in optimizer steps, instead of ``end``.
        update_every: optimizer steps between pruning steps, ``dt`` (default 100).
        power: exponent of the ramp (default 3, the paper's cubic; 1 is linear).
        prune: ``"magnitude"`` (per layer, default) or ``"global_magnitude"``.
        rounding: how a density becomes a count of weights: ``"round"``
            (default; the engine's count, so the final masks hold as many
            weights as a static run's), ``"floor"`` or ``"ceil"``.

    Raises:
        ConfigurationError: an option of the wrong type or out of range, or a
            fraction and a step given for the same end of the span; at set-up,
            fractions without ``total_steps``, a span ending after the run,
            or ``prune="global_magnitude"`` in an N:M run.
    """

    name = "gmp"
    masking_policy = MaskingPolicy()
    patterns = ("unstructured", "block", "n:m")
    sets_initial_density = True  # starts dense; the schedule reaches the target density at end_step

    def __init__(self, initial_density: float = 1.0, start: float | None = None, end: float | None = None,
                 start_step: int | None = None, end_step: int | None = None, update_every: int = 100,
                 power: float = 3.0, prune: str = "magnitude", rounding: str = "round") -> None:
        self.initial_density = _number("initial_density", initial_density, "a number in (0, 1]",
                                       lambda v: 0.0 < v <= 1.0)
        for fraction, step, which in ((start, start_step, "start"), (end, end_step, "end")):
            if fraction is not None and step is not None:
                raise ConfigurationError(f"gmp: give {which} (a fraction of total_steps) or {which}_step (optimizer "
                                         f"steps), not both; got {which}={fraction!r}, {which}_step={step!r}")
        self.start = None if start is None else _number("start", start, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        self.end = None if end is None else _number("end", end, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        self.start_step = None if start_step is None else _integer("start_step", start_step, 0)
        self.end_step = None if end_step is None else _integer("end_step", end_step, 0)
        if start_step is None and end_step is None:
            first = DEFAULT_START if self.start is None else self.start
            last = DEFAULT_END if self.end is None else self.end
            if first > last:
                raise ConfigurationError(f"gmp: start ({first}) must not be after end ({last})")
        if self.start_step is not None and self.end_step is not None and self.start_step > self.end_step:
            raise ConfigurationError(f"gmp: start_step ({start_step}) must not be after end_step ({end_step})")
        self.update_every = _integer("update_every", update_every, 1)
        self.power = _number("power", power, "a positive number", lambda v: 0.0 < v < math.inf)
        if prune not in PRUNE_MODES:
            raise ConfigurationError(f"gmp: unknown prune {prune!r}; choose one of {list(PRUNE_MODES)}")
        if rounding not in ROUNDINGS:
            raise ConfigurationError(f"gmp: unknown rounding {rounding!r}; choose one of {list(ROUNDINGS)}")
        self.prune = prune
        self.rounding = rounding
        #: The run's pruning steps (known once the sparsifier is set up).
        self.pruning_schedule: PruningSchedule | None = None
        # global mode: (step, per-layer nnz) after every mask change, for train_flops()
        self._records: list[tuple[int, list[int]]] = []

    # ------------------------------------------------------------------
    # the schedule
    # ------------------------------------------------------------------
    def _bind(self, sparsifier) -> PruningSchedule:
        """Fix the pruning steps of this run from the options and ``sparsifier.total_steps``."""
        total = sparsifier.total_steps
        if (self.start_step is None or self.end_step is None) and total is None:
            raise ConfigurationError("gmp: start and end are fractions of total_steps; pass total_steps= to the "
                                     "Sparsifier, or give start_step= and end_step= in optimizer steps")
        first = self.start_step if self.start_step is not None else \
            round((DEFAULT_START if self.start is None else self.start) * total)
        last = self.end_step if self.end_step is not None else \
            round((DEFAULT_END if self.end is None else self.end) * total)
        if last < first:
            raise ConfigurationError(f"gmp: the pruning span ends at step {last} before it starts at step {first}; "
                                     "move end/end_step after start/start_step")
        if total is not None and last > total:
            raise ConfigurationError(f"gmp: the last pruning step {last} is after the run's last step "
                                     f"(total_steps={total}): the final density would never be reached")
        self.pruning_schedule = PruningSchedule(first, last, self.update_every, self.power)
        return self.pruning_schedule

    def _schedule(self) -> PruningSchedule:
        if self.pruning_schedule is None:
            raise RuntimeError("gmp: the pruning schedule is known once the sparsifier is set up")
        return self.pruning_schedule

    def scheduled_counts(self, layers: Mapping[str, Any], step: int) -> dict[str, int]:
        """Active weights per layer the schedule prescribes after optimizer step ``step``.

        ``numel`` before the first pruning step; afterwards ``k_l`` of the
        latest pruning step at or before ``step`` (see the class docs).

        Args:
            layers: the sparse layers by name (``sparsifier.layers``).
            step: optimizer steps done (0 = set-up).
        """
        schedule = self._schedule()
        counts = {}
        for name, layer in layers.items():
            pattern = getattr(layer, "pattern", None)
            if isinstance(pattern, NMPattern):
                counts[name] = self.group_count(pattern, step) * pattern.groups_in(layer.shape)
                continue
            final = layer.target_density
            density = schedule.density(step, max(self.initial_density, final), final)
            counts[name] = max(kept_count(layer.capacity, density, layer.block_size, self.rounding),
                               kept_count(layer.capacity, final, layer.block_size, self.rounding))
        return counts

    def group_count(self, pattern: NMPattern, step: int) -> int:
        """Active weights per group of an N:M layer after optimizer step ``step``: ``k(t)`` (see the class docs).

        ``M`` before the first pruning step; ``max(N, rounding(M * d(t)))`` with
        ``d(t)`` the ramp from ``max(initial_density, N/M)`` to ``N/M`` at the
        latest pruning step; exactly ``N`` from ``end_step`` on.

        Args:
            pattern: the run's N:M pattern.
            step: optimizer steps done (0 = set-up).
        """
        final = pattern.density
        density = self._schedule().density(step, max(self.initial_density, final), final)
        return max(pattern.n, kept_count(pattern.m, density, 1, self.rounding))

    def nm_group_count(self, sparsifier, layer) -> int:
        """The count every group of an N:M layer holds now, ``k(t)`` at ``sparsifier.step`` (engine's check)."""
        if self.pruning_schedule is None:  # asked before init_masks ran (another plugin answered it)
            self._bind(sparsifier)
        return self.group_count(layer.pattern, sparsifier.step)

    def _nm_selection(self, layer, mask: torch.Tensor, step: int) -> torch.Tensor:
        """The active weights to prune so that every group keeps its ``k(t)`` largest ``|w|``."""
        keep = selection.top_k_per_group(layer.weight.detach().abs(), mask, self.group_count(layer.pattern, step),
                                         layer.pattern)
        return mask & ~keep

    def _prune_total(self, layers: Mapping[str, Any], masks: Mapping[str, torch.Tensor],
                     step: int) -> tuple[dict[str, int], int]:
        """Per-layer counts to remove (per-layer mode) and the total over all layers (global mode)."""
        targets = self.scheduled_counts(layers, step)
        nnz = {name: int(masks[name].sum()) for name in layers}
        excess = {name: max(0, nnz[name] - targets[name]) for name in layers}
        return excess, max(0, sum(nnz.values()) - sum(targets.values()))

    def _global_selection(self, sparsifier, layers: Mapping[str, Any], masks: Mapping[str, torch.Tensor],
                          n: int) -> dict[str, torch.Tensor]:
        return selection.global_smallest({name: layer.weight.detach().abs() for name, layer in layers.items()},
                                         masks, n, sparsifier.block)

    # ------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------
    @hookimpl
    def init_masks(self, sparsifier, layers) -> dict[str, torch.Tensor]:
        """Every mask all-True; when step 0 is a pruning step (``start_step=0``), that step's masks.

        Raises:
            ConfigurationError: the schedule cannot be fixed for this run (see :meth:`on_setup`).
        """
        schedule = self._bind(sparsifier)
        masks = {name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in layers.items()}
        if not schedule.is_pruning_step(0):
            return masks
        excess, total = self._prune_total(layers, masks, 0)
        if isinstance(sparsifier.pattern, NMPattern):
            chosen = {name: self._nm_selection(layer, masks[name], 0) for name, layer in layers.items()}
        elif self.prune == "global_magnitude":
            chosen = self._global_selection(sparsifier, layers, masks, total)
        else:
            chosen = {name: selection.smallest(layer.weight.detach().abs(), masks[name], excess[name], layer.block)
                      for name, layer in layers.items()}
        return {name: masks[name] & ~chosen[name] for name in layers}

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Fix the pruning steps and reset the record of mask changes.

        Raises:
            ConfigurationError: ``start``/``end`` given as fractions (the
                defaults are) without ``total_steps``, or a last pruning step
                after ``total_steps``; ``prune="global_magnitude"`` in an N:M run.
        """
        if self.prune == "global_magnitude" and isinstance(sparsifier.pattern, NMPattern):
            raise ConfigurationError(f"gmp: prune='global_magnitude' cannot apply in a pattern="
                                     f"{str(sparsifier.pattern)!r} run (every group holds the same count, so one "
                                     "threshold over all layers has nothing to choose); use prune='magnitude'")
        schedule = self._bind(sparsifier)
        self._records = []
        if self.prune == "global_magnitude" and schedule.is_pruning_step(0):
            self._records.append((0, [layer.nnz for layer in sparsifier.layers.values()]))

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------
    @hookimpl
    def on_step(self, sparsifier, step: int) -> None:
        """After a pruning step, run the topology update that brings every layer to its scheduled count."""
        if not self._schedule().is_pruning_step(step):
            return
        _, total = self._prune_total(sparsifier.layers, {n: layer.mask for n, layer in sparsifier.layers.items()}, step)
        nnz = sparsifier.nnz
        sparsifier.update_topology(total / nnz if nnz else 0.0)

    @hookimpl
    def plan_update(self, sparsifier, layers, update) -> UpdatePlan:
        """Prune every layer down to its scheduled count at ``update.step``; grow nothing.

        Per layer the plan is the count ``nnz - k_l(t)`` (0 when the layer
        already holds at most ``k_l(t)``), and the per-layer ``select_prune``
        (the engine's default: smallest ``|w|`` among active weights, whole
        blocks in a block-sparse run) chooses which. With
        ``prune="global_magnitude"`` the plan is the selection of the
        ``sum(nnz) - sum(k_l(t))`` smallest ``|w|`` over all layers (ties by
        layer order, then position). In an N:M run it is the selection that
        leaves the ``k(t)`` largest ``|w|`` among the active weights of every
        group (ties keep the lower index). Off the schedule (a direct
        ``update_topology`` call) the counts are those of the latest pruning
        step, so nothing changes.
        """
        masks = {name: layer.mask for name, layer in layers.items()}
        excess, total = self._prune_total(layers, masks, update.step)
        prune: Mapping[str, int | torch.Tensor] = excess
        if isinstance(sparsifier.pattern, NMPattern):
            prune = {name: self._nm_selection(layer, masks[name], update.step) for name, layer in layers.items()}
        elif self.prune == "global_magnitude":
            prune = self._global_selection(sparsifier, layers, masks, total)
        return UpdatePlan(prune=prune, grow=dict.fromkeys(layers, 0))

    @hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        """Global mode: record the per-layer counts after every mask change (for :meth:`train_flops`)."""
        if self.prune == "global_magnitude":
            self._records.append((int(report.step), [update.nnz for update in report.layers.values()]))

    # ------------------------------------------------------------------
    # cost
    # ------------------------------------------------------------------
    @hookimpl
    def layer_train_flops(self, layer) -> tuple[int, int]:
        """One training step's FLOPs per sample at the **current** mask: ``2kP`` forward, ``4kP`` backward.

        ``k`` is the layer's active weights and ``P`` its output positions;
        the backward counts the input gradient and the (masked) weight
        gradient. This is a snapshot: before the first pruning step it is the
        dense cost, at the end the final sparse cost. :meth:`train_flops`
        gives the cost of the whole run.
        """
        per_weight = 2 * layer.nnz * layer.output_positions
        return per_weight, 2 * per_weight

    def train_flops(self, sparsifier, total_steps: int | None = None) -> RunFlops:
        """Training FLOPs of the whole run, summed over its steps with the masks in force at each.

        Step ``t`` trains with the masks of the latest pruning step before it:
        dense up to ``t0``, then each pruning step's counts (``6kP`` FLOPs per
        active weight, output position and sample, as
        :meth:`layer_train_flops`). Per-layer mode follows the schedule, so it
        is known before training; global mode uses the counts the run
        actually reached, so call it after the last pruning step.

        Args:
            sparsifier: the engine (after at least one forward pass, which records the layers' output sizes).
            total_steps: steps of the run (default ``sparsifier.total_steps``).

        Returns:
            A :class:`~sparsecore_gmp.RunFlops` (``ratio`` is sparse over dense training).

        Raises:
            ValueError: no ``total_steps`` known.
            RuntimeError: no forward pass yet, or (global mode) pruning steps
                before ``total_steps`` that have not run.
        """
        total = total_steps if total_steps is not None else sparsifier.total_steps
        if total is None:
            raise ValueError("gmp: train_flops() needs the run's length; pass total_steps=")
        schedule = self._schedule()
        layers = sparsifier.layers
        positions = {name: layer.output_positions for name, layer in layers.items()}
        unknown = [name for name, p in positions.items() if p is None]
        if unknown:
            raise RuntimeError(f"gmp: train_flops() needs the output size of layers {unknown}, known after the "
                               "first forward pass; run one batch first")
        dense = {name: layer.capacity for name, layer in layers.items()}
        segments: list[tuple[int, Mapping[str, int]]] = [(0, dense)]
        if self.prune == "global_magnitude":
            pending = [t for t in schedule.pruning_steps() if sparsifier.step < t < total]
            if pending:
                raise RuntimeError(f"gmp: with prune='global_magnitude' a pruning step's per-layer counts are known "
                                   f"only once it ran; {len(pending)} pruning step(s) before step {total} have not "
                                   f"run yet (next: {pending[0]}); call train_flops() after step {pending[-1]}")
            segments += [(step, dict(zip(layers, counts, strict=True))) for step, counts in self._records]
        else:
            segments += [(t, self.scheduled_counts(layers, t)) for t in schedule.pruning_steps()]
        if len(segments) > 1 and segments[1][0] == 0:  # pruned at set-up: no dense segment
            segments.pop(0)
        return integrate_flops(segments, dense, positions, total)

    def metrics(self, sparsifier) -> dict[str, Any]:
        """The density of the sparse layers now, for a training harness's per-epoch record."""
        numel = sum(layer.capacity for layer in sparsifier.layers.values())
        return {"density": round(sparsifier.nnz / numel, 6)}

    # ------------------------------------------------------------------
    # checkpointing
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The run's schedule (checked on load) and, in global mode, the recorded per-layer counts."""
        schedule = self.pruning_schedule
        return {
            "format": STATE_FORMAT,
            "schedule": None if schedule is None else [schedule.start_step, schedule.end_step,
                                                      schedule.update_every, schedule.power],
            "initial_density": self.initial_density,
            "prune": self.prune,
            "rounding": self.rounding,
            "records": [[step, list(counts)] for step, counts in self._records],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the schedule itself follows from the options and ``total_steps``).

        Raises:
            CheckpointError: another format, or a checkpoint of another schedule,
                initial density, prune mode or rounding.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"gmp: unsupported state format {found!r} (expected {STATE_FORMAT})")
        mine = self.state_dict()
        for key in ("schedule", "initial_density", "prune", "rounding"):
            saved = list(state[key]) if isinstance(state[key], (list, tuple)) else state[key]
            if saved != mine[key]:
                raise CheckpointError(f"gmp: checkpoint {key} {saved!r} differs from this run's {mine[key]!r}; "
                                      "resume with the same options and total_steps")
        self._records = [(int(step), [int(c) for c in counts]) for step, counts in state["records"]]

    def __repr__(self) -> str:
        span = (f"start_step={self.pruning_schedule.start_step}, end_step={self.pruning_schedule.end_step}"
                if self.pruning_schedule is not None else f"start={self.start}, end={self.end}, "
                f"start_step={self.start_step}, end_step={self.end_step}")
        return (f"GMPAlgorithm(initial_density={self.initial_density}, {span}, update_every={self.update_every}, "
                f"power={self.power}, prune={self.prune!r}, rounding={self.rounding!r})")


def _number(option: str, value: Any, what: str, ok) -> float:
    """``value`` as a float if it is a real number passing ``ok``; else a ConfigurationError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)) \
            or not ok(float(value)):
        raise ConfigurationError(f"gmp: {option} must be {what}, got {value!r}")
    return float(value)


def _integer(option: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``; else a ConfigurationError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigurationError(f"gmp: {option} must be {kind}, got {value!r}")
    return int(value)
