"""The cubic sparsity schedule of gradual magnitude pruning, as pure functions of the optimizer step.

Zhu & Gupta (2017), section 3: between the pruning steps ``t0`` and
``t_end`` the sparsity rises as

    s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** power,   power = 3,

and the masks are recomputed at ``t0, t0 + dt, t0 + 2 dt, ...`` and at
``t_end``. Before ``t0`` the model is dense; from ``t_end`` on it keeps the
final sparsity. Here the schedule is written in densities (``d = 1 - s``), so
the density at ``t_end`` is the final density exactly, without a rounding
step through ``1 - (1 - d)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: How a density becomes a count of kept weights: ``rounding(density * numel / block) * block``.
ROUNDINGS: dict[str, Callable[[float], int]] = {"round": round, "floor": math.floor, "ceil": math.ceil}


def cubic_density(progress: float, initial: float, final: float, power: float = 3.0) -> float:
    """The scheduled density at ``progress`` (0 at the first pruning step, 1 at the last).

    ``final + (initial - final) * (1 - progress) ** power``, the paper's
    ``s_f + (s_i - s_f)(1 - p)^3`` in densities. ``progress`` is clamped to
    ``[0, 1]``; at 1 the result is ``final`` exactly.

    Args:
        progress: fraction of the pruning span done.
        initial: density at the first pruning step.
        final: density at the last pruning step.
        power: exponent of the decay (3 in the paper; 1 is linear).
    """
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** power


def kept_count(numel: int, density: float, block_size: int = 1, rounding: str = "round") -> int:
    """Weights a layer keeps at ``density``: ``rounding(density * numel / block_size) * block_size``.

    With ``rounding="round"`` this is the engine's ``SparseLayer.active_count``
    (Python's ``round``, half to even), so the final count equals a static
    run's at the same density. The result is clamped to ``[0, numel]``.

    Args:
        numel: weights of the layer.
        density: fraction to keep.
        block_size: weights per block (1 for element-wise layers).
        rounding: ``"round"``, ``"floor"`` or ``"ceil"``.
    """
    blocks = numel // block_size
    kept = int(ROUNDINGS[rounding](density * numel / block_size))
    return min(max(kept, 0), blocks) * block_size


@dataclass(frozen=True)
class PruningSchedule:
    """When masks are recomputed and how far the cubic ramp has gone, in optimizer steps.

    Step ``t`` means "after ``t`` optimizer steps" (the ``step`` of the
    engine's ``on_step``; 0 is set-up, before the first step). Pruning steps
    are ``start_step + k * update_every`` below ``end_step``, and
    ``end_step`` itself, so the final density is always reached at
    ``end_step`` even when the span is not a multiple of ``update_every``.

    Attributes:
        start_step: the first pruning step ``t0``.
        end_step: the last pruning step ``t_end`` (``>= start_step``).
        update_every: steps between pruning steps, ``dt``.
        power: exponent of the ramp (3: cubic).
    """

    start_step: int
    end_step: int
    update_every: int
    power: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.start_step <= self.end_step:
            raise ValueError(f"pruning steps must satisfy 0 <= start_step <= end_step, got start_step="
                             f"{self.start_step}, end_step={self.end_step}")
        if self.update_every <= 0:
            raise ValueError(f"update_every must be positive, got {self.update_every}")

    def is_pruning_step(self, step: int) -> bool:
        """Whether the masks are recomputed after optimizer step ``step``."""
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.update_every == 0

    def last_pruning_step(self, step: int) -> int | None:
        """The latest pruning step at or before ``step``; ``None`` before ``start_step``."""
        if step < self.start_step:
            return None
        if step >= self.end_step:
            return self.end_step
        return self.start_step + (step - self.start_step) // self.update_every * self.update_every

    def pruning_steps(self) -> list[int]:
        """Every pruning step, in order."""
        steps = list(range(self.start_step, self.end_step, self.update_every))
        return [*steps, self.end_step]

    def progress(self, step: int) -> float:
        """``(step - t0) / (t_end - t0)`` clamped to ``[0, 1]`` (1 when ``t_end == t0`` and ``step >= t0``)."""
        if step < self.start_step:
            return 0.0
        span = self.end_step - self.start_step
        return 1.0 if span == 0 else min(1.0, (step - self.start_step) / span)

    def density(self, step: int, initial: float, final: float) -> float:
        """Density in force after ``step``: 1 before ``t0``, then the ramp's value at the last pruning step.

        Between pruning steps the density stays at the previous pruning
        step's value (masks change only on pruning steps).

        Args:
            step: optimizer steps done.
            initial: density at ``t0`` (``1 - s_i``).
            final: density from ``t_end`` on (``1 - s_f``).
        """
        last = self.last_pruning_step(step)
        if last is None:
            return 1.0
        return cubic_density(self.progress(last), initial, final, self.power)
