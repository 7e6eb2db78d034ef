"""Running an optimizer's closure before its step pre-hooks, as a hand-written training loop does.

Lightning's automatic optimization calls ``optimizer.step(closure)``, and the
closure does the forward, the backward, ``on_before_optimizer_step`` and
gradient clipping. Torch runs step pre-hooks *before* the step calls the
closure, so the engine's pre-hook (gradient masking, ``before_optimizer_step``
of algorithms that read the dense gradient, such as RigL) would see no
gradient, or only the first micro-batches' under gradient accumulation.

:class:`ClosureFirstStep` wraps one optimizer's ``step``: a call with a
closure runs the closure first and then the real step, whose closure returns
that result the first time it is called (optimizers that call it again, such as
LBFGS, evaluate the real closure again). Every step hook then sees the step's
final gradients, exactly as after ``loss.backward()`` in a plain loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class ClosureFirstStep:
    """Wraps ``optimizer.step`` so that a closure runs before the step hooks; :meth:`remove` undoes it.

    Args:
        optimizer: the torch optimizer (not Lightning's ``LightningOptimizer`` wrapper).

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, or its step is wrapped already.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(vars(optimizer).get("step"), ClosureFirstStep):
            raise TypeError(f"the step of this {type(optimizer).__name__} runs its closure first already")
        self.optimizer = optimizer
        self._step: Callable[..., Any] = optimizer.step
        optimizer.step = self  # type: ignore[method-assign]

    def __call__(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Run ``closure`` (if any), then the optimizer's own step with the step hooks."""
        if closure is None:
            return self._step(**kwargs)
        with torch.enable_grad():
            first = [closure()]

        def replay() -> Any:
            if first:
                return first.pop()
            with torch.enable_grad():
                return closure()

        return self._step(closure=replay, **kwargs)

    @property
    def installed(self) -> bool:
        """Whether the optimizer's step is still this wrapper."""
        return vars(self.optimizer).get("step") is self

    def remove(self) -> None:
        """Give the optimizer its own step back (calling it again does nothing)."""
        if self.installed:
            del self.optimizer.step
