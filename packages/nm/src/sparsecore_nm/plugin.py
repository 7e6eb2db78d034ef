"""Entry-point module: registers the ``sr-ste`` and ``asp`` algorithms with sparsecore."""

from __future__ import annotations

import sparsecore
from sparsecore_nm.algorithm import AspAlgorithm, SrSteAlgorithm


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register ``"sr-ste"`` (:class:`~sparsecore_nm.SrSteAlgorithm`) and ``"asp"``
    (:class:`~sparsecore_nm.AspAlgorithm`)."""
    register("sr-ste", SrSteAlgorithm)
    register("asp", AspAlgorithm)
