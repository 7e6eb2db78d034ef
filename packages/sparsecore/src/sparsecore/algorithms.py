"""Algorithms built into the core: ``static`` and ``set``.

``set`` relies on the built-in defaults for its selection (magnitude prune,
random growth, no redistribution) and only adds the schedule, so it doubles as
the reference for writing an algorithm.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

from sparsecore.errors import ConfigurationError
from sparsecore.hookspecs import hookimpl
from sparsecore.policy import MaskingPolicy
from sparsecore.schedules import make_decay


DECAYS = ("cosine", "linear", "constant")


def _number(algorithm: str, option: str, value: Any, low: float, high: float, low_open: bool) -> float:
    """``value`` as a float in ``(low, high]`` (``low_open``) or ``[low, high]``; else a ConfigurationError."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{algorithm}: {option} must be a number in {interval}, got {value!r}")
    number = float(value)
    if not (low < number <= high if low_open else low <= number <= high):
        raise ConfigurationError(f"{algorithm}: {option} must be a number in {interval}, got {value!r}")
    return number


class StaticAlgorithm:
    """A fixed random mask at the chosen distribution; the topology never changes.

    Weights, gradients and optimizer state of inactive weights are masked. It
    takes no options: any option is rejected by name when the run is built.
    """

    name = "static"

    @hookimpl
    def masking_policy(self) -> MaskingPolicy:
        """Fully masked training."""
        return MaskingPolicy()


class SetAlgorithm:
    """Sparse Evolutionary Training (Mocanu et al. 2018), as RigL's SET baseline.

    Every update removes ``floor(rate * nnz)`` active weights of smallest
    magnitude per layer and regrows as many at random inactive positions, with
    value 0 and zero optimizer state. The rate decays from ``prune_rate`` by
    ``decay`` over training.

    Args:
        prune_rate: initial fraction of active weights replaced per update, in (0, 1].
        decay: ``"cosine"`` (default), ``"linear"`` or ``"constant"``.
        eta_min: the rate reached at the end of the decay, in [0, prune_rate].
        update_every: ``"epoch"`` (after every epoch except the last) or a
            positive int number of optimizer steps (never at or after the
            run's final step, whose regrown weights would stay untrained).
        update_end: fraction of ``total_steps`` in (0, 1] after which the
            topology stays fixed (step-based updates; RigL uses 0.75).

    Raises:
        ConfigurationError: an option of the wrong type or out of range,
            naming ``set`` and the option.
    """

    name = "set"

    def __init__(self, prune_rate: float = 0.3, decay: str = "cosine", eta_min: float = 0.0,
                 update_every: int | str = "epoch", update_end: float = 1.0) -> None:
        self.prune_rate = _number("set", "prune_rate", prune_rate, 0.0, 1.0, low_open=True)
        self.eta_min = _number("set", "eta_min", eta_min, 0.0, 1.0, low_open=False)
        if self.eta_min > self.prune_rate:
            raise ConfigurationError(f"set: eta_min ({eta_min!r}) must not exceed prune_rate ({prune_rate!r}); "
                                     "the rate decays from prune_rate to eta_min")
        if decay not in DECAYS:
            raise ConfigurationError(f"set: decay must be one of {', '.join(map(repr, DECAYS))}, got {decay!r}")
        if update_every != "epoch" and (isinstance(update_every, bool) or not isinstance(update_every, numbers.Integral)
                                        or update_every <= 0):
            raise ConfigurationError(f"set: update_every must be 'epoch' or a positive int, got {update_every!r}")
        self.update_end = _number("set", "update_end", update_end, 0.0, 1.0, low_open=True)
        self.decay = decay
        self.update_every = update_every if update_every == "epoch" else int(update_every)
        self._schedule: Callable[[int], float] | None = None

    def rate(self, step: int) -> float:
        """The prune rate after ``step`` optimizer steps."""
        assert self._schedule is not None, "rate() is available once the sparsifier is set up"
        return self._schedule(step)

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Build the decay schedule over the run's ``total_steps``."""
        try:
            span = None if sparsifier.total_steps is None else int(sparsifier.total_steps * self.update_end)
            self._schedule = make_decay(self.decay, self.prune_rate, span, self.eta_min)
        except ValueError as exc:
            raise ConfigurationError(f"set: {exc}") from None

    @hookimpl
    def on_step(self, sparsifier, step: int) -> None:
        """Step-scheduled updates: every ``update_every`` steps up to ``update_end``, never at the final step."""
        if self.update_every == "epoch" or step % self.update_every:
            return
        total = sparsifier.total_steps
        if total is not None and (step >= total or step > self.update_end * total):
            return  # weights grown at (or after) the last step would never be trained
        sparsifier.update_topology(self.rate(step))

    @hookimpl
    def on_epoch_end(self, sparsifier, epoch: int) -> None:
        """Epoch-scheduled updates: after every epoch except the last."""
        if self.update_every == "epoch" and not sparsifier.is_final_epoch(epoch):
            sparsifier.update_topology(self.rate(sparsifier.step))


@hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register the core's algorithms."""
    register("static", StaticAlgorithm)
    register("set", SetAlgorithm)
