"""The ``sparse-momentum`` algorithm: SNFS through sparsecore's hooks.

One topology update (the reference's ``truncate_weights``) maps onto the
engine's cycle like this:

* ``prune_counts``: gather the per-layer statistics on the masks *before*
  pruning (redistribution share, active and inactive counts), cap the prune
  rate of dense growing layers, and return ``ceil(p_l * nnz_l)`` per layer;
* ``select_prune``: the smallest ``|w|`` among active weights (or, with
  ``prune="global_magnitude"``, the smallest over all layers together);
* ``redistribute``: the residual loop of :func:`growth_redistribution` with
  the drift correction, rounded down as the reference does;
* ``select_grow``: the inactive weights of largest ``|momentum|`` (or random,
  or the reference's per-neuron variant);
* ``on_topology_update``: update the drift correction ``adjusted_growth``
  from the new total of active weights.

Differences from the reference code, all forced by exact counts or guarding
its crashes, are listed in the package README.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from sparsecore import ConfigurationError, MaskingPolicy, hookimpl, selection
from sparsecore.schedules import make_decay
from sparse_momentum.redistribution import adjust_prune_rates, growth_redistribution, layer_shares

#: Statistics by which removed weights are redistributed across layers.
REDISTRIBUTION_MODES = ("momentum", "magnitude", "nonzero", "none")
#: How the weights to activate are chosen inside a layer.
GROWTH_MODES = ("momentum", "random", "momentum_neuron")
#: How the weights to remove are chosen.
PRUNE_MODES = ("magnitude", "global_magnitude")
#: Initial masks: the engine's exact-count random masks or the reference's Bernoulli draw.
INIT_MODES = ("exact", "bernoulli")

_ALIASES = {"nonzeros": "nonzero"}


class _Cycle:
    """Numbers of one topology update, gathered before pruning."""

    def __init__(self, rate: float, nnz: dict[str, int], zeros: dict[str, int], shares: dict[str, float],
                 prune_rates: dict[str, float]) -> None:
        self.rate = rate
        self.nnz = nnz
        self.zeros = zeros
        self.shares = shares
        self.prune_rates = prune_rates
        self.prune_masks: dict[str, torch.Tensor] = {}
        self.grow_masks: dict[str, torch.Tensor] = {}


class SparseMomentum:
    """Sparse Momentum / SNFS (Dettmers & Zettlemoyer 2019), faithful to the authors' reference code.

    Inactive weights stay at zero, but their gradients and momentum are *not*
    masked: growth reads the momentum of zero weights. After every epoch
    except the last (or every ``update_every`` steps), each layer loses
    ``ceil(p_l * nnz_l)`` of its smallest-magnitude weights, the removed
    weights are redistributed across layers by mean ``|momentum|`` of their
    active weights (at most 99 % of a layer's free slots), and each layer
    regrows its share at the inactive weights of largest ``|momentum|``,
    starting from 0. The prune rate follows a cosine decay from
    ``prune_rate`` to ``eta_min`` over ``total_steps``.

    The sparsifier must be given ``total_steps`` (``steps_per_epoch *
    epochs``), whatever the ``decay``: it is how the last epoch is recognised
    (no update after it) and the length of the prune-rate schedule.

    Example:
        ```python
        sparsifier = sparsecore.Sparsifier(model, optimizer, algorithm="sparse-momentum", density=0.05,
                                           total_steps=len(loader) * epochs)
        ```

    Args:
        prune_rate: the prune rate at step 0 (reference default 0.5).
        eta_min: the prune rate reached at ``total_steps`` (reference 0.005),
            for ``"cosine"`` and ``"linear"`` decay.
        decay: ``"cosine"`` (reference default), ``"linear"`` or
            ``"constant"`` (always ``prune_rate``). ``"linear"`` goes from
            ``prune_rate`` to ``eta_min`` in a straight line; the reference's
            ``LinearDecay`` ignores ``eta_min`` and reaches 0 (pass
            ``eta_min=0`` for that).
        redistribution: ``"momentum"`` (default), ``"magnitude"`` (mean |w| of
            active weights), ``"nonzero"`` (count of non-zero weights) or
            ``"none"`` (share proportional to the layer's size).
        growth: ``"momentum"`` (default), ``"random"`` or ``"momentum_neuron"``.
        prune: ``"magnitude"`` (per layer, default) or ``"global_magnitude"``.
        update_every: ``"epoch"`` (after every epoch except the last) or a
            positive number ``k`` of optimizer steps (after every ``k``-th
            step before ``total_steps``; none at the last step).
        init: ``"exact"`` (the engine's masks with exactly
            ``round(d * n)`` active weights per layer, default) or
            ``"bernoulli"`` (each weight active with probability ``d``, as the
            reference).

    Raises:
        ConfigurationError: an unknown mode or an out-of-range number; at
            set-up, a sparsifier without ``total_steps`` or an optimizer without
            momentum when growth or redistribution read it.
    """

    name = "sparse-momentum"

    def __init__(self, prune_rate: float = 0.5, eta_min: float = 0.005, decay: str = "cosine",
                 redistribution: str = "momentum", growth: str = "momentum", prune: str = "magnitude",
                 update_every: int | str = "epoch", init: str = "exact") -> None:
        redistribution = _ALIASES.get(redistribution, redistribution)
        for option, value, allowed in (("redistribution", redistribution, REDISTRIBUTION_MODES),
                                       ("growth", growth, GROWTH_MODES), ("prune", prune, PRUNE_MODES),
                                       ("init", init, INIT_MODES), ("decay", decay, ("cosine", "linear", "constant"))):
            if value not in allowed:
                raise ConfigurationError(f"sparse-momentum: unknown {option} {value!r}; choose one of {list(allowed)}")
        if isinstance(prune_rate, bool) or not 0.0 < float(prune_rate) <= 1.0:
            raise ConfigurationError(f"sparse-momentum: prune_rate must be in (0, 1], got {prune_rate!r}")
        if not 0.0 <= float(eta_min) <= float(prune_rate):
            raise ConfigurationError(f"sparse-momentum: eta_min must be in [0, prune_rate], got {eta_min!r}")
        if update_every != "epoch" and (isinstance(update_every, bool) or not isinstance(update_every, int)
                                        or update_every <= 0):
            raise ConfigurationError(f"sparse-momentum: update_every must be 'epoch' or a positive int, "
                                     f"got {update_every!r}")
        self.prune_rate = float(prune_rate)
        self.eta_min = float(eta_min)
        self.decay = decay
        self.redistribution = redistribution
        self.growth = growth
        self.prune = prune
        self.update_every = update_every
        self.init = init
        #: Target number of active weights, ``sum(target_density * numel)`` (set at setup).
        self.baseline_nonzero: float | None = None
        #: Drift correction added to the weights regrown in the next cycle.
        self.adjusted_growth: float = 0.0
        #: ``baseline_nonzero - nnz`` after every cycle so far.
        self.adjustments: list[float] = []
        self._schedule: Callable[[int], float] | None = None
        self._cycle: _Cycle | None = None

    # ------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------
    @hookimpl
    def masking_policy(self) -> MaskingPolicy:
        """Mask weights only: gradients and momentum of inactive weights stay dense; grown weights start at 0."""
        return MaskingPolicy(mask_weights=True, mask_gradients=False, mask_optimizer_state=False,
                             reset_grown_state=False)

    @hookimpl
    def init_masks(self, sparsifier, layers) -> dict[str, torch.Tensor] | None:
        """With ``init="bernoulli"``: each weight active with probability ``target_density``."""
        if self.init != "bernoulli":
            return None
        gen = sparsifier.generator
        return {name: (torch.rand(layer.shape, generator=gen, device=gen.device) < layer.target_density)
                .to(layer.weight.device) for name, layer in layers.items()}

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Check the run, build the prune-rate schedule, fix the target count, reset the drift state.

        Raises:
            ConfigurationError: the sparsifier has no ``total_steps``, or the
                optimizer has no momentum while growth or redistribution need it.
        """
        if sparsifier.total_steps is None:
            raise ConfigurationError(
                "sparse-momentum needs total_steps (steps_per_epoch * epochs): it skips the topology update "
                "after the final epoch, which it can only recognise from total_steps, and its prune-rate "
                "schedule runs over total_steps; pass total_steps= to the Sparsifier")
        try:
            self._schedule = make_decay(self.decay, self.prune_rate, sparsifier.total_steps, self.eta_min)
        except ValueError as exc:
            raise ConfigurationError(f"sparse-momentum: {exc}") from None
        self.baseline_nonzero = float(sum(layer.target_density * layer.capacity
                                          for layer in sparsifier.layers.values()))
        self.adjusted_growth = 0.0
        self.adjustments = []
        self._cycle = None
        if self._needs_momentum():
            for group in sparsifier.optimizer.param_groups:
                if "momentum" in group and "betas" not in group and not group["momentum"]:
                    raise ConfigurationError(
                        "sparse-momentum: the optimizer has momentum 0, but growth/redistribution by momentum "
                        "need it; use SGD with momentum > 0 or an Adam-family optimizer, or choose "
                        "growth='random' and redistribution other than 'momentum'")

    def _needs_momentum(self) -> bool:
        return self.redistribution == "momentum" or self.growth in ("momentum", "momentum_neuron")

    def rate(self, step: int) -> float:
        """The prune rate after ``step`` optimizer steps.

        Raises:
            RuntimeError: before the sparsifier was set up.
        """
        if self._schedule is None:
            raise RuntimeError("sparse-momentum: rate() is available once the Sparsifier is set up")
        return self._schedule(step)

    # ------------------------------------------------------------------
    # schedule
    # ------------------------------------------------------------------
    @hookimpl
    def on_step(self, sparsifier, step: int) -> None:
        """Step-scheduled updates (``update_every=k``): at every multiple of ``k`` below ``total_steps``.

        None at or after ``total_steps``: an update at the run's last step
        would change masks that are never trained again, the step-mode
        counterpart of skipping the update after the final epoch.
        """
        if self.update_every == "epoch" or step % self.update_every:
            return
        if step >= sparsifier.total_steps:
            return
        sparsifier.update_topology(self.rate(step))

    @hookimpl
    def on_epoch_end(self, sparsifier, epoch: int) -> None:
        """Epoch-scheduled updates: after every epoch except the last.

        The last epoch is the one whose end reaches ``total_steps`` (within half
        an epoch, :meth:`sparsecore.Sparsifier.is_final_epoch`); set-up makes
        sure ``total_steps`` is given.
        """
        if self.update_every == "epoch" and not sparsifier.is_final_epoch(epoch):
            sparsifier.update_topology(self.rate(sparsifier.step))

    # ------------------------------------------------------------------
    # statistics
    # ------------------------------------------------------------------
    def _momentum(self, sparsifier, layer) -> torch.Tensor:
        momentum = sparsifier.momentum(layer)
        if momentum is None:
            raise ConfigurationError(
                f"sparse-momentum: the optimizer holds no momentum for layer {layer.name!r} (no "
                "'momentum_buffer' or 'exp_avg'); run at least one optimizer step with SGD (momentum > 0) "
                "or Adam before the first topology update")
        return momentum.detach()

    def _statistic(self, sparsifier, layer) -> float:
        mask = layer.mask
        if self.redistribution == "momentum":
            values = self._momentum(sparsifier, layer).abs()[mask]
        elif self.redistribution == "magnitude":
            values = layer.weight.detach().abs()[mask]
        elif self.redistribution == "nonzero":
            return float((layer.weight.detach() != 0).sum())
        else:  # "none": the share is the layer's size
            return layer.capacity / float(self.baseline_nonzero)
        return float(values.float().mean()) if values.numel() else float("nan")

    def _gather(self, sparsifier, layers, rate: float) -> _Cycle:
        nnz = {name: layer.nnz for name, layer in layers.items()}
        zeros = {name: layer.capacity - nnz[name] for name, layer in layers.items()}
        shares = layer_shares({name: self._statistic(sparsifier, layer) for name, layer in layers.items()})
        rates = adjust_prune_rates(rate, shares, zeros, {n: l.capacity for n, l in layers.items()})
        return _Cycle(rate, nnz, zeros, shares, rates)

    # ------------------------------------------------------------------
    # topology update
    # ------------------------------------------------------------------
    @hookimpl
    def prune_counts(self, sparsifier, layers, rate: float) -> dict[str, int]:
        """Gather statistics on the unpruned masks; ``ceil(p_l * nnz_l)`` per layer.

        With ``prune="global_magnitude"`` the ``ceil(rate * baseline_nonzero)``
        smallest ``|w|`` over all layers are removed, and the count per layer
        is where they fall.
        """
        cycle = self._gather(sparsifier, layers, rate)
        self._cycle = cycle
        if self.prune == "global_magnitude":
            return self._global_prune(layers, cycle)
        return {name: min(cycle.nnz[name], math.ceil(cycle.prune_rates[name] * cycle.nnz[name]))
                for name in layers}

    def _global_prune(self, layers, cycle: _Cycle) -> dict[str, int]:
        total_nnz = sum(cycle.nnz.values())
        n = min(total_nnz, math.ceil(cycle.rate * float(self.baseline_nonzero)))
        names = list(layers)
        scores = torch.cat([layers[name].weight.detach().abs().reshape(-1)[layers[name].mask.reshape(-1)].float().cpu()
                            for name in names])
        owner = torch.cat([torch.full((cycle.nnz[name],), i, dtype=torch.long) for i, name in enumerate(names)])
        order = torch.argsort(scores, stable=True)[:n]
        chosen_owner = owner[order]
        offsets = [0]
        for name in names:
            offsets.append(offsets[-1] + cycle.nnz[name])
        counts = {}
        for i, name in enumerate(names):
            layer = layers[name]
            positions = order[chosen_owner == i] - offsets[i]
            active = layer.mask.reshape(-1).nonzero().squeeze(1).cpu()
            flat = torch.zeros(layer.capacity, dtype=torch.bool)
            flat[active[positions]] = True
            cycle.prune_masks[name] = flat.view(layer.shape).to(layer.weight.device)
            counts[name] = int(positions.numel())
        return counts

    @hookimpl
    def select_prune(self, layer, n: int) -> torch.Tensor:
        """The ``n`` active weights of smallest ``|w|`` (the global choice for ``global_magnitude``)."""
        cycle = self._cycle
        if cycle is not None and layer.name in cycle.prune_masks:
            chosen = cycle.prune_masks[layer.name]
            if int(chosen.sum()) == n:
                return chosen
        return selection.smallest(layer.weight.detach().abs(), layer.mask, n)

    @hookimpl
    def redistribute(self, sparsifier, layers, removed: Mapping[str, int]) -> dict[str, int]:
        """Regrowth per layer: the residual loop, ``floor``-ed and clamped to ``[0, free slots]``.

        The reference lets a layer's growth exceed its free slots (the extra
        picks land on active weights and do nothing) and would grow almost the
        whole layer for a negative count; here both are clamped, which yields
        the same masks in the first case.
        """
        cycle = self._cycle
        if cycle is None:  # another plugin answered prune_counts: statistics of the pruned masks
            cycle = self._gather(sparsifier, layers, 0.0)
            self._cycle = cycle
        total_removed = float(sum(removed.values()))
        regrowth = growth_redistribution(cycle.shares, cycle.nnz, cycle.zeros, cycle.prune_rates,
                                         total_removed, self.adjusted_growth)
        if self.prune == "global_magnitude":
            for name in regrowth:
                expected = float(self.baseline_nonzero) * cycle.prune_rates[name]
                regrowth[name] = 0.0 if expected == 0.0 else math.floor(total_removed / expected * regrowth[name])
        counts = {}
        for name, layer in layers.items():
            free = layer.capacity - layer.nnz
            counts[name] = max(0, min(free, math.floor(regrowth[name])))
        if self.growth == "momentum_neuron":
            for name, layer in layers.items():
                chosen = self._neuron_growth(sparsifier, layer, counts[name])
                cycle.grow_masks[name] = chosen
                counts[name] = int(chosen.sum())
        return counts

    def _neuron_growth(self, sparsifier, layer, n: int) -> torch.Tensor:
        """The reference's ``momentum_neuron_growth``: budget per output neuron by its mean |momentum|.

        Neuron ``i`` gets ``k_i = min(floor(v_i * n), free_i)`` with ``v_i`` its
        share of mean ``|momentum|``; neurons with ``k_i < 10`` grow nothing;
        otherwise the inactive weights whose ``|momentum|`` is strictly above
        the ``k_i``-th largest score of the row grow (active weights score 0).
        """
        inactive = ~layer.mask
        magnitude = self._momentum(sparsifier, layer).abs().float()
        chosen = torch.zeros_like(layer.mask)
        if n <= 0 or magnitude.dim() < 2:
            return chosen
        dims = list(range(1, magnitude.dim()))
        per_neuron = magnitude.mean(dims)
        total = float(per_neuron.sum())
        if not total > 0:
            return chosen
        shares = per_neuron / total
        slots = inactive.sum(dims)
        score = magnitude * inactive
        for i in range(magnitude.shape[0]):
            k = min(math.floor(float(shares[i]) * n), int(slots[i]))
            if k < 10:
                continue
            threshold = float(torch.sort(score[i].reshape(-1)).values[-k])
            if threshold == 0.0:
                continue
            chosen[i] = inactive[i] & (score[i] > threshold)
        return chosen

    @hookimpl
    def select_grow(self, sparsifier, layer, n: int) -> torch.Tensor:
        """The ``n`` inactive weights of largest ``|momentum|`` (ties by position), or random ones."""
        if self.growth == "random":
            return selection.random_choice(~layer.mask, n, sparsifier.generator)
        cycle = self._cycle
        if self.growth == "momentum_neuron" and cycle is not None and layer.name in cycle.grow_masks:
            chosen = cycle.grow_masks[layer.name]
            if int(chosen.sum()) == n:
                return chosen
        return selection.largest(self._momentum(sparsifier, layer).abs(), ~layer.mask, n)

    @hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        """Drift correction: ``adjusted_growth = 0.25 a + 0.75 (B - nnz) + mean(adjustments)``."""
        if report.reason != "update":
            return
        self._cycle = None
        total = sum(update.nnz for update in report.layers.values())
        gap = float(self.baseline_nonzero) - total
        self.adjustments.append(gap)
        self.adjusted_growth = 0.25 * self.adjusted_growth + 0.75 * gap + sum(self.adjustments) / len(self.adjustments)

    # ------------------------------------------------------------------
    # checkpointing
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The drift-correction state: ``baseline_nonzero``, ``adjusted_growth``, ``adjustments``."""
        return {"baseline_nonzero": self.baseline_nonzero, "adjusted_growth": float(self.adjusted_growth),
                "adjustments": [float(a) for a in self.adjustments]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        baseline = state["baseline_nonzero"]
        self.baseline_nonzero = None if baseline is None else float(baseline)
        self.adjusted_growth = float(state["adjusted_growth"])
        self.adjustments = [float(a) for a in state["adjustments"]]

    def __repr__(self) -> str:
        return (f"SparseMomentum(prune_rate={self.prune_rate}, eta_min={self.eta_min}, decay={self.decay!r}, "
                f"redistribution={self.redistribution!r}, growth={self.growth!r}, prune={self.prune!r}, "
                f"update_every={self.update_every!r}, init={self.init!r})")
