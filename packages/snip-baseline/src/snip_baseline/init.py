"""snip-public's weight initialisation: TF1 ``tf.variance_scaling_initializer()`` with its defaults.

The defaults are ``scale=1.0, mode="fan_in"`` and a normal distribution
truncated at two standard deviations, whose standard deviation is divided by
0.87962566103423978 so that the truncated draw has variance ``1 / fan_in``.
``fan_in`` follows TF's rule: for a tensor of two or more dims it is the
number of inputs each output sees (``in_features`` of a linear weight,
``in_channels / groups * kernel size`` of a convolution weight), and for a
one-dimensional tensor (a bias) it is its length.

snip-public draws two sets of parameters: the ones it scores (``weights_bp``)
and the ones it trains (``weights_ap``), both variance-scaling weights with
zero biases. (Its first release, commit b00bef0, drew the scored biases by
variance scaling too; commit f028496 made zeros the default.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["INIT_LAYER_TYPES", "TRUNCATION_STD_CORRECTION", "fan_in", "variance_scaling_", "variance_scaling_init_"]

#: The modules whose ``weight`` and ``bias`` :func:`variance_scaling_init_` draws.
INIT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Standard deviation of a unit normal truncated at two standard deviations (TF1's correction constant).
TRUNCATION_STD_CORRECTION = 0.87962566103423978


def fan_in(tensor: torch.Tensor) -> int:
    """TF's ``fan_in`` of a PyTorch-layout tensor: ``prod(shape[1:])`` for 2+ dims, the length for 1 dim, else 1."""
    if tensor.dim() == 0:
        return 1
    if tensor.dim() == 1:
        return tensor.shape[0]
    return math.prod(tensor.shape[1:])


def variance_scaling_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place from a normal of variance ``1 / fan_in`` truncated at two standard deviations.

    The values are drawn on the CPU in float32 (from ``generator``, or the
    global generator when ``None``) and copied into ``tensor``, so the same
    generator state gives the same values on every device and dtype.

    Args:
        tensor: the tensor to fill (its dtype and device are kept).
        generator: a CPU :class:`torch.Generator`, or ``None``.

    Returns:
        ``tensor``.
    """
    std = math.sqrt(1.0 / fan_in(tensor)) / TRUNCATION_STD_CORRECTION
    draw = torch.empty(tensor.shape, dtype=torch.float32)
    nn.init.trunc_normal_(draw, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)
    with torch.no_grad():
        tensor.copy_(draw)
    return tensor


def variance_scaling_init_(model: nn.Module, generator: torch.Generator | None = None,
                           biases: str = "zeros") -> nn.Module:
    """Draw every linear and convolution layer of ``model`` as snip-public does.

    Weights are drawn with :func:`variance_scaling_`, layer by layer in model
    order. Other parameters (normalisation layers, embeddings) are left as
    they are.

    Args:
        model: the model, changed in place.
        generator: a CPU :class:`torch.Generator`, or ``None`` for the global one.
        biases: ``"zeros"`` (snip-public's ``initializer_b_ap`` and ``initializer_b_bp``) or
            ``"variance_scaling"`` (``initializer_b_bp`` of its first release).

    Returns:
        ``model``.

    Raises:
        ValueError: an unknown ``biases`` value.
    """
    if biases not in ("zeros", "variance_scaling"):
        raise ValueError(f"biases must be 'zeros' or 'variance_scaling', got {biases!r}")
    for module in model.modules():
        if not isinstance(module, INIT_LAYER_TYPES):
            continue
        variance_scaling_(module.weight, generator)
        if module.bias is None:
            continue
        if biases == "zeros":
            with torch.no_grad():
                module.bias.zero_()
        else:
            variance_scaling_(module.bias, generator)
    return model
