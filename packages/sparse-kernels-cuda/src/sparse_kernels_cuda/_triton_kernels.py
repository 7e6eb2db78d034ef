"""Triton kernels for block-sparse Linear (forward, input gradient, weight gradient).

The weight stays a dense ``(out, in)`` tensor; a :class:`~sparse_kernels_cuda.formats.BlockPlan`
lists its live ``B×B`` blocks. Three kernels, stk/MegaBlocks style:

* ``dsd`` forward: ``Y[m, rB:(r+1)B] = Σ_{blocks (r, c)} X[m, cB:(c+1)B] · W_{rc}ᵀ``, one
  program per (row tile, block row), walking ``row_ptr``/``col_idx``;
* ``dsd`` input gradient: ``dX[m, cB:(c+1)B] = Σ_{blocks (r, c)} dY[m, rB:(r+1)B] · W_{rc}``,
  walking the precomputed column-major index (``col_ptr``/``t_row_idx``), so
  ``Wᵀ`` is never materialised;
* ``sdd`` weight gradient: ``dW_{rc} = dY[:, rB:(r+1)B]ᵀ · X[:, cB:(c+1)B]`` for live blocks
  only, split over the token dimension so few live blocks still fill the GPU.

Kernels are created on first use, so ``TRITON_INTERPRET=1`` set before that
point runs them on CPU tensors (tests); it must also be set before
``triton.language`` is first imported, whose helpers are decorated at import. Under the interpreter no autotuning
happens and tiles are small.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sparse_kernels_cuda.backends.base import interpreting

__all__ = ["block_dsd", "block_dsd_t", "block_sdd", "interpreting"]


def _configs():
    return [
        triton.Config({"BM": bm}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for w in (4, 8)
        for s in (2, 3, 4)
    ]


# Kernel bodies (plain functions, jit-compiled by ``_kernels``).


def dsd_fwd(x_ptr, w_ptr, y_ptr, row_ptr, col_idx, M,
            sxm, sxk, swo, swi, sym, syn,
            B: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr):
    pid_m = tl.program_id(0)
    r = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_b = tl.arange(0, B)
    row_ok = offs_m[:, None] < M
    acc = tl.zeros((BM, B), dtype=tl.float32)
    start = tl.load(row_ptr + r)
    end = tl.load(row_ptr + r + 1)
    for k in range(start, end):
        c = tl.load(col_idx + k)
        x = tl.load(x_ptr + offs_m[:, None] * sxm + (c * B + offs_b)[None, :] * sxk, mask=row_ok, other=0.0)
        # wt[k, n] = W[rB + n, cB + k]
        wt = tl.load(w_ptr + (r * B + offs_b)[None, :] * swo + (c * B + offs_b)[:, None] * swi)
        if IEEE:
            acc += tl.dot(x, wt, input_precision="ieee")
        else:
            acc += tl.dot(x, wt)
    tl.store(y_ptr + offs_m[:, None] * sym + (r * B + offs_b)[None, :] * syn,
             acc.to(y_ptr.dtype.element_ty), mask=row_ok)


def dsd_dx(g_ptr, w_ptr, dx_ptr, col_ptr, t_row_idx, M,
           sgm, sgn, swo, swi, sdm, sdk,
           B: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr):
    pid_m = tl.program_id(0)
    c = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_b = tl.arange(0, B)
    row_ok = offs_m[:, None] < M
    acc = tl.zeros((BM, B), dtype=tl.float32)
    start = tl.load(col_ptr + c)
    end = tl.load(col_ptr + c + 1)
    for j in range(start, end):
        r = tl.load(t_row_idx + j)
        g = tl.load(g_ptr + offs_m[:, None] * sgm + (r * B + offs_b)[None, :] * sgn, mask=row_ok, other=0.0)
        # w[n, k] = W[rB + n, cB + k]
        w = tl.load(w_ptr + (r * B + offs_b)[:, None] * swo + (c * B + offs_b)[None, :] * swi)
        if IEEE:
            acc += tl.dot(g, w, input_precision="ieee")
        else:
            acc += tl.dot(g, w)
    tl.store(dx_ptr + offs_m[:, None] * sdm + (c * B + offs_b)[None, :] * sdk,
             acc.to(dx_ptr.dtype.element_ty), mask=row_ok)


def sdd_dw(g_ptr, x_ptr, out_ptr, row_idx, col_idx, M, n_blocks, chunk,
           sgm, sgn, sxm, sxk,
           B: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr):
    blk = tl.program_id(0)
    split = tl.program_id(1)
    r = tl.load(row_idx + blk)
    c = tl.load(col_idx + blk)
    offs_b = tl.arange(0, B)
    acc = tl.zeros((B, B), dtype=tl.float32)
    m_start = split * chunk
    m_end = tl.minimum(m_start + chunk, M)
    for m0 in range(m_start, m_end, BM):
        offs_m = m0 + tl.arange(0, BM)
        ok = offs_m < m_end
        # gt[n, m] = dY[m, rB + n]
        gt = tl.load(g_ptr + offs_m[None, :] * sgm + (r * B + offs_b)[:, None] * sgn, mask=ok[None, :], other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * sxm + (c * B + offs_b)[None, :] * sxk, mask=ok[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(gt, x, input_precision="ieee")
        else:
            acc += tl.dot(gt, x)
    base = out_ptr + (split * n_blocks + blk) * B * B
    tl.store(base + offs_b[:, None] * B + offs_b[None, :], acc)


@functools.cache
def _kernels(interpret: bool):
    # Decorating here (not at import) lets TRITON_INTERPRET set later take effect.
    fwd, dx, dw = triton.jit(dsd_fwd), triton.jit(dsd_dx), triton.jit(sdd_dw)
    if interpret:
        return {"fwd": fwd, "dx": dx, "dw": dw}
    return {
        "fwd": triton.autotune(_configs(), key=["M", "B", "IEEE"])(fwd),
        "dx": triton.autotune(_configs(), key=["M", "B", "IEEE"])(dx),
        "dw": triton.autotune(_configs(), key=["M", "B", "IEEE"])(dw),
    }


def _launch_opts(interpret: bool, block: int) -> dict:
    return {"BM": 16} if interpret else {}


def _ieee(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def block_dsd(x: torch.Tensor, weight: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
              block: int) -> torch.Tensor:
    """``Y = X · (W ⊙ M)ᵀ`` for a 2-D ``x`` ``(M, in)``; returns ``(M, out)``."""
    interpret = interpreting()
    k = _kernels(interpret)["fwd"]
    m_rows = x.shape[0]
    n_out = weight.shape[0]
    y = torch.empty((m_rows, n_out), dtype=x.dtype, device=x.device)
    if m_rows == 0:
        return y
    grid = lambda meta: (triton_cdiv(m_rows, meta["BM"]), n_out // block)  # noqa: E731
    k[grid](x, weight, y, row_ptr, col_idx, m_rows,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
            B=block, IEEE=_ieee(x.dtype), **_launch_opts(interpret, block))
    return y


def block_dsd_t(grad: torch.Tensor, weight: torch.Tensor, col_ptr: torch.Tensor, t_row_idx: torch.Tensor,
                block: int) -> torch.Tensor:
    """``dX = dY · (W ⊙ M)`` for ``grad`` ``(M, out)``; returns ``(M, in)``."""
    interpret = interpreting()
    k = _kernels(interpret)["dx"]
    m_rows = grad.shape[0]
    n_in = weight.shape[1]
    dx = torch.empty((m_rows, n_in), dtype=grad.dtype, device=grad.device)
    if m_rows == 0:
        return dx
    grid = lambda meta: (triton_cdiv(m_rows, meta["BM"]), n_in // block)  # noqa: E731
    k[grid](grad, weight, dx, col_ptr, t_row_idx, m_rows,
            grad.stride(0), grad.stride(1), weight.stride(0), weight.stride(1), dx.stride(0), dx.stride(1),
            B=block, IEEE=_ieee(grad.dtype), **_launch_opts(interpret, block))
    return dx


def block_sdd(grad: torch.Tensor, x: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor, block: int,
              splits: int | None = None) -> torch.Tensor:
    """Weight gradient on live blocks: ``[n_blocks, B, B]`` (fp32) of ``dY_{:, r}ᵀ · X_{:, c}``.

    Args:
        grad: ``dY`` ``(M, out)``.
        x: ``X`` ``(M, in)``.
        row_idx: block row of each live block.
        col_idx: block column of each live block.
        block: block edge.
        splits: how many token chunks to reduce separately (default: enough
            programs to fill the device).
    """
    interpret = interpreting()
    k = _kernels(interpret)["dw"]
    m_rows = grad.shape[0]
    n_blocks = int(row_idx.numel())
    if n_blocks == 0 or m_rows == 0:
        return torch.zeros((n_blocks, block, block), dtype=torch.float32, device=grad.device)
    if splits is None:
        if interpret or grad.device.type != "cuda":
            splits = 1
        else:
            sms = torch.cuda.get_device_properties(grad.device).multi_processor_count
            splits = max(1, min(triton_cdiv(2 * sms, n_blocks), triton_cdiv(m_rows, 512)))
    chunk = triton_cdiv(m_rows, splits)
    # Round chunks to 128 rows so every chunk is a whole number of BM tiles.
    chunk = triton_cdiv(chunk, 128) * 128
    splits = triton_cdiv(m_rows, chunk)
    part = torch.empty((splits, n_blocks, block, block), dtype=torch.float32, device=grad.device)
    k[(n_blocks, splits)](grad, x, part, row_idx, col_idx, m_rows, n_blocks, chunk,
                          grad.stride(0), grad.stride(1), x.stride(0), x.stride(1),
                          B=block, IEEE=_ieee(grad.dtype), **_launch_opts(interpret, block))
    return part[0] if splits == 1 else part.sum(0)


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)
