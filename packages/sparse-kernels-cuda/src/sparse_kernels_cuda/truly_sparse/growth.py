"""``SampledGrowth``: the truly sparse mode's scalable random growth, for a masked sparsecore run.

A truly sparse run of ``set`` on a layer too large for the engine's
permutation draws its growth by rejection sampling
(:func:`~sparse_kernels_cuda.truly_sparse.sampling.sample_inactive`). Adding
this plugin to a masked run (``plugins=[SampledGrowth()]``) makes the engine
draw its random growth the same way from the same generator, so the two
forms follow the same trajectory with ``growth="sampling"`` as well.
"""

from __future__ import annotations

import torch

from sparse_kernels_cuda.truly_sparse import sampling
from sparsecore import ConfigurationError, hookimpl

__all__ = ["SampledGrowth"]


class SampledGrowth:
    """A sparsecore plugin answering ``select_grow`` with rejection-sampled random growth.

    For algorithms that grow at random (``set``, ``static``); it takes
    precedence over the algorithm's own growth, so do not add it to ``rigl``
    runs. Unstructured runs only.
    """

    name = "sampled-growth"

    @hookimpl
    def on_setup(self, sparsifier) -> None:
        """Refuse block and N:M runs (the sampler chooses single weights).

        Raises:
            ConfigurationError: the run has a block or N:M pattern.
        """
        if sparsifier.pattern is not None:
            raise ConfigurationError(f"sampled-growth: chooses single weights; the run has pattern "
                                     f"{sparsifier.pattern!r}")

    @hookimpl
    def select_grow(self, sparsifier, layer, n: int) -> torch.Tensor:
        """``n`` inactive weights drawn by rejection sampling from ``sparsifier.generator``."""
        flat = layer.mask.reshape(-1)
        chosen = sampling.sample_inactive(flat.nonzero().squeeze(1), flat.numel(), n, sparsifier.generator)
        out = torch.zeros_like(flat)
        out[chosen] = True
        return out.view_as(layer.mask)
