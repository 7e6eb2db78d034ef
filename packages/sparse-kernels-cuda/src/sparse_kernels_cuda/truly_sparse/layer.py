"""``SparseLinear``: a linear layer that stores only its active weights.

The weight lives as a 1-D ``values`` parameter (one entry per active weight,
in row-major order) plus index buffers: the CSR structure of ``W``
(``crow``, ``col``) and of ``Wᵀ`` (``crow_t``, ``row_t``, with ``perm_t``
giving the position in ``values`` of every transposed entry). Its gradient
and every optimizer state over it are therefore as long as ``values``; no
tensor shaped like the dense weight is ever built, except by
:meth:`SparseLinear.to_dense` on request.

The three products of a training step run on ``torch.sparse`` CSR (MKL on
CPU): ``Yᵀ = W Xᵀ``, ``dXᵀ = Wᵀ dYᵀ`` and ``dvalues = (dYᵀ X)`` sampled at
the active positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SparseLinear", "index_dtype_for", "kaiming_uniform_values"]


def index_dtype_for(nnz: int, *dims: int) -> torch.dtype:
    """int32 when every index and offset fits (MKL's native type), else int64."""
    return torch.int32 if max(nnz, *dims) < 2**31 - 1 else torch.int64


def _offsets(counts: Tensor, dtype: torch.dtype) -> Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=out[1:])
    return out.to(dtype)


class _CsrLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ`` with ``W`` given as CSR values + structure; gradients for ``x`` and ``values``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, crow_t: Tensor,
                row_t: Tensor, perm_t: Tensor, out_features: int) -> Tensor:
        in_features = x.shape[1]
        w = torch.sparse_csr_tensor(crow, col, values, (out_features, in_features), check_invariants=False)
        yt = torch.mm(w, x.t().contiguous())  # (out, batch), row-major: MKL's fast layout
        ctx.save_for_backward(x, values, crow, col, crow_t, row_t, perm_t)
        ctx.out_features = out_features
        return yt.t()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, values, crow, col, crow_t, row_t, perm_t = ctx.saved_tensors
        out_features, in_features = ctx.out_features, x.shape[1]
        grad_t = grad.t().contiguous()  # (out, batch)
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            w_t = torch.sparse_csr_tensor(crow_t, row_t, values.index_select(0, perm_t), (in_features, out_features),
                                          check_invariants=False)
            grad_x = torch.mm(w_t, grad_t).t()
        if ctx.needs_input_grad[1]:
            pattern = torch.sparse_csr_tensor(crow, col, values.new_zeros(values.shape),
                                              (out_features, in_features), check_invariants=False)
            grad_values = torch.sparse.sampled_addmm(pattern, grad_t, x.contiguous(), beta=0.0).values()
        return grad_x, grad_values, None, None, None, None, None, None


class SparseLinear(nn.Module):
    """A ``Linear`` layer whose weight is stored as its active values and their indices only.

    ``values[i]`` is the weight at row ``rows()[i]``, column ``col[i]``;
    entries are in row-major order (sorted flat position ``row * in + col``).
    The forward equals ``F.linear(x, to_dense(), bias)`` up to floating-point
    summation order. Only ``values`` and ``bias`` are parameters, so an
    optimizer built over them keeps per-value state.

    The structure changes only through :meth:`set_structure` (the topology
    driver :class:`~sparse_kernels_cuda.truly_sparse.TrulySparseTrainer` calls
    it); the ``values`` parameter stays the same object, so the optimizer's
    param groups stay valid.

    Args:
        in_features: input size.
        out_features: output size.
        positions: sorted, distinct flat positions ``row * in_features + col``
            of the active weights (int64, 1-D).
        values: their values (default: zeros), same length as ``positions``.
        bias: a bias of ``out_features`` zeros (``True``), none (``False``),
            or that tensor.
        dtype: dtype of ``values`` when they are not given (default: torch's default).

    Raises:
        ValueError: positions not 1-D, not sorted and distinct, or outside the
            weight; ``values`` of another length.

    Attributes:
        capture_dense_grad: while ``True``, every forward keeps its input and
            (in backward) its output gradient, so :meth:`dense_grad_rows` can
            compute rows of the dense weight gradient (RigL's growth score).
        crow: CSR row pointers of ``W`` (``out_features + 1`` entries; a buffer).
        col: CSR column index of each entry of ``values`` (a buffer).
        crow_t: CSR row pointers of ``Wᵀ`` (``in_features + 1`` entries).
        row_t: row of ``W`` of each entry of ``Wᵀ`` in CSR order.
        perm_t: position in ``values`` of each entry of ``Wᵀ`` in CSR order (the
            three ``Wᵀ`` buffers are not saved in the state dict: they are rebuilt
            from ``crow`` and ``col``).
    """

    crow: Tensor
    col: Tensor
    crow_t: Tensor
    row_t: Tensor
    perm_t: Tensor

    def __init__(self, in_features: int, out_features: int, positions: Tensor, values: Tensor | None = None,
                 bias: bool | Tensor = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"SparseLinear needs positive sizes, got in_features={in_features}, "
                             f"out_features={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        device = positions.device
        dtype = values.dtype if values is not None else (dtype or torch.get_default_dtype())
        self.values = nn.Parameter(torch.empty(0, dtype=dtype, device=device))
        for name in ("crow", "col"):
            self.register_buffer(name, torch.empty(0, dtype=torch.int32, device=device))
        for name in ("crow_t", "row_t", "perm_t"):  # rebuilt from crow/col; not saved
            self.register_buffer(name, torch.empty(0, dtype=torch.int32, device=device), persistent=False)
        if isinstance(bias, Tensor):
            self.bias: nn.Parameter | None = nn.Parameter(bias.detach().clone())
        elif bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        self.capture_dense_grad = False
        self._captured: list[tuple[Tensor, Tensor]] = []
        self.set_structure(positions, values)

    # ------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Tensor) -> SparseLinear:
        """The truly sparse copy of a masked ``nn.Linear``: its weights at ``mask``, its bias.

        Raises:
            ValueError: the mask does not match the weight, or the weight is
                nonzero somewhere off the mask (those values would be lost).
        """
        weight = linear.weight.detach()
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ValueError(f"mask must be a bool tensor shaped like the weight {tuple(weight.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        mask = mask.to(weight.device)
        off = int(torch.count_nonzero(weight.masked_fill(mask, 0)))
        if off:
            raise ValueError(f"the weight has {off} nonzero values off the mask; a truly sparse layer keeps only the "
                             "masked positions (zero them, e.g. with weight.mul_(mask), before converting)")
        positions = mask.reshape(-1).nonzero().squeeze(1)
        bias = linear.bias.detach() if linear.bias is not None else False
        return cls(linear.in_features, linear.out_features, positions, weight.reshape(-1)[positions].clone(), bias)

    @classmethod
    def random(cls, in_features: int, out_features: int, density: float, generator: torch.Generator,
               bias: bool = True, dtype: torch.dtype | None = None, sampler: str = "auto") -> SparseLinear:
        """A layer with ``round(density * out * in)`` active weights at uniformly random positions.

        Values (and bias) are drawn by :func:`kaiming_uniform_values` from ``generator``.

        Args:
            in_features: input size.
            out_features: output size.
            density: fraction of active weights, in (0, 1].
            generator: source of positions and values.
            bias: whether the layer has a bias.
            dtype: dtype of the values.
            sampler: ``"permutation"`` (the positions the engine's
                ``sparsecore.selection.random_mask`` draws from the same
                generator state; one int64 per weight of the dense form),
                ``"sampling"`` (rejection sampling, memory ``O(nnz)``), or
                ``"auto"``: permutation up to ``AUTO_PERMUTATION_LIMIT`` weights.

        Raises:
            ValueError: a density outside (0, 1] or an unknown sampler.
        """
        from sparse_kernels_cuda.truly_sparse import sampling

        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        if sampler not in ("auto", "permutation", "sampling"):
            raise ValueError(f"sampler must be 'auto', 'permutation' or 'sampling', got {sampler!r}")
        numel = in_features * out_features
        n = round(density * numel)
        if sampler == "permutation" or (sampler == "auto" and numel <= sampling.AUTO_PERMUTATION_LIMIT):
            positions = sampling.permutation_positions(numel, n, generator)
        else:
            positions = sampling.sample_positions(numel, n, generator)
        layer = cls(in_features, out_features, positions, bias=bias, dtype=dtype)
        kaiming_uniform_values(layer, generator)
        return layer

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with this layer's weights (zeros off the structure) and bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # ------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)`` of the dense weight this layer stands for."""
        return self.out_features, self.in_features

    @property
    def numel(self) -> int:
        """Number of weights of the dense form (``out * in``)."""
        return self.out_features * self.in_features

    @property
    def nnz(self) -> int:
        """Number of active weights."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """Fraction of active weights."""
        return self.nnz / self.numel

    def rows(self) -> Tensor:
        """Row of every active weight (int64, ``nnz``)."""
        counts = (self.crow[1:] - self.crow[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)

    def positions(self) -> Tensor:
        """Sorted flat positions ``row * in_features + col`` of the active weights (int64)."""
        return self.rows() * self.in_features + self.col.long()

    def mask(self) -> Tensor:
        """The dense bool mask (builds an ``out × in`` tensor: for small layers and tests)."""
        flat = torch.zeros(self.numel, dtype=torch.bool, device=self.values.device)
        return flat.index_fill_(0, self.positions(), True).view(self.shape)

    def to_dense(self) -> Tensor:
        """The dense weight, zeros off the structure (builds an ``out × in`` tensor)."""
        flat = self.values.detach().new_zeros(self.numel)
        return flat.index_copy_(0, self.positions(), self.values.detach()).view(self.shape)

    def set_structure(self, positions: Tensor, values: Tensor | None = None) -> None:
        """Replace the active positions and their values; rebuild every index buffer.

        The ``values`` parameter stays the same object (its data is swapped)
        and its gradient is dropped; optimizer state is the caller's concern
        (the topology driver remaps it).

        Args:
            positions: sorted, distinct int flat positions (1-D).
            values: one value per position (default: zeros).

        Raises:
            ValueError: positions unsorted, repeated, out of range, or values of another length.
        """
        positions = positions.to(torch.int64)
        if positions.dim() != 1:
            raise ValueError(f"positions must be 1-D, got shape {tuple(positions.shape)}")
        n = positions.numel()
        if n and (int(positions[0]) < 0 or int(positions[-1]) >= self.numel):
            raise ValueError(f"positions must lie in [0, {self.numel}) for a {self.out_features}x{self.in_features} "
                             f"weight, got [{int(positions.min())}, {int(positions.max())}]")
        if n > 1 and not bool((positions[1:] > positions[:-1]).all()):
            raise ValueError("positions must be sorted and distinct (row-major order of the active weights)")
        if values is None:
            values = torch.zeros(n, dtype=self.values.dtype, device=self.values.device)
        if values.dim() != 1 or values.numel() != n:
            raise ValueError(f"values must be 1-D with one entry per position ({n}), got shape {tuple(values.shape)}")
        itype = index_dtype_for(n, self.in_features, self.out_features)
        rows, cols = positions // self.in_features, positions % self.in_features
        self.crow = _offsets(torch.bincount(rows, minlength=self.out_features), itype)
        self.col = cols.to(itype)
        # Transposed structure: entries sorted by (column, row); perm_t points back into the row-major values.
        perm_t = torch.argsort(cols * self.out_features + rows)
        self.crow_t = _offsets(torch.bincount(cols, minlength=self.in_features), itype)
        self.row_t = rows.index_select(0, perm_t).to(itype)
        self.perm_t = perm_t.to(itype)
        self.values.data = values.detach().to(dtype=self.values.dtype, device=self.values.device).contiguous()
        self.values.grad = None

    def index_bytes(self) -> int:
        """Bytes held by the index buffers (both CSR structures)."""
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.crow_t, self.row_t, self.perm_t))

    # ------------------------------------------------------------------
    # forward and the dense gradient
    # ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``F.linear(x, W, bias)`` for any leading dimensions of ``x``.

        A 2-D result is the transposed view of the ``(out, batch)`` product
        (feature-major, as ``csr_linear(..., feature_major=True)``): a next
        ``SparseLinear`` reads it without a copy; ``reshape`` and elementwise
        ops work, a ``view`` that merges or splits the last dimension does not.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        x2 = x.reshape(-1, self.in_features)
        y = _CsrLinearFunction.apply(x2, self.values, self.crow, self.col, self.crow_t, self.row_t, self.perm_t,
                                     self.out_features)
        if self.bias is not None:
            y = y + self.bias
        if self.capture_dense_grad and y.requires_grad:
            saved = x2.detach()
            y.register_hook(lambda grad: self._captured.append((saved, grad.detach())))
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @property
    def captured_batches(self) -> int:
        """How many (input, output gradient) pairs are kept for :meth:`dense_grad_rows`."""
        return len(self._captured)

    def dense_grad_rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of the dense weight gradient ``Σ dYᵀ X`` over the captured batches.

        Raises:
            RuntimeError: nothing was captured (set ``capture_dense_grad`` before the forward).
        """
        if not self._captured:
            raise RuntimeError("no dense gradient captured: set capture_dense_grad = True before the forward and "
                               "backward of the step whose dense gradient is wanted")
        total = None
        for x, grad in self._captured:
            part = grad[:, start:stop].t().mm(x)
            total = part if total is None else total + part
        assert total is not None
        return total

    def clear_captured(self) -> None:
        """Drop the captured inputs and output gradients."""
        self._captured.clear()

    # ------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        # A checkpoint's structure may hold another number of active weights: adopt it before loading.
        crow, col, values = (state_dict.get(prefix + k) for k in ("crow", "col", "values"))
        if crow is not None and col is not None and values is not None:
            if crow.numel() != self.out_features + 1:
                error_msgs.append(f"{prefix}crow has {crow.numel()} entries, expected {self.out_features + 1}")
                return
            counts = (crow[1:] - crow[:-1]).long()
            rows = torch.repeat_interleave(torch.arange(self.out_features), counts.cpu())
            self.set_structure((rows.to(col.device) * self.in_features + col.long()).to(self.values.device),
                               values.to(self.values.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"density={self.density:.3g}, bias={self.bias is not None}")


def kaiming_uniform_values(layer: SparseLinear, generator: torch.Generator | None = None) -> None:
    """Initialise ``values`` like ``nn.Linear`` would for the layer's *active* fan-in.

    Draws ``U(-b, b)`` with ``b = 1 / sqrt(fan_in)``, ``fan_in = density *
    in_features`` (at least 1): the dense layer's scale for the inputs a unit
    actually has, so activations keep their size at any density.
    """
    fan_in = max(1.0, layer.density * layer.in_features)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.values.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)
