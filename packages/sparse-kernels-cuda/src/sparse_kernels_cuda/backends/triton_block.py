"""Block-sparse backend: Triton kernels on live ``B×B`` blocks (``B`` in 16/32/64/128).

The operator ``sparse_kernels_cuda::block_linear`` is registered with
``torch.library`` (CPU reference semantics = masked dense; the implementation
calls the Triton kernels, which also run on CPU tensors under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from sparse_kernels_cuda.backends.base import Backend, interpreting, pattern_block
from sparse_kernels_cuda.formats import BlockPlan

__all__ = ["TritonBlockBackend", "block_linear"]

_BLOCKS = (16, 32, 64, 128)


@torch.library.custom_op("sparse_kernels_cuda::block_linear", mutates_args=())
def _block_linear(
    x: Tensor,
    weight: Tensor,
    row_ptr: Tensor,
    row_idx: Tensor,
    col_idx: Tensor,
    col_ptr: Tensor,
    t_row_idx: Tensor,
    block: int,
) -> Tensor:
    from sparse_kernels_cuda._triton_kernels import block_dsd

    return block_dsd(x, weight, row_ptr, col_idx, block)


@_block_linear.register_fake
def _(x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx, block):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("sparse_kernels_cuda::block_linear_backward", mutates_args=())
def _block_linear_backward(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    row_ptr: Tensor,
    row_idx: Tensor,
    col_idx: Tensor,
    col_ptr: Tensor,
    t_row_idx: Tensor,
    block: int,
    need_x: bool,
    need_w: bool,
) -> tuple[Tensor, Tensor]:
    from sparse_kernels_cuda._triton_kernels import block_dsd_t, block_sdd

    grad = grad.contiguous()
    dx = block_dsd_t(grad, weight, col_ptr, t_row_idx, block) if need_x else x.new_empty(0)
    if need_w:
        vals = block_sdd(grad, x, row_idx, col_idx, block)
        b = block
        rb, cb = weight.shape[0] // b, weight.shape[1] // b
        tiles = torch.zeros((rb, cb, b, b), dtype=weight.dtype, device=weight.device)
        tiles[row_idx.long(), col_idx.long()] = vals.to(weight.dtype)
        dw = tiles.permute(0, 2, 1, 3).reshape(weight.shape)
    else:
        dw = weight.new_empty(0)
    return dx, dw


@_block_linear_backward.register_fake
def _(grad, x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx, block, need_x, need_w):
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    dw = torch.empty_like(weight) if need_w else weight.new_empty(0)
    return dx, dw


def _setup(ctx, inputs, output):
    x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx, block = inputs
    ctx.save_for_backward(x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx)
    ctx.block = block


def _backward(ctx, grad):
    x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dw = _block_linear_backward(grad, x, weight, row_ptr, row_idx, col_idx, col_ptr, t_row_idx, ctx.block,
                                    need_x, need_w)
    return (dx if need_x else None), (dw if need_w else None), None, None, None, None, None, None


_block_linear.register_autograd(_backward, setup_context=_setup)


def block_linear(x: Tensor, weight: Tensor, bias: Tensor | None, plan: BlockPlan) -> Tensor:
    """``F.linear(x, weight ⊙ mask, bias)`` on the live blocks of ``plan``.

    Args:
        x: input ``(..., in)``, same dtype and device as ``weight``.
        weight: dense weight ``(out, in)``; only live blocks are read.
        bias: optional ``(out,)``.
        plan: the block structure (indices on the weight's device).

    Returns:
        ``(..., out)``; the weight gradient is zero outside live blocks.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y = _block_linear(x2, weight, plan.row_ptr, plan.row_idx, plan.col_idx, plan.col_ptr, plan.t_row_idx, plan.block)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, y.shape[-1])


class TritonBlockBackend(Backend):
    """Block-sparse Linear with Triton kernels (GPU; CPU only under ``TRITON_INTERPRET=1``).

    Masks must be made of whole ``B×B`` blocks (``B`` in 16/32/64/128): the
    engine's block-aware topology (``block=(B, B)``) produces them.
    """

    name = "triton-block"

    def is_available(self) -> bool:
        """Triton importable and a CUDA device present (or the interpreter on)."""
        if importlib.util.find_spec("triton") is None:
            return False
        return torch.cuda.is_available() or interpreting()

    def supports(self, shape, dtype, pattern, device) -> bool:
        """Block patterns with ``B ≥ 16``; fp32/fp16/bf16 on CUDA, fp32/fp16 under the interpreter on CPU."""
        b = pattern_block(pattern)
        if b is None or b not in _BLOCKS or len(shape) != 2 or shape[0] % b or shape[1] % b:
            return False
        kind = torch.device(device).type
        if kind == "cuda":
            return dtype in (torch.float32, torch.float16, torch.bfloat16)
        return kind == "cpu" and interpreting() and dtype in (torch.float32, torch.float16)

    def plan(self, mask: Tensor) -> BlockPlan:
        """Block plan for the largest block size the mask is made of."""
        from sparse_kernels_cuda.backends.base import detect_pattern

        b = pattern_block(detect_pattern(mask))
        if b is None:
            raise ValueError("mask is not block-structured (blocks of 16, 32, 64 or 128)")
        return BlockPlan.from_mask(mask, b)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None, plan: BlockPlan) -> Tensor:
        """``F.linear(x, weight ⊙ mask, bias)`` through the block kernels."""
        return block_linear(x, weight, bias, plan)
