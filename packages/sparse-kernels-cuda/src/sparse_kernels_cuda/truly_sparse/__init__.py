"""Truly sparse training: layers that store only their active weights, and the topology driver over them.

* :class:`SparseLinear`: a ``Linear`` holding ``values`` (one per active
  weight) and CSR/CSC index buffers; its gradient and optimizer state are as
  long as ``values``.
* :class:`TrulySparseTrainer`: runs ``static``, ``set`` and ``rigl`` updates
  natively on values and indices (RigL's dense gradient only at update
  steps, a block of rows at a time), with the engine's schedule and choices.
* :func:`to_truly_sparse` / :func:`to_masked` / :func:`transfer_optimizer_state`:
  exact conversion from a masked run (a :class:`sparsecore.Sparsifier`'s
  masks) and back.
* :class:`SampledGrowth`: the same scalable random growth in a masked run.
* :func:`memory_report`: bytes held by the sparse layers.

Example:
    ```python
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(SparseLinear.random(784, 100_000, 0.03, g), nn.ReLU(),
                          SparseLinear.random(100_000, 10, 0.1, g))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = TrulySparseTrainer(model, optimizer, "set", total_steps=1000, seed=0, update_every=100)
    ```
"""

from sparse_kernels_cuda.truly_sparse.convert import to_masked, to_truly_sparse, transfer_optimizer_state
from sparse_kernels_cuda.truly_sparse.growth import SampledGrowth
from sparse_kernels_cuda.truly_sparse.layer import SparseLinear, kaiming_uniform_values
from sparse_kernels_cuda.truly_sparse.sampling import AUTO_PERMUTATION_LIMIT
from sparse_kernels_cuda.truly_sparse.trainer import (
    GROWTH_MODES,
    SUPPORTED_ALGORITHMS,
    TrulySparseTrainer,
    memory_report,
)

__all__ = [
    "AUTO_PERMUTATION_LIMIT",
    "GROWTH_MODES",
    "SUPPORTED_ALGORITHMS",
    "SampledGrowth",
    "SparseLinear",
    "TrulySparseTrainer",
    "kaiming_uniform_values",
    "memory_report",
    "to_masked",
    "to_truly_sparse",
    "transfer_optimizer_state",
]
