"""Keeping masks identical on every ``torch.distributed`` rank, and masks of FSDP2-sharded weights.

Under DDP every rank holds whole weights and whole masks; the engine
broadcasts rank 0's masks after every change (:func:`broadcast_masks`).

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a weight is a ``DTensor``
holding one shard per rank, and its mask is a ``DTensor`` sharded the same
way (same mesh and placements; :func:`shard_like`), so masking weights,
gradients and optimizer state stays local to each shard. A topology update
needs whole tensors: the engine gathers every mask with :func:`full_tensor`
for the cycle (:func:`full_masks`), every rank runs the same selection with
the same generator state, and the new masks are scattered back from rank 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.distributed as dist

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.tensor import DTensor

    from sparsecore.layers import SparseLayer

#: ``torch.distributed.tensor`` takes seconds to import; a DTensor can only exist once it is imported.
_DTENSOR_MODULE = "torch.distributed.tensor"


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_dtensor(tensor: Any) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP2-sharded parameter, its gradient, state or mask)."""
    module = sys.modules.get(_DTENSOR_MODULE)
    return module is not None and isinstance(tensor, module.DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor as a plain ``torch.Tensor``: a ``DTensor`` is gathered from its shards, anything else
    is returned as it is.

    Gathering is a collective: every rank of the ``DTensor``'s mesh must call it, in the same order.
    """
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def shard_like(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mask`` laid out like ``weight``: a ``DTensor`` with the weight's mesh and placements when the weight
    is one (rank 0's copy of a whole ``mask`` is scattered to every rank), else the whole plain mask.

    A mask that is already a ``DTensor`` placed like the weight is returned unchanged. Collective for
    sharded weights.
    """
    if is_dtensor(weight):
        if is_dtensor(mask) and mask.device_mesh == weight.device_mesh and mask.placements == weight.placements:
            return mask
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full_tensor(mask), weight.device_mesh, weight.placements)
    return full_tensor(mask)


def count_nonzero(tensor: torch.Tensor) -> int:
    """Non-zero entries of the whole tensor (summed over the shards of a ``DTensor``: a collective)."""
    count = torch.count_nonzero(tensor)
    return int(full_tensor(count))


@contextmanager
def full_masks(layers: Mapping[str, SparseLayer]) -> Iterator[None]:
    """Within the block every layer's ``mask`` is the whole plain mask; sharded masks are put back after.

    The engine runs ``init_masks`` and every topology update inside it, so
    plugins and the :mod:`sparsecore.selection` helpers see whole masks
    whether or not the model is sharded.
    """
    sharded = {name: layer.mask for name, layer in layers.items() if is_dtensor(layer.mask)}
    for name, mask in sharded.items():
        layers[name].mask = full_tensor(mask)
    try:
        yield
    finally:
        for name, mask in sharded.items():
            layers[name].mask = mask


def broadcast_masks(masks: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite every mask (in place) with rank ``src``'s copy."""
    for mask in masks:
        buf = mask.to(device=_comm_device(mask), dtype=torch.uint8)
        dist.broadcast(buf, src=src)
        mask.copy_(buf.to(device=mask.device, dtype=torch.bool))


def _comm_device(tensor: torch.Tensor) -> torch.device:
    backend = dist.get_backend()
    return tensor.device if backend != "gloo" else torch.device("cpu")


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every rank."""
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=src)
    return int(t.item())
