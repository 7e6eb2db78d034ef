"""Model-level saving: BatchNorm, ReLU and max-pool forwards that save less for backward.

SWAT's layers save a compressed top-K input, but in a conv-BN-ReLU network
the surrounding modules keep the dense tensors anyway: BatchNorm saves its
input, ReLU its output and max-pool its input and int64 indices. The
forwards here, installed on those modules by the engine for a SWAT run
(:func:`activation_forwards`, ``SwatAlgorithm(activation_memory="model")``),
save only what cannot be recomputed exactly:

* **BatchNorm** (``nn.BatchNorm1d/2d/3d`` in training mode) runs its own
  forward unchanged (it saves its input, as always) and records that its
  output ``z`` can be rebuilt from that input: the same ``F.batch_norm`` call
  in training mode on the same input gives the same bits.
* **ReLU** on such a ``z`` saves nothing of its own: its backward rebuilds
  ``z`` and applies ``threshold_backward`` to it, exactly what autograd does
  with ReLU's output. On any other input it saves a packed bitmask (one bit
  per element instead of the float output).
* **MaxPool2d/3d** on a rebuildable input saves nothing of its own: its
  backward rebuilds the input and the same indices. Elsewhere it runs as usual.
* **SWAT layers** whose input is rebuildable save only the 0-dim activation
  threshold: their backward rebuilds the input and takes the same top-K
  (:mod:`sparsecore_swat.functional`).

So a conv-BN-ReLU-conv chain keeps one float tensor per feature map (the
BatchNorm input) where the dense model keeps two, and gradients are those of
the modules' own backward, bit for bit (the rebuilt tensors are the forward's
tensors recomputed by the same kernels).

A record is valid while neither the tensor nor what it was computed from is
modified in place (version counters are checked); it is made only with
autograd on, autocast off and the BatchNorm in training mode. A record keeps
the BatchNorm input alive as long as the output it describes (the BatchNorm's
backward keeps it until then anyway, unless the output outlives the graph).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakTensorKeyDictionary

from sparsecore_swat.compress import pack_bits, unpack_bits

__all__ = ["BatchNormForward", "MaxPoolForward", "Rebuild", "ReluForward", "activation_forwards", "rebuild_of"]

_POOL_BACKWARD = {2: torch.ops.aten.max_pool2d_with_indices_backward,
                  3: torch.ops.aten.max_pool3d_with_indices_backward}
_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


@dataclass(frozen=True)
class Rebuild:
    """How to recompute a tensor from a BatchNorm's input: the batch norm, then an optional ReLU and max-pool.

    Attributes:
        eps: the BatchNorm's ``eps``.
        running_stats: whether the forward passed running statistics (the
            rebuild passes stand-ins of the same shape, so the same kernel runs).
        relu: a ReLU follows the batch norm.
        pool: ``(dims, kernel_size, stride, padding, dilation, ceil_mode)`` of
            a max-pool that follows, or ``None``.
    """

    eps: float
    running_stats: bool
    relu: bool = False
    pool: tuple[Any, ...] | None = None

    def batch_norm(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """The BatchNorm output, recomputed as the forward computed it (batch statistics)."""
        mean = var = None
        if self.running_stats:
            channels = x.shape[1]
            mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
            var = torch.ones(channels, dtype=x.dtype, device=x.device)
        return F.batch_norm(x, mean, var, weight, bias, True, 0.0, self.eps)

    def before_pool(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """The tensor a following max-pool reads: the batch norm and the optional ReLU."""
        out = self.batch_norm(x, weight, bias)
        return torch.relu_(out) if self.relu else out

    def __call__(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """The recorded tensor, recomputed from the BatchNorm's input and affine parameters."""
        out = self.before_pool(x, weight, bias)
        if self.pool is not None:
            dims, kernel, stride, padding, dilation, ceil_mode = self.pool
            out = _POOL[dims](out, kernel, stride, padding, dilation, ceil_mode)
        return out


@dataclass(frozen=True)
class _Record:
    rebuild: Rebuild
    tensors: tuple[torch.Tensor | None, ...]
    versions: tuple[int, ...]
    version: int


_RECORDS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _versions(tensors: tuple[torch.Tensor | None, ...]) -> tuple[int, ...]:
    return tuple(-1 if t is None else t._version for t in tensors)


def _remember(out: torch.Tensor, rebuild: Rebuild, tensors: tuple[torch.Tensor | None, ...]) -> None:
    _RECORDS[out] = _Record(rebuild, tensors, _versions(tensors), out._version)


def rebuild_of(tensor: torch.Tensor) -> tuple[Rebuild, tuple[torch.Tensor | None, ...]] | None:
    """How ``tensor`` can be recomputed exactly, or ``None``.

    Returns:
        ``(rebuild, (bn_input, bn_weight, bn_bias))``: ``rebuild(*tensors)``
        equals ``tensor`` bit for bit. ``None`` when nothing was recorded for
        ``tensor``, or it or its sources were modified in place since.
    """
    record = _RECORDS.get(tensor)
    if record is None or record.version != tensor._version or record.versions != _versions(record.tensors):
        return None
    return record.rebuild, record.tensors


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _recording(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and not _autocast_on(x.device.type)


class _ReluFromRebuild(torch.autograd.Function):
    """ReLU whose backward rebuilds its input instead of saving its output."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, inplace: bool, rebuild: Rebuild, x: torch.Tensor,
                weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.rebuild = rebuild
        ctx.save_for_backward(x, weight, bias)
        if inplace:
            ctx.mark_dirty(z)
            return z.relu_()
        return torch.relu(z)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z = ctx.rebuild(*ctx.saved_tensors)
        # autograd's own formula for relu is threshold_backward(grad, relu(z), 0); relu(z) <= 0 iff z <= 0
        return torch.ops.aten.threshold_backward(grad, z, 0), None, None, None, None, None


class _ReluBits(torch.autograd.Function):
    """ReLU that saves where its output is positive as a packed bitmask."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            ctx.mark_dirty(z)
            out = z.relu_()
        else:
            out = torch.relu(z)
        ctx.shape = out.shape
        ctx.save_for_backward(pack_bits(~(out <= 0)))  # NaN passes its gradient, as threshold_backward does
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (bits,) = ctx.saved_tensors
        numel = 1
        for size in ctx.shape:
            numel *= size
        passes = unpack_bits(bits, numel).to(grad.device).view(ctx.shape)
        return torch.where(passes, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None


class _MaxPoolFromRebuild(torch.autograd.Function):
    """Max-pool whose backward rebuilds its input and indices instead of saving them."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, rebuild: Rebuild, x: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.rebuild = rebuild
        ctx.save_for_backward(x, weight, bias)
        assert rebuild.pool is not None  # MaxPoolForward records the pool before calling
        dims, kernel, stride, padding, dilation, ceil_mode = rebuild.pool
        return _POOL[dims](z, kernel, stride, padding, dilation, ceil_mode)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rebuild = ctx.rebuild
        z = rebuild.before_pool(*ctx.saved_tensors)
        assert rebuild.pool is not None
        dims, kernel, stride, padding, dilation, ceil_mode = rebuild.pool
        _, indices = _POOL[dims](z, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        dz = _POOL_BACKWARD[dims](grad, z, kernel, stride, padding, dilation, ceil_mode, indices)
        return dz, None, None, None, None


class BatchNormForward:
    """The forward of an ``nn.BatchNorm1d/2d/3d``: the module's own, plus a record that its output is rebuildable.

    Args:
        module: the BatchNorm module (its forward at construction is the one called).
    """

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.module = module
        self.original = module.forward

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        """Run the module's forward; in training mode record how to rebuild the output."""
        out = self.original(input)
        m = self.module
        if m.training and isinstance(out, torch.Tensor) and out.requires_grad and _recording(input):
            running = m.track_running_stats and m.running_mean is not None
            _remember(out, Rebuild(m.eps, running), (input, m.weight, m.bias))
        return out

    def __repr__(self) -> str:
        return f"BatchNormForward({self.module!r})"


class ReluForward:
    """The forward of an ``nn.ReLU`` that saves no float tensor (see the module docstring).

    Args:
        module: the ReLU module (``inplace`` is honoured).
    """

    def __init__(self, module: nn.ReLU) -> None:
        self.module = module
        self.original = module.forward

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        """ReLU of ``input``: rebuilt in backward when ``input`` is a BatchNorm output, else a bitmask saved."""
        if not (input.requires_grad and _recording(input)):
            return self.original(input)
        inplace = self.module.inplace
        found = rebuild_of(input)
        if found is not None and not found[0].relu and found[0].pool is None:
            rebuild, tensors = found
            out = _ReluFromRebuild.apply(input, inplace, rebuild, *tensors)
            _remember(out, replace(rebuild, relu=True), tensors)
            return out
        return _ReluBits.apply(input, inplace)

    def __repr__(self) -> str:
        return f"ReluForward({self.module!r})"


class MaxPoolForward:
    """The forward of an ``nn.MaxPool2d/3d`` that saves nothing of its own on a rebuildable input.

    Args:
        module: the max-pool module (``return_indices=False``).
    """

    def __init__(self, module: nn.MaxPool2d | nn.MaxPool3d) -> None:
        self.module = module
        self.original = module.forward
        self.dims = 2 if isinstance(module, nn.MaxPool2d) else 3

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        """Max-pool of ``input``; rebuilt in backward when ``input`` is rebuildable."""
        found = rebuild_of(input) if input.requires_grad and _recording(input) else None
        if found is None or found[0].pool is not None:
            return self.original(input)
        m = self.module
        stride = m.stride if m.stride is not None else m.kernel_size
        pool = (self.dims, m.kernel_size, stride, m.padding, m.dilation, m.ceil_mode)
        rebuild = replace(found[0], pool=pool)
        out = _MaxPoolFromRebuild.apply(input, rebuild, *found[1])
        _remember(out, rebuild, found[1])
        return out

    def __repr__(self) -> str:
        return f"MaxPoolForward({self.module!r})"


def activation_forwards(model: nn.Module) -> dict[str, Any]:
    """The saving forwards for every BatchNorm, ReLU and max-pool module of ``model``, by module name.

    Covered: ``nn.BatchNorm1d/2d/3d`` (not ``SyncBatchNorm``), ``nn.ReLU``, and
    ``nn.MaxPool2d/3d`` without ``return_indices``; modules whose forward is
    already replaced on the instance are left alone. Other activations and
    functional calls (``F.relu``) keep saving what they save.

    Args:
        model: the model.

    Returns:
        Module name to its replacement forward (install as ``module.forward``).
    """
    forwards: dict[str, Any] = {}
    for name, module in model.named_modules():
        if "forward" in module.__dict__:
            continue
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            forwards[name] = BatchNormForward(module)
        elif type(module) is nn.ReLU:
            forwards[name] = ReluForward(module)
        elif type(module) in (nn.MaxPool2d, nn.MaxPool3d) and not module.return_indices:
            forwards[name] = MaxPoolForward(module)
    return forwards
