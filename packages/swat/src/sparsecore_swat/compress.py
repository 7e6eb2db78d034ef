"""Compact storage of sparse activations between forward and backward.

A sparse tensor is kept as a bitmask packed eight positions to a byte plus
the kept values in position order. For ``n`` float32 entries of which a
fraction ``keep`` survive, that is ``n/8 + 4*keep*n`` bytes instead of
``4n``: 77 % less at ``keep = 0.2`` and 87 % less at ``keep = 0.1``. A
bitmask beats 32-bit indices whenever ``keep > 1/32``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    shifts = _SHIFTS_CACHE.get(device)
    if shifts is None:
        shifts = torch.arange(8, dtype=torch.uint8, device=device)
        _SHIFTS_CACHE[device] = shifts
    return shifts


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into a flat ``uint8`` tensor, eight positions per byte (LSB first).

    Args:
        mask: bool tensor of any shape.

    Returns:
        ``uint8`` tensor of ``ceil(mask.numel() / 8)`` bytes.
    """
    flat = mask.reshape(-1)
    if flat.device.type == "cpu":
        # numpy's packbits is ~100x faster than the tensor arithmetic below on CPU.
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) << _shifts(mask.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor of ``numel`` entries."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=numel, bitorder="little").view(np.bool_))
    bits = (packed.unsqueeze(1) >> _shifts(packed.device)) & 1
    return bits.reshape(-1)[:numel].bool()


class SparseActivation(NamedTuple):
    """A tensor stored as packed mask bits and its kept values.

    Attributes:
        bits: ``uint8`` packed mask from :func:`pack_bits`.
        values: the kept entries in flattened (row-major) order.
        shape: shape of the dense tensor.
    """

    bits: torch.Tensor
    values: torch.Tensor
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        """Bytes held by the two tensors."""
        return self.bits.numel() * self.bits.element_size() + self.values.numel() * self.values.element_size()


def compress(tensor: torch.Tensor, mask: torch.Tensor) -> SparseActivation:
    """Keep the entries of ``tensor`` where ``mask`` is ``True``, in compact form.

    Args:
        tensor: dense tensor.
        mask: bool tensor shaped like ``tensor``.

    Returns:
        The :class:`SparseActivation`.
    """
    return SparseActivation(pack_bits(mask), tensor[mask], tensor.shape)


def decompress(bits: torch.Tensor, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rebuild the dense tensor (zeros outside the mask) from :func:`compress`'s parts."""
    numel = 1
    for size in shape:
        numel *= size
    mask = unpack_bits(bits, numel)
    out = values.new_zeros(numel)
    out.masked_scatter_(mask, values)
    return out.view(shape)
