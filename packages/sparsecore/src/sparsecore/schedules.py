"""Prune-rate schedules stepped once per optimizer step.

``CosineDecay`` is sparse momentum's and SET's/RigL's decay:
``p(t) = eta_min + (p0 - eta_min) * (1 + cos(pi * t / T)) / 2`` for ``t <= T``
and ``eta_min`` after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
    """Linear decay from ``initial`` to ``eta_min`` over ``total_steps`` steps."""

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
    """A constant prune rate."""

    initial: float

    def __call__(self, step: int) -> float:
        """Always ``initial``."""
        return self.initial


def make_decay(kind: str, initial: float, total_steps: int | None, eta_min: float = 0.0):
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
