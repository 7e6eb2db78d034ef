"""Entry-point module: registers the ``rigl`` algorithm with sparsecore."""

from __future__ import annotations

import sparsecore
from sparsecore_rigl.algorithm import RigLAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register ``"rigl"`` (factory :class:`~sparsecore_rigl.RigLAlgorithm`)."""
    register("rigl", RigLAlgorithm)
