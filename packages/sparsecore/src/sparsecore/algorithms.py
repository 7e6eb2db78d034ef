"""Algorithms built into the core: ``static`` and ``set``.

``set`` relies on the built-in defaults for its selection (magnitude prune,
random growth, no redistribution) and on the engine's
:class:`~sparsecore.schedules.UpdateSchedule`, so it doubles as the reference
for writing an algorithm: it is only configuration.
"""

from __future__ import annotations

from sparsecore.algorithm import Algorithm
from sparsecore.hookspecs import hookimpl
from sparsecore.schedules import UpdateSchedule


class StaticAlgorithm(Algorithm):
    """A fixed random mask at the chosen distribution; the topology never changes.

    Weights, gradients and optimizer state of inactive weights are masked. It
    takes no options: any option is rejected by name when the run is built.
    With ``pattern="N:M"`` the mask holds N random weights in every group.
    """

    name = "static"
    patterns = ("unstructured", "block", "n:m")


class SetAlgorithm(Algorithm):
    """Sparse Evolutionary Training (Mocanu et al. 2018), as RigL's SET baseline.

    Every update removes ``floor(rate * nnz)`` active weights of smallest
    magnitude per layer and regrows as many at random inactive positions, with
    value 0 and zero optimizer state. The rate decays from ``prune_rate`` by
    ``decay`` over training. With ``pattern="N:M"`` the smallest active
    weights of the layer are removed and every group regrows, at random among
    its inactive positions, exactly what it lost, so it keeps N.

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
    patterns = ("unstructured", "block", "n:m")
    schedule: UpdateSchedule  # always set: SET updates on a schedule

    def __init__(self, prune_rate: float = 0.3, decay: str = "cosine", eta_min: float = 0.0,
                 update_every: int | str = "epoch", update_end: float = 1.0) -> None:
        self.schedule = UpdateSchedule(prune_rate, decay, eta_min, update_every, update_end, owner=self.name)
        self.prune_rate, self.decay, self.eta_min = self.schedule.prune_rate, decay, self.schedule.eta_min
        self.update_every, self.update_end = self.schedule.update_every, self.schedule.update_end

    def rate(self, step: int) -> float:
        """The prune rate after ``step`` optimizer steps."""
        return self.schedule.rate(step)


@hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register the core's algorithms."""
    register("static", StaticAlgorithm)
    register("set", SetAlgorithm)
