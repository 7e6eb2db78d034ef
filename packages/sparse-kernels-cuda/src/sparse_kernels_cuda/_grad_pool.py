"""Dense gradient buffers reused across steps.

A sparse backward still has to hand autograd a dense ``weight.grad`` (so any
optimizer works). Allocating a fresh multi-megabyte tensor every step costs
more than the sparse products on CPU: the allocator returns large blocks to
the OS, so each new tensor page-faults (≈35 ms for 64 MB on a 2-core VM,
against 4 ms to clear a buffer already mapped). The pool keeps such buffers
and reuses one only when nothing else references its storage, so a gradient
the user still holds is never overwritten.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

__all__ = ["clear_grad_pool", "scatter_to_dense", "set_grad_pool_enabled"]

_MAX_PER_KEY = 64
_lock = threading.Lock()
_pool: dict[tuple, list[Tensor]] = {}
_enabled = True


def set_grad_pool_enabled(enabled: bool) -> None:
    """Turn buffer reuse on or off (off: a fresh zero tensor every backward)."""
    global _enabled
    _enabled = bool(enabled)
    if not _enabled:
        clear_grad_pool()


def clear_grad_pool() -> None:
    """Drop every pooled buffer (memory is freed once no gradient uses it)."""
    with _lock:
        _pool.clear()


def _is_free(buf: Tensor) -> bool:
    # One reference from ``buf`` itself and one from the temporary storage object.
    return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2


def _zeros_like(like: Tensor) -> Tensor:
    key = (tuple(like.shape), like.dtype, like.device)
    with _lock:
        bufs = _pool.setdefault(key, [])
        for buf in bufs:
            if _is_free(buf):
                return buf.zero_().view(like.shape)
        buf = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
        if len(bufs) < _MAX_PER_KEY:
            bufs.append(buf)
        # A fresh view: autograd adopts it as ``.grad`` without copying.
        return buf.view(like.shape)


@torch.library.custom_op("sparse_kernels_cuda::scatter_to_dense", mutates_args=())
def scatter_to_dense(values: Tensor, idx: Tensor, like: Tensor) -> Tensor:
    """A dense tensor shaped like ``like``: ``values`` at flat positions ``idx``, zero elsewhere.

    Registered as an operator so tracing (``torch.compile``, AOT autograd)
    treats the buffer reuse as opaque.

    Args:
        values: 1-D values.
        idx: int64 flat positions, same length as ``values``.
        like: tensor giving shape, dtype and device (its values are not read).

    Returns:
        The dense tensor (a reused buffer when the pool is enabled).
    """
    out = _zeros_like(like) if _enabled else torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    out.view(-1).index_copy_(0, idx, values.to(like.dtype))
    return out


@scatter_to_dense.register_fake
def _(values, idx, like):
    return torch.empty_like(like, memory_format=torch.contiguous_format)
