"""sparse-kernels-cuda: sparse kernels that make sparsecore's sparse training faster.

Public API:

* :class:`KernelPlugin`: the sparsecore plugin (``plugins=["sparse-kernels-cuda"]``).
* backends: :class:`MaskedDenseBackend`, :class:`CsrBackend`,
  :class:`TritonBlockBackend`, :class:`SemiStructuredBackend`.
* :class:`Dispatcher`: per-layer backend choice by measurement.
* functional layers: :func:`csr_linear`, :func:`block_linear`,
  :func:`semi_structured_linear`.
* formats: :class:`CsrPlan`, :class:`BlockPlan` and block/2:4 mask helpers.
"""

import warnings

# torch warns once that CSR is "beta"; this package relies on it deliberately.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

from sparse_kernels_cuda.__about__ import __version__
from sparse_kernels_cuda._grad_pool import clear_grad_pool, set_grad_pool_enabled
from sparse_kernels_cuda.backends import (
    Backend,
    CsrBackend,
    MaskedDenseBackend,
    SemiStructuredBackend,
    TritonBlockBackend,
    default_backends,
    detect_pattern,
)
from sparse_kernels_cuda.backends.semi_structured import semi_structured_linear
from sparse_kernels_cuda.backends.triton_block import block_linear
from sparse_kernels_cuda.dispatch import Dispatcher, DispatchKey
from sparse_kernels_cuda.formats import (
    BlockPlan,
    CsrPlan,
    block_mask_from,
    block_scores,
    blocks_to_dense,
    dense_to_blocks,
    expand_block_mask,
    is_n_m_sparse,
    n_m_mask,
)
from sparse_kernels_cuda.ops import csr_linear
from sparse_kernels_cuda.plugin import KernelPlugin

__all__ = [
    "Backend",
    "BlockPlan",
    "CsrBackend",
    "CsrPlan",
    "DispatchKey",
    "Dispatcher",
    "KernelPlugin",
    "MaskedDenseBackend",
    "SemiStructuredBackend",
    "TritonBlockBackend",
    "__version__",
    "block_linear",
    "block_mask_from",
    "block_scores",
    "blocks_to_dense",
    "clear_grad_pool",
    "csr_linear",
    "default_backends",
    "dense_to_blocks",
    "detect_pattern",
    "expand_block_mask",
    "is_n_m_sparse",
    "n_m_mask",
    "semi_structured_linear",
    "set_grad_pool_enabled",
]
