"""Connection sensitivity: the SNIP score ``|g ⊙ w|`` of every weight.

SNIP (Lee, Ajanthan & Torr 2019) attaches an auxiliary mask ``c = 1`` to every
prunable weight and scores it by ``|∂L/∂c_j| = |w_j · ∂L/∂w_j|`` on a
mini-batch. The functions here compute that score for any set of weight tensors
of a model, leaving the model exactly as they found it: training flags,
``.grad`` fields and BatchNorm running statistics are untouched.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from snip_baseline.init import variance_scaling_init_

__all__ = ["connection_sensitivity", "eval_mode", "fresh_copy", "normalize", "variance_scaling_copy"]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each module's own ``training`` flag.

    BatchNorm then uses its running statistics (and does not update them) and
    dropout is off, as in the reference code's ``is_train=False`` scoring pass.
    Flags are restored per module, so a model that mixes modes comes back as it was.

    Args:
        model: the model.

    Yields:
        The model, in eval mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _to_device(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    return obj


def connection_sensitivity(model: nn.Module, weights: Mapping[str, torch.Tensor],
                           batches: Iterable[tuple[Any, torch.Tensor]],
                           loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """Unnormalised SNIP scores ``|g ⊙ w|`` for the given weight tensors.

    ``g`` is the gradient of ``loss_fn(model(x), y)`` with respect to each
    weight; with several batches it is the mean of the per-batch gradients
    (the gradient of the mean loss over equally sized batches). The model runs
    in eval mode (see :func:`eval_mode`). Gradients are taken with
    :func:`torch.autograd.grad`, so no ``.grad`` field of the model is written
    and optimizer state is never touched.

    Args:
        model: the model whose forward is evaluated.
        weights: name to weight parameter (each must require grad and take part
            in ``model``'s forward; a weight the loss does not reach scores 0).
        batches: ``(x, y)`` pairs; ``x`` (a tensor, or a list/tuple of tensors
            passed as positional arguments) and ``y`` are moved to the device of
            the first weight.
        loss_fn: ``loss_fn(output, y) -> scalar``; default
            :func:`torch.nn.functional.cross_entropy` (also correct for models
            that return log-probabilities, since ``log_softmax`` is idempotent).

    Returns:
        Name to a tensor shaped like the weight, ``|w ⊙ g|``, in the weight's
        dtype promoted to at least float32.

    Raises:
        ValueError: ``batches`` is empty, or ``weights`` is empty.
        RuntimeError: the loss is not a scalar or not finite.
    """
    if not weights:
        raise ValueError("connection_sensitivity needs at least one weight tensor")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    names = list(weights)
    params = [weights[n] for n in names]
    device = params[0].device
    # float32 at least (half-precision weights), float64 kept for float64 models.
    dtypes = [torch.promote_types(p.dtype, torch.float32) for p in params]
    sums = [torch.zeros_like(p, dtype=dt) for p, dt in zip(params, dtypes, strict=True)]
    count = 0
    with eval_mode(model), torch.enable_grad():
        for x, y in batches:
            x, y = _to_device(x, device), _to_device(y, device)
            out = model(*x) if isinstance(x, (list, tuple)) else model(x)
            loss = loss_fn(out, y)
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise RuntimeError(f"SNIP scoring: loss_fn must return a scalar tensor, got {type(loss).__name__}"
                                   f"{'' if not torch.is_tensor(loss) else f' of shape {tuple(loss.shape)}'}")
            if not torch.isfinite(loss.detach()).all():
                raise RuntimeError(f"SNIP scoring: the loss on scoring batch {count} is not finite ({loss.item()})")
            grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
            for acc, g in zip(sums, grads, strict=True):
                if g is not None:
                    acc.add_(g.detach().to(acc.dtype))
            count += 1
    if count == 0:
        raise ValueError("SNIP scoring: the scoring data yielded no batch")
    with torch.no_grad():
        return {n: (p.detach().to(acc.dtype) * (acc / count)).abs()
                for n, p, acc in zip(names, params, sums, strict=True)}


def normalize(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Divide every score by the sum over all tensors: ``s_j = |g_j| / Σ_k |g_k|`` (global).

    Args:
        scores: name to non-negative score tensor.

    Returns:
        Name to normalised scores (they sum to 1 over all tensors).

    Raises:
        ValueError: every score is zero, so the normalisation is undefined.
    """
    total = sum(float(s.double().sum()) for s in scores.values())
    if not total > 0.0:
        raise ValueError("every connection sensitivity is zero; the loss does not depend on any sparse weight "
                         "on the scoring data")
    return {n: s / total for n, s in scores.items()}


def fresh_copy(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> nn.Module:
    """A deep copy of ``model`` with the weights of the named modules redrawn by ``xavier_normal_``.

    This is the scoring model of the official code's two-initialisation setup:
    snip-public prunes on a separately sampled (variance-scaling) set of
    weights and trains a different sample; the widely used PyTorch port
    redraws a deep copy with :func:`torch.nn.init.xavier_normal_`, as done here.
    Only the named modules' ``weight`` tensors are redrawn (biases and
    normalisation layers are copied as they are). Values are drawn on the CPU
    from ``generator`` and copied to each weight's device, so the draw is
    reproducible on any device.

    Args:
        model: the model to copy (left untouched).
        names: qualified module names whose ``weight`` is redrawn.
        generator: a CPU :class:`torch.Generator`.

    Returns:
        The copy.
    """
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    with torch.no_grad():
        for name in names:
            weight = modules[name].weight
            draw = torch.empty(weight.shape, dtype=torch.float32)
            nn.init.xavier_normal_(draw, generator=generator)
            weight.copy_(draw)
    return clone


def variance_scaling_copy(model: nn.Module, generator: torch.Generator, biases: str = "zeros") -> nn.Module:
    """A deep copy of ``model`` drawn as snip-public draws the parameters it scores (``weights_bp``).

    Every linear and convolution layer's weight is drawn by
    :func:`snip_baseline.init.variance_scaling_` (``initializer_w_bp="vs"``), layer by layer in model
    order, from ``generator``; its bias is zero (``initializer_b_bp="zeros"``, snip-public's default
    since its commit f028496) or, with ``biases="variance_scaling"``, drawn like the weights (the
    default of its first release, b00bef0). Everything else is copied as it is.

    Args:
        model: the model to copy (left untouched).
        generator: a CPU :class:`torch.Generator`.
        biases: ``"zeros"`` or ``"variance_scaling"``.

    Returns:
        The copy.

    Raises:
        ValueError: an unknown ``biases`` value.
    """
    return variance_scaling_init_(copy.deepcopy(model), generator, biases=biases)
