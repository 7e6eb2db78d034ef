"""SWAT's autograd path for linear and convolution layers.

Forward: ``y = op(x, topK(W)) + b`` with the dense input ``x``.
Backward: ``dx`` from ``topK(W)``; ``dW`` (dense-shaped, so every weight keeps
training) from ``dy`` against ``topK(x)``, the top-K of the whole input tensor,
batch included; ``db = sum(dy)``.

Only what backward needs is saved: the weight parameter itself (no copy), the
0-dim thresholds (the weight selection is recomputed from them, which is exact
because autograd forbids modifying the weight in between), and the input
activations compressed as a packed bitmask plus the kept values
(:mod:`sparsecore_swat.compress`), or, when the input is a BatchNorm output
(after ReLU / max-pool) recorded by :mod:`sparsecore_swat.activations`, only
the activation threshold beside the BatchNorm input, which BatchNorm saves
anyway: backward recomputes the input and its top-K.

Under ``torch.autocast`` the layers follow autocast's rule for linear and
convolution: the products run in the autocast dtype (e.g. bfloat16 on CPU)
and the output has that dtype. The top-K selections are taken on the tensors
as they come in (the fp32 master weights), so they are the selections of the
fp32 run; the kept activations are stored in the autocast dtype, and the
gradients are returned in the dtypes of the inputs (fp32 for fp32 weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sparsecore import ConfigurationError
from sparsecore_swat import topk
from sparsecore_swat.activations import rebuild_of
from sparsecore_swat.compress import compress, decompress
from sparsecore_swat.state import TopKState

_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def _used_weight(weight: torch.Tensor, threshold: torch.Tensor | None, structure: str | None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight with only its selected entries, cast to the compute ``dtype`` (``None``: as it is)."""
    if threshold is not None:
        weight = topk.selected_weight(weight, threshold, structure)
    return _cast(weight, dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes linear and convolution layers in on ``device_type``, or ``None`` when it is off."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


@overload
def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor: ...


@overload
def _cast(t: None, dtype: torch.dtype | None) -> None: ...


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` by autocast's rule: only floating tensors other than float64 are cast."""
    if t is None or dtype is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _start(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.dtype | None:
    """Record the input dtypes (gradients are returned in them) and return the compute dtype."""
    ctx.dtype = _autocast_dtype(x.device.type)
    ctx.x_dtype, ctx.weight_dtype = x.dtype, weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype
    return ctx.dtype


def _save(ctx: Any, x: torch.Tensor, weight: torch.Tensor, w_thr: torch.Tensor | None,
          x_thr: torch.Tensor | None) -> None:
    """Save the weight (the parameter, no copy) and what rebuilds the top-K input (only if dW is needed).

    The activation selection is taken on ``x`` as it came in; the kept values
    are stored in the compute dtype (``ctx.dtype``), which backward uses. When
    ``x`` can be recomputed exactly from tensors other modules save anyway
    (:func:`sparsecore_swat.activations.rebuild_of`: a BatchNorm input), only
    the activation threshold is saved beside those tensors.
    """
    need_dw = ctx.needs_input_grad[1]
    tensors: list[torch.Tensor | None] = [weight, w_thr]
    ctx.x_shape = x.shape
    ctx.x_mode = "none"
    ctx.x_rebuild = None
    if not need_dw:
        pass
    elif x_thr is None:
        ctx.x_mode = "dense"
        tensors.append(_cast(x, ctx.dtype))
    else:
        found = rebuild_of(x)
        if found is not None:
            ctx.x_mode = "rebuild"
            ctx.x_rebuild = found[0]
            tensors += [x_thr, *found[1]]
        else:
            ctx.x_mode = "compressed"
            packed = compress(_cast(x, ctx.dtype), topk.above(x.abs(), x_thr))
            tensors += [packed.bits, packed.values]
    ctx.save_for_backward(*tensors)


def _in_input_dtypes(ctx: Any, dx: torch.Tensor | None, dw: torch.Tensor | None,
                     db: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Gradients cast back to the dtypes of the inputs they belong to (no-ops outside autocast)."""
    return (None if dx is None else dx.to(ctx.x_dtype),
            None if dw is None else dw.to(ctx.weight_dtype),
            None if db is None else db.to(ctx.bias_dtype))


def _saved(ctx: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Return ``(weight, weight threshold, input with only its top-K entries)`` from the context."""
    weight, w_thr, *rest = ctx.saved_tensors
    if ctx.x_mode == "compressed":
        return weight, w_thr, decompress(rest[0], rest[1], ctx.x_shape)
    if ctx.x_mode == "rebuild":
        x_thr, *sources = rest
        x = ctx.x_rebuild(*sources)
        kept = topk.above(x.abs(), x_thr)
        x = _cast(x, ctx.dtype)
        return weight, w_thr, torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return weight, w_thr, (rest[0] if ctx.x_mode == "dense" else None)


class SwatLinearFunction(torch.autograd.Function):
    """``y = x @ topK(W).T + b`` with SWAT's backward (see the module docstring).

    ``apply(x, weight, bias, weight_threshold, activation_threshold, structure, products, densities)``;
    a ``None`` threshold keeps that side dense. ``products`` (a
    ``sparsecore.products.SparseProducts`` or ``None``) runs the top-K-weight
    products (forward, input gradient) and the top-K-activation weight
    gradient on a kernel wherever it accepts them; the dense ops run elsewhere
    and under autocast. ``densities`` is ``(weight density, activation
    density)``, which guides the kernel's choice.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                w_thr: torch.Tensor | None, x_thr: torch.Tensor | None, structure: str | None,
                products: Any = None, densities: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """Linear forward with the top-K weights; saves the compressed top-K input."""
        ctx.structure = structure
        ctx.has_bias = bias is not None
        dtype = _start(ctx, x, weight, bias)
        _save(ctx, x, weight, w_thr, x_thr)
        ctx.products = products if dtype is None else None
        ctx.operand = None
        ctx.activation_density = densities[1]
        x2 = x.reshape(-1, x.shape[-1])
        if ctx.products is not None and w_thr is not None:
            ctx.operand = ctx.products.weight_operand(
                weight, lambda: topk.weight_mask(weight, w_thr, structure), x2, densities[0])
        if ctx.operand is None:
            return F.linear(_cast(x, dtype), _used_weight(weight, w_thr, structure, dtype), _cast(bias, dtype))
        y = ctx.products.mm_weight_t(x2, ctx.operand)
        if bias is not None:
            y = y + bias
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``dx = dy @ topK(W)``, ``dW = dy.T @ topK(x)``, ``db = sum(dy)``."""
        weight, w_thr, x = _saved(ctx)
        grad2 = _cast(grad, ctx.dtype).reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            if ctx.operand is not None:
                dx = ctx.products.mm_weight(grad2, ctx.operand).view(ctx.x_shape)
            else:
                dx = (grad2 @ _used_weight(weight, w_thr, ctx.structure, ctx.dtype)).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            assert x is not None  # saved whenever the weight needs a gradient
            x2 = x.reshape(-1, x.shape[-1])
            if ctx.products is not None and ctx.x_mode != "dense":
                dw = ctx.products.grad_weight(grad2, x2, ctx.activation_density)
            if dw is None:
                dw = grad2.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad2.sum(0)
        ctx.operand = None
        return (*_in_input_dtypes(ctx, dx, dw, db), None, None, None, None, None)


class SwatConvFunction(torch.autograd.Function):
    """N-d convolution (1-d, 2-d, 3-d) with the top-K weights and SWAT's backward.

    ``apply(x, weight, bias, weight_threshold, activation_threshold, structure,
    stride, padding, dilation, groups)`` with integer-tuple ``padding``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                w_thr: torch.Tensor | None, x_thr: torch.Tensor | None, structure: str | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int) -> torch.Tensor:
        """Convolution forward with the top-K weights; saves the compressed top-K input."""
        ctx.structure = structure
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        dtype = _start(ctx, x, weight, bias)
        _save(ctx, x, weight, w_thr, x_thr)
        conv = _CONV[weight.dim()]
        return conv(_cast(x, dtype), _used_weight(weight, w_thr, structure, dtype), _cast(bias, dtype),
                    stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``dx`` against the top-K weights and ``dW`` against the top-K input, in one aten call."""
        weight, w_thr, x = _saved(ctx)
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_db = ctx.bias_sizes is not None and ctx.needs_input_grad[2]
        stride, padding, dilation, groups = ctx.conv
        grad = _cast(grad, ctx.dtype)
        # dx reads only the input's shape; dW reads only the weight's shape.
        if x is None:
            x = grad.new_zeros(ctx.x_shape)
        w = _used_weight(weight, w_thr, ctx.structure, ctx.dtype) if need_dx else _cast(weight, ctx.dtype)
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad, x, w, ctx.bias_sizes, stride, padding, dilation, False,
            [0] * len(stride), groups, [need_dx, need_dw, need_db])
        return (*_in_input_dtypes(ctx, dx, dw, db), None, None, None, None, None, None, None)


def _check_state_kind(state: TopKState, kind: str) -> None:
    if state.layer_kind != kind:
        raise ConfigurationError(f"swat: a {kind} layer needs a TopKState(layer_kind={kind!r}), got layer_kind="
                         f"{state.layer_kind!r}")


def swat_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: TopKState,
                training: bool = True, products: Any = None) -> torch.Tensor:
    """SWAT linear layer.

    Args:
        x: input ``(*, in_features)``.
        weight: dense weight ``(out_features, in_features)``.
        bias: bias or ``None`` (never sparsified).
        state: the layer's :class:`TopKState` (``layer_kind="linear"``: exact
            top-K on every call, whatever its period); a training call advances it.
        training: ``False`` (or autograd disabled) runs inference: the exact
            top-K weights, nothing saved, the state untouched.
        products: a ``sparsecore.products.SparseProducts`` (from a kernel
            plugin) that runs the training products sparsely, or ``None``.

    Returns:
        The output ``(*, out_features)``.

    Raises:
        sparsecore.ConfigurationError: ``state`` was built for a convolution.
    """
    _check_state_kind(state, "linear")
    if state.dense:
        return F.linear(x, weight, bias)
    if not (training and torch.is_grad_enabled()):
        return F.linear(x, weight * state.inference_weight_mask(weight), bias)
    w_thr, x_thr = state.training_thresholds(weight, x)
    return SwatLinearFunction.apply(x, weight, bias, w_thr, x_thr, state.structure, products,
                                    (state.weight_density, state.activation_density))


def swat_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: TopKState,
              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int = 1,
              training: bool = True) -> torch.Tensor:
    """SWAT convolution (1-d, 2-d or 3-d, chosen by ``weight.dim()``).

    Args:
        x: input ``(N, C_in, *spatial)``.
        weight: dense weight ``(C_out, C_in / groups, *kernel)``.
        bias: bias or ``None`` (never sparsified).
        state: the layer's :class:`TopKState` (``layer_kind="conv"``; with
            ``period > 1`` the activation threshold is reused between
            recomputes, and so is the weight threshold of unstructured
            weights); a training call advances it.
        stride: per-dim stride.
        padding: per-dim symmetric zero padding (integers).
        dilation: per-dim dilation.
        groups: convolution groups.
        training: ``False`` (or autograd disabled) runs inference with the exact top-K weights.

    Returns:
        The convolution output.

    Raises:
        ValueError: a weight of the wrong rank.
        sparsecore.ConfigurationError: ``state`` was built for a linear layer.
    """
    _check_state_kind(state, "conv")
    if weight.dim() not in _CONV:
        raise ValueError(f"swat: convolution weight must have 3 to 5 dims, got shape {tuple(weight.shape)}")
    conv = _CONV[weight.dim()]
    if state.dense:
        return conv(x, weight, bias, stride, padding, dilation, groups)
    if not (training and torch.is_grad_enabled()):
        return conv(x, weight * state.inference_weight_mask(weight), bias, stride, padding, dilation, groups)
    w_thr, x_thr = state.training_thresholds(weight, x)
    return SwatConvFunction.apply(x, weight, bias, w_thr, x_thr, state.structure,
                                  tuple(stride), tuple(padding), tuple(dilation), groups)


def _conv_padding(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Turn the module's padding (mode, ``"same"``/``"valid"``) into a padded input and integer padding."""
    dims = len(module.kernel_size)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pads = [(0, 0)] * dims
        else:  # "same" (stride 1): total padding dilation*(k-1), extra on the right as PyTorch does
            totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
            pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in module.padding]
    if module.padding_mode == "zeros" and all(lo == hi for lo, hi in pads):
        return x, tuple(lo for lo, _ in pads)
    flat: list[int] = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, flat, mode=mode), (0,) * dims


def layer_kind_of(module: nn.Module) -> str:
    """``"linear"`` for ``nn.Linear``, ``"conv"`` for ``nn.Conv1d/2d/3d``.

    Raises:
        TypeError: any other module type (including transposed convolutions).
    """
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    raise TypeError(f"swat: cannot run {type(module).__name__} sparsely; "
                    "supported: Linear, Conv1d, Conv2d, Conv3d")


class SwatForward:
    """A callable that runs a ``Linear`` or ``Conv1d/2d/3d`` module through SWAT.

    Installed as the module's ``forward`` (by the engine through the
    ``layer_forward`` hook, or by :func:`install`). Training calls advance
    :attr:`state`; ``module.eval()`` uses the exact top-K weights.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv1d``/``Conv2d``/``Conv3d`` (not transposed).
        state: the layer's :class:`TopKState`.
        products: sparse products from a kernel plugin
            (``sparsecore.products.SparseProducts``) that a ``Linear`` layer's
            training calls run on; ``None``: dense ops.

    Raises:
        TypeError: for any other module type.
        sparsecore.ConfigurationError: ``state`` was built for the other layer kind.
    """

    def __init__(self, module: nn.Module, state: TopKState, products: Any = None) -> None:
        self.kind = layer_kind_of(module)
        _check_state_kind(state, self.kind)
        self.module = module
        self.state = state
        self.products = products

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        """Run the module's forward with SWAT's top-K weights and activations."""
        m = self.module
        if self.kind == "linear":
            assert isinstance(m, nn.Linear)  # layer_kind_of admitted it
            return swat_linear(input, m.weight, m.bias, self.state, m.training, self.products)
        assert isinstance(m, nn.modules.conv._ConvNd)
        x, padding = _conv_padding(m, input)
        return swat_conv(x, m.weight, m.bias, self.state, m.stride, padding, m.dilation, m.groups, m.training)

    def __repr__(self) -> str:
        return f"SwatForward({type(self.module).__name__}, {self.state!r})"


def install(module: nn.Module, weight_density: float, activation_density: float | None = None,
            period: int = 1, structure: str | None = None) -> TopKState:
    """Run one module through SWAT without the engine (tests, benchmarks, custom loops).

    Args:
        module: an ``nn.Linear`` or ``nn.Conv1d``/``Conv2d``/``Conv3d``.
        weight_density: weight keep fraction.
        activation_density: activation keep fraction (``None`` = ``weight_density``).
        period: threshold recompute period in training calls of an epoch
            (honoured by convolutions: both thresholds for unstructured
            weights, the activation threshold for structured ones; linear
            layers are exact every call). Call ``state.start_epoch()`` at each
            epoch start to restart the count, as the engine's SWAT does.
        structure: ``None``, ``"channel"`` or ``"filter"``.

    Returns:
        The module's :class:`TopKState`. ``uninstall(module)`` restores the forward.

    Raises:
        TypeError: ``module`` is not a supported layer.
        sparsecore.ConfigurationError: a density, period or structure that is not valid.
    """
    state = TopKState(weight_density, activation_density, period, structure, layer_kind_of(module))
    module.forward = SwatForward(module, state)
    return state


def uninstall(module: nn.Module) -> None:
    """Restore the module's own forward after :func:`install`."""
    if isinstance(module.__dict__.get("forward"), SwatForward):
        del module.forward


def swat_forward_of(module: nn.Module) -> SwatForward | None:
    """The :class:`SwatForward` installed on ``module`` (by the engine or :func:`install`), or ``None``."""
    forward = module.__dict__.get("forward")
    return forward if isinstance(forward, SwatForward) else None
