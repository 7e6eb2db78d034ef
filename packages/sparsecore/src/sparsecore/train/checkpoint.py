"""A run's ``checkpoint.pt``: written atomically with its sha256 beside it, verified when loaded.

``checkpoint.pt`` is a plain ``torch.save`` of a dict (it loads with
``torch.load(..., weights_only=True)``). ``checkpoint.pt.sha256`` holds its
digest in ``sha256sum`` format (``sha256sum -c checkpoint.pt.sha256`` checks it).
A save writes ``checkpoint.pt.tmp``, records its digest, then renames it over
``checkpoint.pt``; a process killed between the two renames leaves a complete
``checkpoint.pt.tmp`` that matches the digest, and the next load finishes the save.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsecore.errors import CheckpointError
from sparsecore.train.errors import RunFolderError, os_reason

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: Suffix of the file beside a checkpoint that holds its sha256.
DIGEST_SUFFIX = ".sha256"
#: Keys every checkpoint of :data:`CHECKPOINT_FORMAT` has.
REQUIRED_KEYS = ("format", "epoch", "config", "model", "optimizer", "scheduler", "sparsifier", "rng")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint.

    Attributes:
        state: the dict that was saved.
        run_dir: the run folder it belongs to (the folder that holds the file).
        notices: one-line notes about the load (an unverifiable old checkpoint, a finished interrupted save).
    """

    state: dict[str, Any]
    run_dir: Path
    notices: list[str] = field(default_factory=list)


def digest_path(file: Path) -> Path:
    """The digest file beside a checkpoint file (``checkpoint.pt`` -> ``checkpoint.pt.sha256``)."""
    return file.with_name(file.name + DIGEST_SUFFIX)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as ``run_dir/checkpoint.pt`` with its digest, replacing the previous checkpoint atomically.

    Raises:
        RunFolderError: the write failed (e.g. the disk is full); the temporary files are removed and the
            previous checkpoint and its digest are left as they were.
    """
    file = run_dir / CHECKPOINT_NAME
    tmp, digest_file = file.with_name(file.name + ".tmp"), digest_path(file)
    digest_tmp = digest_file.with_name(digest_file.name + ".tmp")
    try:
        _write_synced(tmp, lambda f: torch.save(state, f))
        line = f"{file_sha256(tmp)}  {file.name}\n".encode()
        _write_synced(digest_tmp, lambda f: f.write(line))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        digest_tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunFolderError(f"cannot write the checkpoint {file}: {os_reason(exc)}") from exc
        raise
    try:
        os.replace(digest_tmp, digest_file)
        os.replace(tmp, file)  # from here to the end of the line above, a load finishes the save (see module doc)
    except OSError as exc:
        raise RunFolderError(f"cannot replace the checkpoint {file}: {os_reason(exc)}") from exc


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load and verify a run's checkpoint from a run folder or a checkpoint file.

    Raises:
        CheckpointError: no checkpoint there; the file is empty, truncated or corrupted (its sha256 differs
            from the recorded one), unreadable, or not a checkpoint of this job.
    """
    if "\0" in str(path):
        raise CheckpointError(f"no run folder or checkpoint file at {str(path)!r}: a path has no NUL characters")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no run folder or checkpoint file at {path}")
    file = path / CHECKPOINT_NAME if path.is_dir() else path
    try:
        notices = _finish_interrupted_save(file)
        if not file.is_file():
            raise CheckpointError(_no_checkpoint_message(path, file))
        notices += _verify(file)
    except OSError as exc:
        raise CheckpointError(f"cannot read {exc.filename or file}: {os_reason(exc)}") from exc
    state = _torch_load(file)
    _check_contents(file, state)
    return LoadedCheckpoint(state, file.parent, notices)


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Load a run's checkpoint (``weights_only=True``) from a run folder or a checkpoint file, verifying its sha256.

    Notes about the load (a checkpoint without a digest, written before digests existed) are issued as
    :class:`UserWarning`.

    Returns:
        The checkpoint dict and the run folder.

    Raises:
        CheckpointError: no checkpoint there; the file is empty, truncated or corrupted, or not one written
            by this job.
    """
    loaded = read_checkpoint(path)
    for notice in loaded.notices:
        warnings.warn(notice, stacklevel=2)
    return loaded.state, loaded.run_dir


def _no_checkpoint_message(path: Path, file: Path) -> str:
    if path.is_dir() and (path / "config.json").is_file():
        return (f"{path} has no {CHECKPOINT_NAME}, so there is nothing to resume (a run stopped before its first "
                f"epoch finished has none; start it again)")
    return f"no checkpoint at {file} (pass a run folder or its {CHECKPOINT_NAME})"


def _read_digest(digest_file: Path) -> str:
    text = digest_file.read_text(errors="replace").strip()
    expected = text.split()[0].lower() if text else ""
    if not _HEX64.fullmatch(expected):
        raise CheckpointError(f"{digest_file} does not hold a sha256 (expected '<64 hex digits>  {CHECKPOINT_NAME}')")
    return expected


def _finish_interrupted_save(file: Path) -> list[str]:
    """Finish a save killed between its two renames: the digest is new, the checkpoint is in ``.tmp``."""
    tmp, digest_file = file.with_name(file.name + ".tmp"), digest_path(file)
    if not (tmp.is_file() and digest_file.is_file()):
        return []
    expected = _read_digest(digest_file)
    if (file.is_file() and file_sha256(file) == expected) or file_sha256(tmp) != expected:
        return []  # the save finished, or the .tmp is a write that never completed: nothing to finish
    os.replace(tmp, file)
    return [f"note: finished the interrupted save of {file} (its new content was complete in {tmp.name})"]


def _verify(file: Path) -> list[str]:
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {file} is empty (0 bytes): it was never written completely")
    digest_file = digest_path(file)
    if not digest_file.is_file():
        return [(f"note: {file} has no {digest_file.name} (written by an older sparsecore), so it is loaded "
                 f"without verifying its integrity")]
    expected = _read_digest(digest_file)
    actual = file_sha256(file)
    if actual != expected:
        raise CheckpointError(f"checkpoint {file} is corrupted or truncated ({size} bytes): its sha256 "
                              f"{actual[:16]}... differs from {expected[:16]}... recorded in {digest_file.name} "
                              f"when it was written")
    return []


def _torch_load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {file}: {reason}") from None


def _check_contents(file: Path, state: Any) -> None:
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file} was written by a newer sparsecore (checkpoint format {found}; this version "
                              f"reads format {CHECKPOINT_FORMAT}): upgrade sparsecore to resume it")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file} is not a sparsecore train checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{file} is an incomplete sparsecore train checkpoint: it lacks {', '.join(missing)}")
    if isinstance(state["epoch"], bool) or not isinstance(state["epoch"], int) or state["epoch"] < 0 \
            or not isinstance(state["config"], dict):
        raise CheckpointError(f"{file} is not a sparsecore train checkpoint: bad 'epoch' or 'config' entry")
