"""A learning-rate factor applied only while the optimizer steps.

DSD retrains the re-dense phase at a fraction of the sparse phase's learning
rate. Writing the scaled rate into ``param_groups`` would fight the user's
scheduler: closed-form schedulers (``LambdaLR``, ``CosineAnnealingLR``'s
``_get_closed_form_lr``, ``OneCycleLR``) overwrite it, chainable ones
(``StepLR``) would carry it on, and undoing it later with a division drifts.
:class:`StepLRFactor` instead multiplies every group's ``lr`` in the
optimizer's step pre-hook and puts the *original objects* back in the post-hook.
Between steps, schedulers, checkpoints and loggers see the user's unscaled
values, so ``optimizer.state_dict()`` never holds a scaled rate and resuming
needs nothing but the phase.
"""

from __future__ import annotations

from typing import Any

import torch


class StepLRFactor:
    """Multiplies every param group's learning rate by :attr:`factor` during ``optimizer.step()``.

    Args:
        optimizer: the optimizer whose ``param_groups`` are scaled.

    Attributes:
        factor: the multiplier used by the next step (1.0 = no change).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.factor = 1.0
        self._saved: list[Any] | None = None
        self._handles = [optimizer.register_step_pre_hook(self._pre),
                         optimizer.register_step_post_hook(self._post)]

    @property
    def active(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._handles)

    def effective_lrs(self) -> list[float]:
        """The learning rate each param group gets in the next step (scheduler value × factor)."""
        return [float(group["lr"]) * self.factor for group in self.optimizer.param_groups]

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.restore()  # a previous step that raised never reached the post-hook
        if self.factor == 1.0:
            return
        self._saved = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self._saved):
            group["lr"] = lr * self.factor

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the unscaled learning rates back (no-op outside a step)."""
        if self._saved is None:
            return
        for group, lr in zip(self.optimizer.param_groups, self._saved):
            group["lr"] = lr
        self._saved = None

    def remove(self) -> None:
        """Restore the rates and remove the optimizer hooks."""
        self.restore()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
