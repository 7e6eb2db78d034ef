"""Entry point of ``snip-baseline``: registers the ``snip`` algorithm with sparsecore."""

from __future__ import annotations

import sparsecore

from snip_baseline.algorithm import Snip


@sparsecore.hookimpl
def sparsecore_register_algorithms(register) -> None:
    """Register :class:`~snip_baseline.Snip` under the name ``"snip"``."""
    register("snip", Snip)
