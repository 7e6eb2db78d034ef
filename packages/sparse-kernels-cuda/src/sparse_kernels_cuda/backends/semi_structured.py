"""2:4 backend through PyTorch's semi-structured sparsity (cuSPARSELt/CUTLASS), CUDA only.

The forward product runs on the compressed 2:4 weight. The backend's plan
(:class:`SemiStructuredPlan`, built once per mask version by the plugin's
layer kernel) keeps the compressed weight of the current weight values and
rebuilds it only when the weight changes (its version counter moves: an
optimizer step, the engine's re-masking, ``load_state_dict``), so training
compresses once per optimizer step and inference once, not at every forward.
The backward products stay dense and masked: ``Wᵀ`` of a row-wise 2:4 matrix
is not 2:4, and the weight gradient is a dense product sampled on the mask.

A write through ``weight.data`` does not move the version counter; after one,
call the layer kernel's ``invalidate()`` (a topology update does it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend

__all__ = ["SemiStructuredBackend", "SemiStructuredPlan", "semi_structured_linear"]


def compress(dense: Tensor) -> Tensor:
    """``torch.sparse.to_sparse_semi_structured(dense)``: the 2:4 compressed form of a 2:4-sparse matrix."""
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured(dense)


@torch.library.custom_op("sparse_kernels_cuda::semi_structured_linear", mutates_args=())
def _semi_structured_linear(x: Tensor, weight: Tensor, mask: Tensor) -> Tensor:
    return F.linear(x, compress(weight * mask))


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


class SemiStructuredPlan:
    """One mask version's plan: the mask and the compressed ``weight ⊙ mask`` of the latest weight values.

    :meth:`compressed` rebuilds the compressed weight only when the weight
    is another tensor or its version counter moved since the last build.

    Attributes:
        mask: the 2:4 bool mask.
        builds: how many times the compressed weight was built (for tests and reports).
    """

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self.builds = 0
        self._multiplier: Tensor | None = None
        self._key: tuple | None = None
        self._compressed: Tensor | None = None

    def multiplier(self, weight: Tensor) -> Tensor:
        """The mask in the weight's dtype (kept for the backward)."""
        if self._multiplier is None or self._multiplier.dtype != weight.dtype:
            self._multiplier = self.mask.to(dtype=weight.dtype)
        return self._multiplier

    def compressed(self, weight: Tensor) -> Tensor:
        """The compressed ``weight ⊙ mask``, rebuilt when the weight's values may have changed."""
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
        if self._compressed is None or key != self._key:
            with torch.no_grad():
                self._compressed = compress(weight.detach() * self.multiplier(weight))
            self._key = key
            self.builds += 1
        return self._compressed


class _CachedSemiStructuredLinear(torch.autograd.Function):
    """``F.linear(x, weight ⊙ mask)`` on the plan's compressed weight; dense masked backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, plan: SemiStructuredPlan) -> Tensor:
        multiplier = plan.multiplier(weight)
        ctx.save_for_backward(x, weight, multiplier)
        return F.linear(x, plan.compressed(weight))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, multiplier = ctx.saved_tensors
        dx = grad @ (weight * multiplier) if ctx.needs_input_grad[0] else None
        dw = (grad.t() @ x) * multiplier if ctx.needs_input_grad[1] else None
        return dx, dw, None


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

    def plan(self, mask: Tensor) -> SemiStructuredPlan:
        """A :class:`SemiStructuredPlan` of the mask; it compresses the weight once per weight version."""
        return SemiStructuredPlan(mask)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: SemiStructuredPlan | Tensor) -> Tensor:
        """``F.linear(x, weight ⊙ mask, bias)`` with a 2:4 forward.

        With a :class:`SemiStructuredPlan` the compressed weight is reused
        while the weight is unchanged; with a bare mask it is compressed for
        this call (:func:`semi_structured_linear`).
        """
        if torch.is_tensor(plan):
            return semi_structured_linear(x, weight, bias, plan)
        lead = x.shape[:-1]
        y = _CachedSemiStructuredLinear.apply(x.reshape(-1, x.shape[-1]), weight, plan)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, y.shape[-1])
