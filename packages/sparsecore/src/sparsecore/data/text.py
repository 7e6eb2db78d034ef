"""Byte-level text corpora for next-byte prediction: the Python standard library's sources, served as windows."""

from __future__ import annotations

import os
import platform
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import DatasetUnavailableError
from .split import Augmentation, Dataset

__all__ = [
    "CONTEXT_LENGTH",
    "LANGUAGE_MODEL",
    "TEXT_DATASETS",
    "TextSplit",
    "load_python_stdlib",
    "python_source_files",
    "read_python_stdlib",
]

#: Bytes per window (model input) of the text datasets; ``gpt-tiny`` takes inputs of this length.
CONTEXT_LENGTH = 128
#: The :attr:`Dataset.task` of the text datasets: next-token prediction over bytes (256 "classes").
LANGUAGE_MODEL = "language-model"
#: Directory names whose sources are left out: installed packages, caches and the test suites.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
#: One file in this many goes to the test split (chosen by a checksum of its relative path).
TEST_ONE_IN = 10


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class TextSplit:
    """One split of a byte corpus, served as ``(x, y)`` windows for next-byte prediction.

    A window is ``context`` consecutive bytes ``x``; its targets ``y`` are the
    same bytes shifted by one (``y[t] = corpus[start + t + 1]``), both int64 of
    shape ``(N, context)``. With ``shuffle=True`` (training) every epoch draws
    fresh random window starts from the generator, so a seeded generator gives
    a reproducible run; with ``shuffle=False`` (evaluation) the windows are
    fixed and spread evenly over the whole split.

    Args:
        data: The corpus bytes, a 1-d uint8 tensor.
        context: Bytes per window.
        windows: Windows per epoch; default: as many as fit side by side
            (``(len(data) - 1) // context``).

    Raises:
        ValueError: If ``data`` is not 1-d uint8, is shorter than one window
            plus its target, or ``context``/``windows`` are not positive ints.
    """

    def __init__(self, data: torch.Tensor, context: int = CONTEXT_LENGTH, windows: int | None = None) -> None:
        _check_positive("context", context)
        if data.dim() != 1 or data.dtype != torch.uint8:
            raise ValueError(f"data must be a 1-d uint8 tensor, got {tuple(data.shape)} {data.dtype}")
        if data.numel() < context + 1:
            raise ValueError(f"a corpus of {data.numel()} bytes is too short for one window of {context} bytes "
                             f"and its targets")
        if windows is not None:
            _check_positive("windows", windows)
        self.data = data
        self.context = context
        self.windows = (data.numel() - 1) // context if windows is None else windows
        self.augmentation: Augmentation | None = None

    def __len__(self) -> int:
        return self.windows

    def __repr__(self) -> str:
        return f"TextSplit(bytes={self.data.numel()}, context={self.context}, windows={self.windows})"

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields per epoch (see :meth:`DataSplit.num_batches`)."""
        _check_positive("batch_size", batch_size)
        return self.windows // batch_size if drop_last else -(-self.windows // batch_size)

    def to(self, device: torch.device | str) -> TextSplit:
        """Returns a copy of the split with its bytes on ``device``."""
        return TextSplit(self.data.to(device), self.context, self.windows)

    def starts(self, shuffle: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first byte of each window of one epoch (int64, on the corpus's device).

        Args:
            shuffle: Draw random starts (uniform over every valid start) instead
                of the fixed, evenly spread ones.
            generator: Source of the random starts.
        """
        last = self.data.numel() - 1 - self.context  # the largest start that still has a target for every byte
        if shuffle:
            device = torch.device("cpu") if generator is None else generator.device
            drawn = torch.randint(0, last + 1, (self.windows,), generator=generator, device=device)
            return drawn.to(self.data.device)
        spread = torch.arange(self.windows, dtype=torch.float64) * (last / max(self.windows - 1, 1))
        return spread.round().long().clamp_(max=last).to(self.data.device)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        augment: bool | Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterates over one epoch of ``(x, y)`` windows (inputs and next-byte targets).

        Args:
            batch_size: Windows per batch.
            shuffle: Random windows drawn from ``generator`` (training) instead of the fixed ones.
            generator: Source of the random window starts.
            drop_last: Whether to drop a final batch smaller than ``batch_size``.
            augment: Must be ``None`` or ``False``: text has no augmentation.

        Yields:
            ``(x, y)``: int64 tensors of shape ``(batch, context)`` on the corpus's device.

        Raises:
            ValueError: If an augmentation is asked for.
        """
        _check_positive("batch_size", batch_size)
        if augment is not None and augment is not False:
            raise ValueError("text splits have no augmentation; drop augment (--augment)")
        starts = self.starts(shuffle, generator)
        offsets = torch.arange(self.context + 1, device=self.data.device)
        stop = self.windows - self.windows % batch_size if drop_last else self.windows
        for first in range(0, stop, batch_size):
            window = self.data[starts[first:first + batch_size, None] + offsets].long()
            yield window[:, :-1], window[:, 1:]


def python_source_files(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The ``.py`` files of a source tree, sorted by their path relative to ``root``.

    Files under a directory named in :data:`EXCLUDED_DIRS` (installed packages,
    ``__pycache__``, test suites) are left out.

    Args:
        root: The tree; default: the running interpreter's standard library
            (``sysconfig.get_paths()["stdlib"]``).

    Returns:
        Absolute paths, sorted by their POSIX path relative to ``root``.

    Raises:
        DatasetUnavailableError: If ``root`` is not a directory or holds no such file.
    """
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not base.is_dir():
        raise DatasetUnavailableError(f"python-stdlib: source directory {base} does not exist")
    found = [p for p in base.rglob("*.py")
             if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(base).parts[:-1])]
    if not found:
        raise DatasetUnavailableError(f"python-stdlib: no .py files under {base}")
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def _is_test_file(relative: str) -> bool:
    """Whether a file (by its POSIX path relative to the root) belongs to the test split."""
    return zlib.crc32(relative.encode()) % TEST_ONE_IN == 0


def read_python_stdlib(root: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training and test bytes of the ``python-stdlib`` corpus, and its file count.

    Each file of :func:`python_source_files` goes whole to one split: the test
    split takes the files whose relative path has a CRC-32 divisible by
    :data:`TEST_ONE_IN` (about one in ten, independent of the other files
    present); each split is its files' raw bytes concatenated in sorted path order.

    Args:
        root: The source tree (default: the running interpreter's standard library).

    Returns:
        ``(train, test, files)``: two 1-d uint8 tensors and the number of files read.

    Raises:
        DatasetUnavailableError: If there are no sources, or either split ends up empty.
    """
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    files = python_source_files(base)
    for path in files:
        parts[_is_test_file(path.relative_to(base).as_posix())].append(path.read_bytes())
    train, test = b"".join(parts[False]), b"".join(parts[True])
    if not train or not test:
        which = "training" if not train else "test"
        raise DatasetUnavailableError(f"python-stdlib: the {which} split of the {len(files)} files under {base} "
                                      f"is empty; point data_dir (--data-dir) at a larger source tree")
    return _bytes_tensor(train), _bytes_tensor(test), len(files)


def _bytes_tensor(raw: bytes) -> torch.Tensor:
    """A 1-d uint8 tensor holding a copy of ``raw``."""
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def load_python_stdlib(
    data_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    device: torch.device | str = "cpu",
    context: int = CONTEXT_LENGTH,
) -> Dataset:
    """The ``python-stdlib`` dataset: CPython's standard-library sources as a byte-level language-model corpus.

    Always offline: every Python installation has the sources. Their size
    depends on the interpreter (CPython 3.11.7: 734 files, 12.1 MB, 1.2 MB
    of it in the test split), so runs compare only on one interpreter version;
    the dataset's ``source`` names it.

    Args:
        data_dir: Another source tree to read instead (any directory of ``.py`` files).
        limit_train: Random training windows per epoch (default: as many as
            fit side by side in the training bytes); windows are drawn from the whole split.
        limit_test: Fixed test windows, spread evenly over the test bytes
            (default: as many as fit side by side).
        device: Device the bytes are placed on.
        context: Bytes per window.

    Returns:
        A :class:`Dataset` with :class:`TextSplit` splits, ``task`` :data:`LANGUAGE_MODEL`,
        256 classes (byte values) and input shape ``(context,)``.

    Raises:
        DatasetUnavailableError: If the source tree is missing or yields an empty split.
        ValueError: If a limit is not a positive int.
    """
    train, test, files = read_python_stdlib(data_dir)
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None:
            _check_positive(name, limit)
    source = (f"{files} .py files under {data_dir}" if data_dir is not None
              else f"python-{platform.python_version()} stdlib, {files} files")
    return Dataset(name="python-stdlib", source=source,
                   train=TextSplit(train.to(device), context, limit_train),
                   test=TextSplit(test.to(device), context, limit_test),
                   num_classes=256, input_shape=(context,), task=LANGUAGE_MODEL)


#: The text datasets :func:`sparsecore.data.load_dataset` knows, by name.
TEXT_DATASETS = {"python-stdlib": load_python_stdlib}
