"""snip-public's evaluation protocol: the best test accuracy over the checkpoints its saver keeps.

snip-public's ``train.py`` saves a checkpoint after every ``save_interval``
(1,000) iterations with a ``tf.train.Saver()``, which keeps the last five;
``test.py`` evaluates every kept checkpoint on the test set and reports
``Error = 1 - max(accuracy)``. :class:`RetainedCheckpoints` follows the same
bookkeeping for a run that evaluates the test set at those iterations.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["OFFICIAL_CHECKPOINTS_KEPT", "OFFICIAL_CHECKPOINT_INTERVAL", "RetainedCheckpoints"]

#: Iterations between snip-public's checkpoints (``--save_interval``).
OFFICIAL_CHECKPOINT_INTERVAL = 1000
#: Checkpoints a ``tf.train.Saver()`` keeps (its ``max_to_keep``).
OFFICIAL_CHECKPOINTS_KEPT = 5


@dataclass
class RetainedCheckpoints:
    """Test accuracies of the last ``keep`` checkpoints, taken every ``interval`` iterations.

    Example:
        ```python
        kept = RetainedCheckpoints()
        for step in range(1, total_steps + 1):
            train_one_step()
            if kept.due(step):
                kept.record(step, test_accuracy(model))
        print(kept.error)          # 1 - the best of the last five checkpoints
        ```

    Args:
        interval: iterations between checkpoints (a checkpoint follows
            iteration ``step`` when ``step % interval == 0``, steps counted from 1).
        keep: how many of the latest checkpoints are kept.

    Raises:
        ValueError: ``interval`` or ``keep`` is not a positive integer.
    """

    interval: int = OFFICIAL_CHECKPOINT_INTERVAL
    keep: int = OFFICIAL_CHECKPOINTS_KEPT
    _kept: deque[tuple[int, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("interval", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self._kept = deque(maxlen=self.keep)

    def due(self, step: int) -> bool:
        """Whether a checkpoint follows optimizer step ``step`` (counted from 1)."""
        return step > 0 and step % self.interval == 0

    def record(self, step: int, accuracy: float) -> None:
        """Record the test accuracy (a fraction in [0, 1]) of the checkpoint after ``step``.

        Raises:
            ValueError: ``step`` is not a checkpoint step, does not follow the
                last recorded one, or ``accuracy`` is outside [0, 1].
        """
        if not self.due(step):
            raise ValueError(f"step {step} is not a checkpoint step (every {self.interval} iterations)")
        if self._kept and step <= self._kept[-1][0]:
            raise ValueError(f"checkpoint step {step} does not follow the last one, {self._kept[-1][0]}")
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
        self._kept.append((step, float(accuracy)))

    @property
    def kept(self) -> list[tuple[int, float]]:
        """The retained checkpoints as ``(step, accuracy)``, oldest first."""
        return list(self._kept)

    @property
    def error(self) -> float:
        """``1 - max(accuracy)`` over the retained checkpoints (snip-public's reported error).

        Raises:
            ValueError: no checkpoint was recorded (the run was shorter than ``interval``).
        """
        if not self._kept:
            raise ValueError(f"no checkpoint was recorded: the run needs at least {self.interval} iterations")
        return 1.0 - max(accuracy for _, accuracy in self._kept)
