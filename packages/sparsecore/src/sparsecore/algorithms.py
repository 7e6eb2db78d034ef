"""Algorithms built into the core: ``static`` and ``set``.

``set`` relies on the built-in defaults for its selection (magnitude prune,
random growth, no redistribution) and only adds the schedule, so it doubles as
the reference for writing an algorithm.
"""

from __future__ import annotations

from typing import Callable

from sparsecore.errors import ConfigurationError
from sparsecore.hookspecs import hookimpl
from sparsecore.policy import MaskingPolicy
from sparsecore.schedules import make_decay


class StaticAlgorithm:
    """A fixed random mask at the chosen distribution; the topology never changes.

    Weights, gradients and optimizer state of inactive weights are masked.
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
        prune_rate: initial fraction of active weights replaced per update.
        decay: ``"cosine"`` (default), ``"linear"`` or ``"constant"``.
        eta_min: the rate reached at the end of the decay.
        update_every: ``"epoch"`` (after every epoch except the last) or a
            number of optimizer steps.
        update_end: fraction of ``total_steps`` after which the topology stays
            fixed (step-based updates; RigL uses 0.75).
    """

    name = "set"

    def __init__(self, prune_rate: float = 0.3, decay: str = "cosine", eta_min: float = 0.0,
                 update_every: int | str = "epoch", update_end: float = 1.0) -> None:
        if not 0.0 < float(prune_rate) <= 1.0:
            raise ConfigurationError(f"set: prune_rate must be in (0, 1], got {prune_rate!r}")
        if update_every != "epoch" and not (isinstance(update_every, int) and update_every > 0):
            raise ConfigurationError(f"set: update_every must be 'epoch' or a positive int, got {update_every!r}")
        if not 0.0 < float(update_end) <= 1.0:
            raise ConfigurationError(f"set: update_end must be in (0, 1], got {update_end!r}")
        self.prune_rate = float(prune_rate)
        self.decay = decay
        self.eta_min = float(eta_min)
        self.update_every = update_every
        self.update_end = float(update_end)
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
        """Step-scheduled updates."""
        if self.update_every == "epoch" or step % self.update_every:
            return
        if sparsifier.total_steps is not None and step > self.update_end * sparsifier.total_steps:
            return
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
