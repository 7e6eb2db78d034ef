"""Prune-rate decays and the update schedule shared by every dynamic algorithm.

``CosineDecay`` is sparse momentum's and SET's/RigL's decay:
``p(t) = eta_min + (p0 - eta_min) * (1 + cos(pi * t / T)) / 2`` for ``t <= T``
and ``eta_min`` after.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparsecore.errors import ConfigurationError


@dataclass(frozen=True)
class CosineDecay:
    """Cosine decay from ``initial`` to ``eta_min`` over ``total_steps`` steps.

    Attributes:
        initial: value at step 0.
        total_steps: step at which the minimum is reached.
        eta_min: value at and after ``total_steps``.
    """

    initial: float
    total_steps: int
    eta_min: float = 0.0

    def __call__(self, step: int) -> float:
        """The value after ``step`` optimizer steps."""
        if self.total_steps <= 0:
            return self.initial
        t = min(max(step, 0), self.total_steps)
        return self.eta_min + (self.initial - self.eta_min) * (1 + math.cos(math.pi * t / self.total_steps)) / 2


@dataclass(frozen=True)
class LinearDecay:
    """Linear decay from ``initial`` to ``eta_min`` over ``total_steps`` steps.

    Attributes:
        initial: value at step 0.
        total_steps: step at which the minimum is reached.
        eta_min: value at and after ``total_steps``.
    """

    initial: float
    total_steps: int
    eta_min: float = 0.0

    def __call__(self, step: int) -> float:
        """The value after ``step`` optimizer steps."""
        if self.total_steps <= 0:
            return self.initial
        t = min(max(step, 0), self.total_steps)
        return self.initial + (self.eta_min - self.initial) * t / self.total_steps


@dataclass(frozen=True)
class ConstantRate:
    """A constant prune rate.

    Attributes:
        initial: the rate at every step.
    """

    initial: float

    def __call__(self, step: int) -> float:
        """Always ``initial``."""
        return self.initial


def make_decay(kind: str, initial: float, total_steps: int | None,
               eta_min: float = 0.0) -> Callable[[int], float]:
    """Build a schedule by name: ``"cosine"``, ``"linear"`` or ``"constant"``.

    Raises:
        ValueError: an unknown name, or a decaying schedule without ``total_steps``.
    """
    if kind == "constant":
        return ConstantRate(initial)
    if kind not in ("cosine", "linear"):
        raise ValueError(f"unknown prune-rate decay {kind!r}; choose 'cosine', 'linear' or 'constant'")
    if not total_steps:
        raise ValueError(f"prune-rate decay {kind!r} needs total_steps (pass total_steps= to the Sparsifier)")
    cls = CosineDecay if kind == "cosine" else LinearDecay
    return cls(initial, int(total_steps), eta_min)


DECAYS = ("cosine", "linear", "constant")


def _rate_number(owner: str, option: str, value: Any, low: float, high: float, low_open: bool) -> float:
    """``value`` as a float in ``(low, high]`` (``low_open``) or ``[low, high]``; else a ConfigurationError."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ConfigurationError(f"{owner}: {option} must be a number in {interval}, got {value!r}")
    number = float(value)
    if not (low < number <= high if low_open else low <= number <= high):
        raise ConfigurationError(f"{owner}: {option} must be a number in {interval}, got {value!r}")
    return number


class UpdateSchedule:
    """When the topology changes and how much: the schedule every dynamic algorithm shares.

    The engine drives it: after every optimizer step it asks :meth:`due_after_step`,
    after every epoch :meth:`due_after_epoch`, and runs
    :meth:`Sparsifier.update_topology <sparsecore.Sparsifier.update_topology>`
    with :meth:`rate` when an update is due. An algorithm only sets its
    ``schedule`` attribute to one of these.

    Rules:

    * ``update_every="epoch"``: after every epoch except the run's last one
      (:meth:`Sparsifier.is_final_epoch <sparsecore.Sparsifier.is_final_epoch>`);
    * ``update_every=k``: after every ``k``-th optimizer step, up to
      ``update_end * total_steps``, and never at or after the run's final
      step (weights grown there would never be trained);
    * the prune rate decays from ``prune_rate`` to ``eta_min`` over
      ``update_end * total_steps`` steps (``"cosine"``: ``eta_min + (p0 -
      eta_min)(1 + cos(pi t / T)) / 2``; ``"linear"``; ``"constant"``).

    Args:
        prune_rate: fraction of active weights replaced at the first update, in (0, 1].
        decay: ``"cosine"`` (default), ``"linear"`` or ``"constant"``.
        eta_min: the rate reached at the end of the decay, in [0, prune_rate].
        update_every: ``"epoch"`` or a positive int number of optimizer steps.
        update_end: fraction of ``total_steps`` in (0, 1] after which the
            topology stays fixed (RigL: 0.75).
        owner: the algorithm's name, used in error messages.

    Raises:
        ConfigurationError: an option of the wrong type or out of range, naming
            ``owner`` and the option.
    """

    def __init__(self, prune_rate: float = 0.3, decay: str = "cosine", eta_min: float = 0.0,
                 update_every: int | str = "epoch", update_end: float = 1.0, *, owner: str = "schedule") -> None:
        self.owner = owner
        self.prune_rate = _rate_number(owner, "prune_rate", prune_rate, 0.0, 1.0, low_open=True)
        self.eta_min = _rate_number(owner, "eta_min", eta_min, 0.0, 1.0, low_open=False)
        if self.eta_min > self.prune_rate:
            raise ConfigurationError(f"{owner}: eta_min ({eta_min!r}) must not exceed prune_rate ({prune_rate!r}); "
                                     "the rate decays from prune_rate to eta_min")
        if decay not in DECAYS:
            raise ConfigurationError(f"{owner}: decay must be one of {', '.join(map(repr, DECAYS))}, got {decay!r}")
        if update_every != "epoch" and (isinstance(update_every, bool) or not isinstance(update_every, numbers.Integral)
                                        or update_every <= 0):
            raise ConfigurationError(f"{owner}: update_every must be 'epoch' or a positive int, got {update_every!r}")
        self.update_end = _rate_number(owner, "update_end", update_end, 0.0, 1.0, low_open=True)
        self.decay = decay
        self.update_every: int | str = update_every if update_every == "epoch" else int(update_every)
        self.total_steps: int | None = None
        self._decay: Callable[[int], float] = ConstantRate(self.prune_rate)

    def bind(self, total_steps: int | None) -> None:
        """Fix the run's length; the engine calls it once the run is accepted.

        Raises:
            ConfigurationError: a decaying schedule without ``total_steps``.
        """
        span = None if total_steps is None else int(total_steps * self.update_end)
        try:
            self._decay = make_decay(self.decay, self.prune_rate, span, self.eta_min)
        except ValueError as exc:
            raise ConfigurationError(f"{self.owner}: {exc}") from None
        self.total_steps = total_steps

    def rate(self, step: int) -> float:
        """The prune rate after ``step`` optimizer steps."""
        return self._decay(step)

    def due_after_step(self, step: int) -> bool:
        """Whether a step-scheduled update runs after optimizer step ``step`` (1 after the first)."""
        if self.update_every == "epoch" or step <= 0 or step % self.update_every:  # type: ignore[operator]
            return False
        total = self.total_steps
        return total is None or (step < total and step <= self.update_end * total)

    def due_after_epoch(self, final_epoch: bool) -> bool:
        """Whether an epoch-scheduled update runs after an epoch (never after the final one)."""
        return self.update_every == "epoch" and not final_epoch

    def config(self) -> dict[str, Any]:
        """The options, as stored in the sparsifier's checkpoint."""
        return {"prune_rate": self.prune_rate, "decay": self.decay, "eta_min": self.eta_min,
                "update_every": self.update_every, "update_end": self.update_end}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"UpdateSchedule({options})"
