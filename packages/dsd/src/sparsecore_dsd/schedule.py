"""The DSD phase schedule: which phase (dense, sparse, re-dense) is in force at a step or an epoch.

A run has ``1 + 2 * iterations`` phases: ``dense``, then ``sparse`` and
``redense`` once per DSD iteration. The schedule counts either optimizer steps
or epochs; phase ``k`` ends once ``boundaries[k]`` units are complete (the last
phase runs to the end of training).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sparsecore import ConfigurationError

DENSE = "dense"
SPARSE = "sparse"
REDENSE = "redense"
STEP = "step"
EPOCH = "epoch"


def phase_names(iterations: int) -> tuple[str, ...]:
    """The phase sequence of a run with ``iterations`` sparse/re-dense cycles.

    Example:
        ``phase_names(2) == ("dense", "sparse", "redense", "sparse", "redense")``.
    """
    return (DENSE,) + (SPARSE, REDENSE) * iterations


@dataclass(frozen=True)
class PhaseSchedule:
    """Where each phase ends, in optimizer steps or in epochs.

    Attributes:
        unit: ``"step"`` or ``"epoch"``.
        boundaries: strictly increasing unit counts; phase ``k`` is in force for
            unit ``u`` (1-based: the ``u``-th step, or the epoch numbered
            ``u - 1`` by a loop counting from 0) when exactly ``k`` boundaries
            are smaller than ``u``. So with ``unit="epoch"`` and boundaries
            ``(10, 20)`` epochs 0-9 are dense, 10-19 sparse, 20+ re-dense.
        names: the name of every phase, ``len(boundaries) + 1`` of them.
    """

    unit: str
    boundaries: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.unit not in (STEP, EPOCH):
            raise ConfigurationError(f"dsd: schedule unit must be 'step' or 'epoch', got {self.unit!r}")
        if len(self.names) != len(self.boundaries) + 1:
            raise ConfigurationError(f"dsd: {len(self.names)} phases need {len(self.names) - 1} boundaries, "
                                     f"got {len(self.boundaries)}")
        previous = 0
        for b in self.boundaries:
            if not isinstance(b, int) or b <= previous:
                raise ConfigurationError(f"dsd: phase boundaries must be strictly increasing positive ints, "
                                         f"got {list(self.boundaries)} ({self.unit}s); every phase needs at least "
                                         f"one {self.unit}")
            previous = b

    @classmethod
    def from_fractions(cls, fractions: Sequence[float], total_steps: int, names: Sequence[str]) -> PhaseSchedule:
        """Step boundaries from phase lengths given as fractions of ``total_steps``.

        Args:
            fractions: one positive length per phase, summing to 1.
            total_steps: optimizer steps in the whole run.
            names: the phase names (``phase_names(iterations)``).

        Raises:
            ConfigurationError: wrong count, a non-positive fraction, a sum other
                than 1, or a phase shorter than one step after rounding.
        """
        fractions = _check_lengths("phases", fractions, len(names), float)
        total = math.fsum(fractions)
        if abs(total - 1.0) > 1e-6:
            raise ConfigurationError(f"dsd: phases {list(fractions)} must sum to 1 (fractions of total_steps), "
                                     f"they sum to {total:g}")
        cumulative, boundaries = 0.0, []
        for f in fractions[:-1]:
            cumulative += f
            boundaries.append(round(cumulative * total_steps))
        if boundaries and (boundaries[-1] >= total_steps or len(set(boundaries)) < len(boundaries)
                           or boundaries[0] <= 0):
            raise ConfigurationError(f"dsd: total_steps={total_steps} is too small for phases {list(fractions)}: "
                                     f"boundaries at steps {boundaries} leave a phase without steps")
        return cls(STEP, tuple(boundaries), tuple(names))

    @classmethod
    def from_epochs(cls, epochs: Sequence[int], names: Sequence[str]) -> PhaseSchedule:
        """Epoch boundaries from phase lengths in epochs.

        Args:
            epochs: one positive number of epochs per phase. The last phase
                lasts until training stops; its length is only checked to be
                positive.
            names: the phase names (``phase_names(iterations)``).
        """
        epochs = _check_lengths("phase_epochs", epochs, len(names), int)
        boundaries, cumulative = [], 0
        for e in epochs[:-1]:
            cumulative += e
            boundaries.append(cumulative)
        return cls(EPOCH, tuple(boundaries), tuple(names))

    def index_at_unit(self, unit: int) -> int:
        """Index of the phase in force during the ``unit``-th step or epoch (1-based)."""
        return bisect.bisect_left(self.boundaries, unit)

    def index_after(self, completed: int) -> int:
        """Index of the phase the next unit trains in, once ``completed`` units are done."""
        return self.index_at_unit(completed + 1)

    def index_at(self, step: int | None = None, epoch: int | None = None,
                 steps_per_epoch: int | None = None) -> int:
        """Index of the phase in force at an optimizer step or during an epoch.

        Args:
            step: the optimizer step, 1-based (the ``step`` that ``on_step`` receives).
            epoch: the epoch as a loop counting from 0 numbers it. For a
                step schedule, the phase of the epoch's last step.
            steps_per_epoch: needed to convert between steps and epochs when the
                query's unit differs from the schedule's.

        Raises:
            ValueError: neither or both of ``step`` and ``epoch``, or a
                conversion without ``steps_per_epoch``.
        """
        if (step is None) == (epoch is None):
            raise ValueError("give exactly one of step= and epoch=")
        if (step is not None and step < 1) or (epoch is not None and epoch < 0):
            raise ValueError(f"steps count from 1 and epochs from 0, got step={step}, epoch={epoch}")
        needs = (self.unit == STEP) == (step is None)
        if needs and not steps_per_epoch:
            raise ValueError(f"the schedule counts {self.unit}s; converting needs steps_per_epoch "
                             "(known to the sparsifier after its first epoch)")
        per_epoch = steps_per_epoch or 0  # nonzero whenever a conversion uses it (checked above)
        if step is not None:
            unit = step if self.unit == STEP else (step - 1) // per_epoch + 1
        else:
            assert epoch is not None  # exactly one of step and epoch (checked above)
            unit = (epoch + 1) * per_epoch if self.unit == STEP else epoch + 1
        return self.index_at_unit(unit)


def _check_lengths(what: str, values: Sequence, count: int, kind: type) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigurationError(f"dsd: {what} must be a sequence of {count} phase lengths, got {values!r}")
    if len(values) != count:
        raise ConfigurationError(f"dsd: {what} needs {count} phase lengths (dense, then sparse and redense per "
                                 f"iteration), got {len(values)}: {list(values)}")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
        if not ok or not v > 0:
            raise ConfigurationError(f"dsd: every entry of {what} must be a positive "
                                     f"{'number' if kind is float else 'integer'}, got {list(values)}")
        out.append(kind(v))
    return tuple(out)
