"""torchvision-backed sources: MNIST, Fashion-MNIST, CIFAR from files/downloads; ImageNet streaming."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetUnavailableError
from .split import Augmentation

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "StreamingSplit", "imagenet_splits", "read_torchvision"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


def _import_torchvision(what: str):
    try:
        import torchvision
    except ImportError as exc:
        raise DatasetUnavailableError(
            f"{what} needs torchvision, which is not installed: pip install torchvision"
        ) from exc
    return torchvision


def _to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    x = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ds.data))
    if x.dim() == 4:  # CIFAR stores (N, H, W, C)
        x = x.permute(0, 3, 1, 2).contiguous()
    y = ds.targets if isinstance(ds.targets, torch.Tensor) else torch.as_tensor(ds.targets)
    return x.to(torch.uint8), y.to(torch.int64)


def read_torchvision(
    name: str, data_dir: str | os.PathLike[str], download: bool
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Loads a torchvision dataset once and returns its raw tensors.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"cifar100"``.
        data_dir: torchvision ``root`` directory.
        download: Whether torchvision may download missing files.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images ``(N, C, H, W)``
        (``(N, H, W)`` for the MNISTs) and int64 labels.

    Raises:
        DatasetUnavailableError: If torchvision is missing or the files are not
            in ``data_dir`` and ``download`` is false.
    """
    torchvision = _import_torchvision(f"dataset {name!r} from {data_dir}")
    cls = getattr(torchvision.datasets, _CLASSES[name])
    try:
        parts = tuple(_to_tensors(cls(root=str(data_dir), train=train, download=download)) for train in (True, False))
    except RuntimeError as exc:
        hint = "pass --download (download=True) to fetch it" if not download else "check the network connection"
        raise DatasetUnavailableError(
            f"dataset {name!r} was not found under {data_dir} ({exc}); {hint}, "
            f"or put torchvision's {_CLASSES[name]} files there"
        ) from exc
    return parts  # type: ignore[return-value]


class StreamingSplit:
    """A split read from an image folder by a DataLoader, with :class:`DataSplit`'s interface.

    For datasets too large for memory (ImageNet). Images are decoded by
    ``num_workers`` worker processes; the sample order comes from the
    ``generator`` given to :meth:`batches`.

    Args:
        root: An ``ImageFolder`` directory (one subdirectory per class).
        train: Whether this is a training split (``augment=True`` then means
            ``RandomResizedCrop(224)`` + horizontal flip).
        image_size: Side of the square network input.
        num_workers: DataLoader worker processes.
        device: Device the batches are moved to.

    Raises:
        DatasetUnavailableError: If torchvision is missing or ``root`` is not a directory.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool,
        image_size: int = 224,
        num_workers: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        torchvision = _import_torchvision("ImageNet")
        if not Path(root).is_dir():
            raise DatasetUnavailableError(f"ImageNet split directory {root} does not exist")
        self.root = Path(root)
        self.train = train
        self.image_size = image_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.device = torch.device(device)
        self.augmentation: Augmentation | None = None
        self._folder = torchvision.datasets.ImageFolder(str(self.root))
        self.classes = self._folder.classes

    def __len__(self) -> int:
        return len(self._folder)

    def __repr__(self) -> str:
        return f"StreamingSplit(root={str(self.root)!r}, samples={len(self)}, classes={len(self.classes)})"

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields per epoch (see :meth:`DataSplit.num_batches`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return len(self) // batch_size if drop_last else math.ceil(len(self) / batch_size)

    def _transform(self, random_crop: bool):
        import torchvision.transforms as T

        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if random_crop:
            return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
        resize = round(self.image_size * 256 / 224)
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size), T.ToTensor(), normalize])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        augment: bool | Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterates over one epoch of ``(x, y)`` batches (see :meth:`DataSplit.batches`).

        ``augment=True`` applies the standard ImageNet training crops (random
        resized crop and flip, per image in the workers); otherwise images are
        resized and centre-cropped. A callable is applied to each batch.
        """
        self.num_batches(batch_size)
        batch_fn = augment if callable(augment) else None
        folder = self._folder
        folder.transform = self._transform(random_crop=augment is True)  # workers pickle it when iteration starts
        if shuffle:
            order = torch.randperm(
                len(folder), generator=generator, device="cpu" if generator is None else generator.device
            )
            sampler: Sequence[int] = order.cpu().tolist()
        else:
            sampler = range(len(folder))
        loader = torch.utils.data.DataLoader(
            folder,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if batch_fn is not None:
                x = batch_fn(x, generator)
            yield x, y


def imagenet_splits(
    data_dir: str | os.PathLike[str] | None, device: torch.device | str = "cpu"
) -> tuple[StreamingSplit, StreamingSplit]:
    """Builds streaming ImageNet splits from ``data_dir/train`` and ``data_dir/val``.

    Args:
        data_dir: Directory with ``train/`` and ``val/`` in ImageFolder layout
            (one subdirectory per class, e.g. ``n01440764/``).
        device: Device the batches are moved to.

    Returns:
        ``(train, val)`` streaming splits.

    Raises:
        DatasetUnavailableError: If ``data_dir`` is missing or lacks ``train/``/``val/``.
    """
    how = (
        "ImageNet cannot be downloaded automatically; get ILSVRC2012 from https://image-net.org, "
        "arrange it as DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG, and pass --data-dir DIR"
    )
    if data_dir is None:
        raise DatasetUnavailableError(f"no ImageNet directory given. {how}")
    root = Path(data_dir)
    missing = [sub for sub in ("train", "val") if not (root / sub).is_dir()]
    if missing:
        raise DatasetUnavailableError(f"{root} has no {' or '.join(missing)}/ directory. {how}")
    return StreamingSplit(root / "train", True, device=device), StreamingSplit(root / "val", False, device=device)
