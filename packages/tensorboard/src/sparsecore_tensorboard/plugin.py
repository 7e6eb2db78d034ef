"""Entry-point module: registers the ``tensorboard`` observer plugin with sparsecore."""

from __future__ import annotations

import sparsecore
from sparsecore_tensorboard.logger import TensorBoardLogger


@sparsecore.hookimpl
def sparsecore_register_plugins(register) -> None:
    """Register ``"tensorboard"`` (factory :class:`~sparsecore_tensorboard.TensorBoardLogger`)."""
    register("tensorboard", TensorBoardLogger)
