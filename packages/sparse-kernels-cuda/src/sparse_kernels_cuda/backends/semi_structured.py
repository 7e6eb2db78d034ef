"""2:4 backend through PyTorch's semi-structured sparsity (cuSPARSELt/CUTLASS), CUDA only.

The forward product runs on the compressed 2:4 weight; the weight changes every
step, so it is compressed at every call (the cost of runtime sparsification is
part of what the dispatcher measures). The backward products stay dense and
masked: ``Wᵀ`` of a row-wise 2:4 matrix is not 2:4, and the weight gradient is
a dense product sampled on the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend

__all__ = ["SemiStructuredBackend", "semi_structured_linear"]


@torch.library.custom_op("sparse_kernels_cuda::semi_structured_linear", mutates_args=())
def _semi_structured_linear(x: Tensor, weight: Tensor, mask: Tensor) -> Tensor:
    from torch.sparse import to_sparse_semi_structured

    w = to_sparse_semi_structured(weight * mask)
    return F.linear(x, w)


@_semi_structured_linear.register_fake
def _(x, weight, mask):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _setup(ctx, inputs, output):
    x, weight, mask = inputs
    ctx.save_for_backward(x, weight, mask)


def _backward(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    dx = grad @ (weight * mask) if ctx.needs_input_grad[0] else None
    dw = (grad.t() @ x) * mask if ctx.needs_input_grad[1] else None
    return dx, dw, None


_semi_structured_linear.register_autograd(_backward, setup_context=_setup)


def semi_structured_linear(x: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor) -> Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` with a 2:4 forward product.

    Args:
        x: input ``(..., in)`` (fp16/bf16, CUDA).
        weight: dense ``(out, in)``.
        bias: optional ``(out,)``.
        mask: 2:4 bool mask shaped like ``weight``.
    """
    lead = x.shape[:-1]
    y = _semi_structured_linear(x.reshape(-1, x.shape[-1]), weight, mask.to(weight.dtype))
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, y.shape[-1])


class SemiStructuredBackend(Backend):
    """2:4 forward through ``torch.sparse.to_sparse_semi_structured``; needs CUDA with compute capability ≥ 8.0."""

    name = "2:4"

    def is_available(self) -> bool:
        """CUDA present with sm80+ and the semi-structured API in this torch."""
        if not torch.cuda.is_available() or not hasattr(torch.sparse, "to_sparse_semi_structured"):
            return False
        return torch.cuda.get_device_capability() >= (8, 0)

    def supports(self, shape, dtype, pattern, device) -> bool:
        """2:4 masks of fp16/bf16 weights on CUDA with both dimensions multiples of 64."""
        return (
            pattern == "2:4"
            and torch.device(device).type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and len(shape) == 2
            and shape[0] % 64 == 0
            and shape[1] % 64 == 0
        )

    def plan(self, mask: Tensor) -> Tensor:
        """The mask (compression happens per call, as the values change every step)."""
        return mask

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: Tensor) -> Tensor:
        """``F.linear(x, weight ⊙ mask, bias)`` with a 2:4 forward."""
        return semi_structured_linear(x, weight, bias, plan)
