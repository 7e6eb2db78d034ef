"""Kernel backends: masked dense (reference and fallback), CSR, Triton block-sparse, 2:4."""

from __future__ import annotations

from sparse_kernels_cuda.backends.base import Backend, detect_pattern
from sparse_kernels_cuda.backends.csr import CsrBackend
from sparse_kernels_cuda.backends.masked_dense import MaskedDenseBackend
from sparse_kernels_cuda.backends.semi_structured import SemiStructuredBackend
from sparse_kernels_cuda.backends.triton_block import TritonBlockBackend

__all__ = [
    "Backend",
    "CsrBackend",
    "MaskedDenseBackend",
    "SemiStructuredBackend",
    "TritonBlockBackend",
    "default_backends",
    "detect_pattern",
]


def default_backends(feature_major: bool = False) -> list[Backend]:
    """Every non-fallback backend, in order of preference on ties.

    Args:
        feature_major: passed to :class:`CsrBackend`.
    """
    return [TritonBlockBackend(), SemiStructuredBackend(), CsrBackend(feature_major=feature_major)]
