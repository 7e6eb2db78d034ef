"""IDX files (the MNIST/Fashion-MNIST format) and Debian's Fashion-MNIST package."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetIntegrityError, DatasetUnavailableError

__all__ = ["FASHION_MNIST_APT", "FASHION_MNIST_DEBIAN_DIR", "find_fashion_mnist_dir", "read_fashion_mnist", "read_idx"]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install dataset-fashion-mnist"
_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an unsigned-byte IDX file (gzip-compressed if its name ends in ``.gz``).

    Args:
        path: The file.

    Returns:
        A uint8 array with the dimensions stored in the header.

    Raises:
        DatasetIntegrityError: If the header is not an unsigned-byte IDX header
            or the payload size does not match it.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetIntegrityError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) - offset != int(np.prod(dims)):
        raise DatasetIntegrityError(f"{path}: header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def find_fashion_mnist_dir() -> Path | None:
    """Finds the Fashion-MNIST files of Debian's ``dataset-fashion-mnist`` package.

    Looks in ``/usr/share/datasets/fashion-mnist`` first, then asks ``dpkg -L``.

    Returns:
        The directory holding the four ``.gz`` files, or ``None``.
    """
    if all((FASHION_MNIST_DEBIAN_DIR / name).is_file() for name in _FILES.values()):
        return FASHION_MNIST_DEBIAN_DIR
    if shutil.which("dpkg") is None:
        return None
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing:
        if line.endswith("/" + _FILES["x_train"]):
            directory = Path(line).parent
            if all((directory / name).is_file() for name in _FILES.values()):
                return directory
    return None


def read_fashion_mnist(
    directory: str | os.PathLike[str] | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Reads Fashion-MNIST from a directory of the four original ``.gz`` IDX files.

    Args:
        directory: Directory with ``train-images-idx3-ubyte.gz`` etc.; defaults
            to the Debian package's copy.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images ``(N, 28, 28)``
        and int64 labels; 60,000 training and 10,000 test samples.

    Raises:
        DatasetUnavailableError: If no directory is given and the Debian package is absent.
        DatasetIntegrityError: If a file is malformed or images and labels disagree in number.
    """
    if directory is None:
        directory = find_fashion_mnist_dir()
        if directory is None:
            raise DatasetUnavailableError(
                "Fashion-MNIST is not available offline: Debian's dataset-fashion-mnist package is not "
                f"installed. Install it with: {FASHION_MNIST_APT} (after apt-get update), "
                "or pass --data-dir DIR / --download to use torchvision's FashionMNIST files"
            )
    directory = Path(directory)
    arrays = {key: read_idx(directory / name) for key, name in _FILES.items()}
    for part in ("train", "test"):
        if arrays[f"x_{part}"].shape[0] != arrays[f"y_{part}"].shape[0]:
            raise DatasetIntegrityError(f"{directory}: {part} images and labels differ in number")
    return tuple(
        (torch.from_numpy(arrays[f"x_{part}"].copy()), torch.from_numpy(arrays[f"y_{part}"].astype(np.int64)))
        for part in ("train", "test")
    )  # type: ignore[return-value]
