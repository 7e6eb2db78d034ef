"""The ``sparse-momentum`` algorithm: SNFS through sparsecore's hooks.

The engine's :class:`~sparsecore.UpdateSchedule` runs the updates (after every
epoch but the last, or every ``k`` steps, with the cosine-decayed prune rate).
One topology update (the reference's ``truncate_weights``) maps onto the
engine's cycle like this:

* ``plan_update``: gather the per-layer statistics on the masks *before*
  pruning (redistribution share, active and inactive counts), cap the prune
  rate of dense growing layers, prune ``ceil(p_l * nnz_l)`` per layer (or,
  with ``prune="global_magnitude"``, the smallest ``|w|`` over all layers
  together), and fix each layer's regrowth with the residual loop of
  :func:`growth_redistribution` and the drift correction, rounded down as the
  reference does;
* ``select_prune``: the engine's default, the smallest ``|w|`` among active weights;
* ``select_grow``: the inactive weights of largest ``|momentum|`` (random
  growth is the engine's default; the reference's per-neuron variant is
  chosen in the plan);
* ``on_topology_update``: update the drift correction ``adjusted_growth``
  from the new total of active weights.

In an N:M run (``pattern="N:M"``) every layer's count is fixed by the
pattern, so nothing is redistributed: ``plan_update`` prunes
``ceil(rate * nnz_l)`` of each layer's smallest ``|w|`` (or, with
``prune="global_magnitude"``, the smallest over all layers) and each layer
regrows exactly as many, by ``|momentum|`` within the groups that lost
weights, so every group keeps exactly N.

Differences from the reference code, all forced by exact counts or guarding
its crashes, are listed in the package README.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparse_momentum.redistribution import adjust_prune_rates, growth_redistribution, layer_shares
from sparsecore import Algorithm, ConfigurationError, MaskingPolicy, UpdatePlan, UpdateSchedule, hookimpl, selection
from sparsecore.distributed import full_tensor
from sparsecore.optim_state import require_momentum
from sparsecore.selection import NMPattern

#: Statistics by which removed weights are redistributed across layers.
REDISTRIBUTION_MODES = ("momentum", "magnitude", "nonzero", "none")
#: How the weights to activate are chosen inside a layer.
GROWTH_MODES = ("momentum", "random", "momentum_neuron")
#: How the weights to remove are chosen.
PRUNE_MODES = ("magnitude", "global_magnitude")
#: Initial masks: the engine's exact-count random masks or the reference's Bernoulli draw.
INIT_MODES = ("exact", "bernoulli")

_ALIASES = {"nonzeros": "nonzero"}


@dataclass(frozen=True)
class _Cycle:
    """Numbers of one topology update, gathered before pruning."""

    rate: float
    nnz: dict[str, int]
    zeros: dict[str, int]
    shares: dict[str, float]
    prune_rates: dict[str, float]


class SparseMomentumAlgorithm(Algorithm):
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

    **N:M runs** (``pattern="N:M"``): redistribution across layers cannot
    apply, since every layer holds exactly N of every M weights. Each update
    prunes ``ceil(rate * nnz_l)`` of the smallest ``|w|`` per layer (or over
    all layers with ``prune="global_magnitude"``) and every layer regrows
    exactly what it lost, by ``|momentum|`` (or at random) within the groups
    that lost weights; the ``redistribution`` option and the drift
    correction have nothing to do. ``growth="momentum_neuron"`` and
    ``init="bernoulli"`` are refused.

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
            ``"none"`` (share proportional to the layer's size; ``None`` means
            the same, so ``--option redistribution=none`` works on the command line).
        growth: ``"momentum"`` (default), ``"random"`` or ``"momentum_neuron"``.
        prune: ``"magnitude"`` (per layer, default) or ``"global_magnitude"``.
        update_every: ``"epoch"`` (after every epoch except the last) or a
            positive number ``k`` of optimizer steps (after every ``k``-th
            step before ``total_steps``; none at the last step).
        init: ``"exact"`` (the engine's masks with exactly
            ``round(d * n)`` active weights per layer, default) or
            ``"bernoulli"`` (each weight active with probability ``d``, as the
            reference).
        warmup_steps: a deviation from the paper and the reference code, off
            (``0``) by default: after every topology update the learning rate
            ramps linearly back to its scheduled value over this many
            optimizer steps (factor ``i / warmup_steps`` on the ``i``-th step
            after the update, through ``sparsifier.lr_factor``), so the first
            steps after the network lost and gained thousands of weights do
            not run at full rate. It keeps LeNet-5-Caffe at 5 % from collapsing after
            the second update, where the faithful algorithm does on some seeds
            (``benchmarks/results/sparse_momentum_lenet5.md``).

    Raises:
        ConfigurationError: an unknown mode or an out-of-range number; at
            set-up, a sparsifier without ``total_steps`` or an optimizer without
            momentum when growth or redistribution read it.
    """

    name = "sparse-momentum"
    sets_initial_density = True  # init="bernoulli" draws every weight; init="exact" leaves the masks to the engine
    masking_policy = MaskingPolicy(mask_weights=True, mask_gradients=False, mask_optimizer_state=False,
                                   reset_grown_state=False)
    patterns = ("unstructured", "block", "n:m")
    schedule: UpdateSchedule  # always set: updates follow the prune-rate schedule

    def __init__(self, prune_rate: float = 0.5, eta_min: float = 0.005, decay: str = "cosine",
                 redistribution: str | None = "momentum", growth: str = "momentum", prune: str = "magnitude",
                 update_every: int | str = "epoch", init: str = "exact", warmup_steps: int = 0) -> None:
        redistribution = "none" if redistribution is None else _ALIASES.get(redistribution, redistribution)
        for option, value, allowed in (("redistribution", redistribution, REDISTRIBUTION_MODES),
                                       ("growth", growth, GROWTH_MODES), ("prune", prune, PRUNE_MODES),
                                       ("init", init, INIT_MODES)):
            if value not in allowed:
                raise ConfigurationError(f"sparse-momentum: unknown {option} {value!r}; choose one of {list(allowed)}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigurationError(f"sparse-momentum: warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.schedule = UpdateSchedule(prune_rate, decay, eta_min, update_every, owner=self.name)
        self.prune_rate = self.schedule.prune_rate
        self.eta_min = self.schedule.eta_min
        self.decay = decay
        self.update_every = self.schedule.update_every
        self.redistribution = redistribution
        self.growth = growth
        self.prune = prune
        self.init = init
        self.warmup_steps = warmup_steps
        #: Optimizer steps completed when the last topology update ran (``None`` before the first).
        self.last_update_step: int | None = None
        #: Target number of active weights, ``sum(target_density * numel)`` (set at setup).
        self.baseline_nonzero: float | None = None
        #: Drift correction added to the weights regrown in the next cycle.
        self.adjusted_growth: float = 0.0
        #: ``baseline_nonzero - nnz`` after every cycle so far.
        self.adjustments: list[float] = []

    # ------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------
    @hookimpl
    def init_masks(self, sparsifier, layers) -> dict[str, torch.Tensor] | None:
        """With ``init="bernoulli"``: each weight active with probability ``target_density``."""
        if self.init != "bernoulli":
            return None
        if sparsifier.block is not None:
            raise ConfigurationError("sparse-momentum: init='bernoulli' draws single weights; block-sparse runs "
                                     "need init='exact'")
        if isinstance(sparsifier.pattern, NMPattern):
            raise ConfigurationError(f"sparse-momentum: init='bernoulli' draws single weights; a pattern="
                                     f"{str(sparsifier.pattern)!r} run needs init='exact'")
        gen = sparsifier.generator
        return {name: (torch.rand(layer.shape, generator=gen, device=gen.device) < layer.target_density)
                .to(layer.weight.device) for name, layer in layers.items()}

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Check the run, fix the target count, reset the drift state.

        Raises:
            ConfigurationError: the sparsifier has no ``total_steps``, the
                optimizer has no momentum while growth or redistribution need
                it, or per-neuron growth in a block-sparse run.
        """
        if sparsifier.total_steps is None:
            raise ConfigurationError(
                "sparse-momentum needs total_steps (steps_per_epoch * epochs): it skips the topology update "
                "after the final epoch, which it can only recognise from total_steps, and its prune-rate "
                "schedule runs over total_steps; pass total_steps= to the Sparsifier")
        if self.growth == "momentum_neuron" and sparsifier.block is not None:
            raise ConfigurationError("sparse-momentum: growth='momentum_neuron' chooses single weights per neuron; "
                                     "block-sparse runs need growth='momentum' or 'random'")
        if self.growth == "momentum_neuron" and isinstance(sparsifier.pattern, NMPattern):
            raise ConfigurationError(f"sparse-momentum: growth='momentum_neuron' does not keep N per group; a "
                                     f"pattern={str(sparsifier.pattern)!r} run needs growth='momentum' or 'random'")
        if self._needs_momentum():
            require_momentum(sparsifier.optimizer, "sparse-momentum",
                             "growth/redistribution by momentum need it (or choose growth='random' and "
                             "redistribution other than 'momentum')")
        self.baseline_nonzero = float(sum(layer.target_density * layer.capacity
                                          for layer in sparsifier.layers.values()))
        self.adjusted_growth = 0.0
        self.adjustments = []
        self.last_update_step = None

    def _baseline(self) -> float:
        if self.baseline_nonzero is None:
            raise RuntimeError("sparse-momentum: no baseline_nonzero before set-up (attach a Sparsifier first)")
        return self.baseline_nonzero

    def _needs_momentum(self) -> bool:
        return self.redistribution == "momentum" or self.growth in ("momentum", "momentum_neuron")

    def rate(self, step: int) -> float:
        """The prune rate after ``step`` optimizer steps."""
        return self.schedule.rate(step)

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
        elif self.redistribution == "magnitude":  # the whole weight: an FSDP2 weight is a DTensor shard
            values = full_tensor(layer.weight.detach()).abs()[mask]
        elif self.redistribution == "nonzero":
            return float((full_tensor(layer.weight.detach()) != 0).sum())
        else:  # "none": the share is the layer's size
            return layer.capacity / self._baseline()
        return float(values.float().mean()) if values.numel() else float("nan")

    def _gather(self, sparsifier, layers, rate: float) -> _Cycle:
        nnz = {name: layer.nnz for name, layer in layers.items()}
        zeros = {name: layer.capacity - nnz[name] for name, layer in layers.items()}
        shares = layer_shares({name: self._statistic(sparsifier, layer) for name, layer in layers.items()})
        rates = adjust_prune_rates(rate, shares, zeros, {n: layer.capacity for n, layer in layers.items()})
        return _Cycle(rate, nnz, zeros, shares, rates)

    # ------------------------------------------------------------------
    # topology update
    # ------------------------------------------------------------------
    @hookimpl
    def plan_update(self, sparsifier, layers, update) -> UpdatePlan:
        """The whole update from statistics of the unpruned masks: prune counts (or selections) and regrowth.

        Per layer ``ceil(p_l * nnz_l)`` weights are pruned (whole blocks in a
        block-sparse run); with ``prune="global_magnitude"`` the
        ``ceil(rate * baseline_nonzero)`` smallest ``|w|`` over all layers.
        Regrowth is the residual loop, ``floor``-ed and clamped to each
        layer's free slots after pruning. The reference lets a layer's growth
        exceed its free slots (the extra picks land on active weights and do
        nothing) and would grow almost the whole layer for a negative count;
        here both are clamped, which yields the same masks in the first case.
        """
        if isinstance(sparsifier.pattern, NMPattern):
            return self._nm_plan(sparsifier, layers, update.rate)
        cycle = self._gather(sparsifier, layers, update.rate)
        prune: dict[str, Any]
        if self.prune == "global_magnitude":
            block_size = next(iter(layers.values())).block_size
            n = min(sum(cycle.nnz.values()), math.ceil(cycle.rate * self._baseline() / block_size)
                    * block_size)
            prune = selection.global_smallest({k: layer.weight.detach().abs() for k, layer in layers.items()},
                                              {k: layer.mask for k, layer in layers.items()}, n, sparsifier.block)
            counts = {name: int(chosen.sum()) for name, chosen in prune.items()}
        else:
            counts = {name: min(cycle.nnz[name], _whole_blocks(math.ceil, cycle.prune_rates[name] * cycle.nnz[name],
                                                               layer.block_size))
                      for name, layer in layers.items()}
            prune = dict(counts)
        total_removed = float(sum(counts.values()))
        regrowth = growth_redistribution(cycle.shares, cycle.nnz, cycle.zeros, cycle.prune_rates,
                                         total_removed, self.adjusted_growth)
        if self.prune == "global_magnitude":
            for name in regrowth:
                expected = self._baseline() * cycle.prune_rates[name]
                regrowth[name] = 0.0 if expected == 0.0 else math.floor(total_removed / expected * regrowth[name])
        grow: dict[str, Any] = {}
        for name, layer in layers.items():
            free = cycle.zeros[name] + counts[name]
            grow[name] = max(0, min(free, _whole_blocks(math.floor, regrowth[name], layer.block_size)))
        if self.growth == "momentum_neuron":
            for name, layer in layers.items():
                chosen = prune[name] if torch.is_tensor(prune[name]) else \
                    selection.smallest(layer.weight.detach().abs(), layer.mask, counts[name])
                prune[name] = chosen
                grow[name] = self._neuron_growth(sparsifier, layer, layer.mask & ~chosen, grow[name])
        return UpdatePlan(prune=prune, grow=grow)

    def _nm_plan(self, sparsifier, layers, rate: float) -> UpdatePlan:
        """N:M: prune ``ceil(rate * nnz_l)`` smallest ``|w|`` per layer (or over all layers), regrow as many per layer.

        The counts are fixed by the pattern, so nothing is redistributed; the
        engine's N:M rules make ``select_grow`` refill the groups that lost
        weights (``selection.largest`` with ``layer.pattern``).
        """
        nnz = {name: layer.nnz for name, layer in layers.items()}
        prune: dict[str, Any]
        if self.prune == "global_magnitude":
            total = sum(nnz.values())
            prune = selection.global_smallest({k: layer.weight.detach().abs() for k, layer in layers.items()},
                                              {k: layer.mask for k, layer in layers.items()},
                                              min(total, math.ceil(rate * total)), sparsifier.pattern)
            grow = {name: int(chosen.sum()) for name, chosen in prune.items()}
        else:
            prune = {name: min(count, math.ceil(rate * count)) for name, count in nnz.items()}
            grow = dict(prune)
        return UpdatePlan(prune=prune, grow=grow)

    def _neuron_growth(self, sparsifier, layer, mask: torch.Tensor, n: int) -> torch.Tensor:
        """The reference's ``momentum_neuron_growth``: budget per output neuron by its mean |momentum|.

        Neuron ``i`` gets ``k_i = min(floor(v_i * n), free_i)`` with ``v_i`` its
        share of mean ``|momentum|``; neurons with ``k_i < 10`` grow nothing;
        otherwise the inactive weights whose ``|momentum|`` is strictly above
        the ``k_i``-th largest score of the row grow (active weights score 0).
        ``mask`` is the layer's mask after pruning.
        """
        inactive = ~mask
        magnitude = self._momentum(sparsifier, layer).abs().float()
        chosen = torch.zeros_like(mask)
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
    def select_grow(self, sparsifier, layer, n: int) -> torch.Tensor | None:
        """The ``n`` inactive weights of largest ``|momentum|`` (ties by position; whole blocks, or per group in an
        N:M run); random growth is the default's."""
        if self.growth == "random":
            return None
        return selection.largest(self._momentum(sparsifier, layer).abs(), ~layer.mask, n, layer.pattern)

    @hookimpl
    def before_optimizer_step(self, sparsifier, step: int) -> None:
        """With ``warmup_steps``: the learning-rate factor of the coming step, ``min(1, i / warmup_steps)``."""
        if not self.warmup_steps or self.last_update_step is None:
            return
        since = step - self.last_update_step + 1  # the coming step is the since-th after the update
        sparsifier.lr_factor = min(1.0, since / self.warmup_steps)

    @hookimpl
    def on_topology_update(self, sparsifier, report) -> None:
        """Drift correction: ``adjusted_growth = 0.25 a + 0.75 (B - nnz) + mean(adjustments)``."""
        if report.reason != "update":
            return
        self.last_update_step = sparsifier.step
        total = sum(update.nnz for update in report.layers.values())
        gap = self._baseline() - total
        self.adjustments.append(gap)
        self.adjusted_growth = 0.25 * self.adjusted_growth + 0.75 * gap + sum(self.adjustments) / len(self.adjustments)

    # ------------------------------------------------------------------
    # checkpointing
    # ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Drift correction (``baseline_nonzero``, ``adjusted_growth``, ``adjustments``), ``last_update_step``."""
        return {"baseline_nonzero": self.baseline_nonzero, "adjusted_growth": float(self.adjusted_growth),
                "adjustments": [float(a) for a in self.adjustments], "last_update_step": self.last_update_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        baseline = state["baseline_nonzero"]
        self.baseline_nonzero = None if baseline is None else float(baseline)
        self.adjusted_growth = float(state["adjusted_growth"])
        self.adjustments = [float(a) for a in state["adjustments"]]
        self.last_update_step = state.get("last_update_step")  # absent in older checkpoints

    def __repr__(self) -> str:
        return (f"SparseMomentumAlgorithm(prune_rate={self.prune_rate}, eta_min={self.eta_min}, decay={self.decay!r}, "
                f"redistribution={self.redistribution!r}, growth={self.growth!r}, prune={self.prune!r}, "
                f"update_every={self.update_every!r}, init={self.init!r}, warmup_steps={self.warmup_steps})")


#: The name under which earlier releases exported the class.
SparseMomentum = SparseMomentumAlgorithm


def _whole_blocks(rounding, count: float, block_size: int) -> int:
    """``rounding(count)`` for element-wise layers; ``rounding`` in whole blocks otherwise."""
    if block_size == 1:
        return int(rounding(count))
    return int(rounding(count / block_size)) * block_size
