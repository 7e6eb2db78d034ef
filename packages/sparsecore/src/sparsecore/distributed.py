"""Keeping masks and random generators identical on every ``torch.distributed`` rank."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(tensor: torch.Tensor) -> torch.device:
    backend = dist.get_backend()
    return tensor.device if backend != "gloo" else torch.device("cpu")


def broadcast_masks(masks: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite every mask (in place) with rank ``src``'s copy."""
    for mask in masks:
        buf = mask.to(device=_comm_device(mask), dtype=torch.uint8)
        dist.broadcast(buf, src=src)
        mask.copy_(buf.to(device=mask.device, dtype=torch.bool))


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every rank."""
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=src)
    return int(t.item())
