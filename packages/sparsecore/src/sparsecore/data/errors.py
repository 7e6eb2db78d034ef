"""Errors raised by the dataset loaders."""

from __future__ import annotations

__all__ = ["DatasetIntegrityError", "DatasetUnavailableError"]


class DatasetUnavailableError(RuntimeError):
    """No source for the requested dataset is available on this machine.

    The message says how to get the data (a ``pip``/``apt-get`` command, or
    ``data_dir``/``download``, i.e. ``--data-dir``/``--download`` on the command line).
    """


class DatasetIntegrityError(RuntimeError):
    """A data file is not the expected file (wrong checksum, size or format)."""
