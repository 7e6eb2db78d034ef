"""Errors of the training job: run folders that cannot be written or read, divergence, interruption, and the
plugin whose code raised an error."""

from __future__ import annotations

import traceback
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sparsecore.errors import SparsecoreError

if TYPE_CHECKING:
    from sparsecore.plugins import Registration


class RunFolderError(SparsecoreError):
    """A run folder, or a file in it, that cannot be created, written or read.

    The message names the path and the reason (e.g. ``No space left on device``).
    """


def os_reason(exc: OSError) -> str:
    """The human part of an ``OSError`` (``No space left on device``), without the errno and path."""
    return exc.strerror or str(exc) or type(exc).__name__


def kept_checkpoint(run_dir: Path, checkpoint_epoch: int, epochs: int) -> str:
    """What a stopped run leaves: the epoch of its checkpoint and how to continue, or that there is none."""
    if checkpoint_epoch == 0:
        return f"no checkpoint was written, so {run_dir} cannot be resumed (start the run again)"
    return f"{run_dir} keeps the checkpoint of epoch {checkpoint_epoch}/{epochs} (continue with --resume {run_dir})"


class TrainingDivergedError(SparsecoreError):
    """The training loss (or the weights, or the test loss) became non-finite.

    The epoch that diverged is not recorded or checkpointed; the run folder
    keeps the checkpoint of the last good epoch.

    Attributes:
        epoch: the (1-based) epoch that diverged, or ``None`` when not known (raised by
            :func:`~sparsecore.train.train_epoch` itself).
        checkpoint_epoch: epochs in the checkpoint the run folder keeps (0: none was written), or ``None``.
    """

    def __init__(self, message: str, epoch: int | None = None, checkpoint_epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.checkpoint_epoch = checkpoint_epoch


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``SIGINT``) stopped the job; says what the run folder keeps.

    Attributes:
        run_dir: the run folder, or ``None`` when it was not created yet.
        checkpoint_epoch: epochs in the checkpoint the run folder keeps (0: none was written).
        epochs: the epochs the run was to train.
    """

    def __init__(self, run_dir: Path | None, checkpoint_epoch: int, epochs: int) -> None:
        super().__init__(run_dir, checkpoint_epoch, epochs)
        self.run_dir = run_dir
        self.checkpoint_epoch = checkpoint_epoch
        self.epochs = epochs

    def __str__(self) -> str:
        if self.run_dir is None:
            return "interrupted before the run folder was created; nothing was written"
        return f"interrupted; {kept_checkpoint(self.run_dir, self.checkpoint_epoch, self.epochs)}"


def plugin_at_fault(exc: BaseException) -> str | None:
    """Which installed algorithm or plugin raised ``exc``, as one line, or ``None`` when none of their code did.

    The traceback is searched from where ``exc`` was raised outward for code of an algorithm or plugin that
    a distribution other than sparsecore registered (or that was registered from code): a frame whose
    ``self`` is an instance of the registered class, or that runs in the module defining the factory or in
    the package of the module that registered it.

    Example:
        ``"plugin 'exploding' (exploding-dist 1.0) raised RuntimeError in on_step at exploding.py:12: boom"``
    """
    from sparsecore.plugins import registry

    registrations = [*registry.algorithms.values(), *registry.plugins.values(),
                     *(reg for group in registry.ambiguous.values() for reg in group)]
    foreign = [reg for reg in registrations if reg.distribution != "sparsecore"]
    for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
        reg = _registration_of(frame, foreign)
        if reg is not None:
            where = f"{frame.f_code.co_name} at {Path(frame.f_code.co_filename).name}:{line}"
            origin = f"{reg.distribution} {reg.version}".strip()
            reason = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
            return f"{reg.kind} {reg.name!r} ({origin}) raised {type(exc).__name__} in {where}" + (
                f": {reason}" if reason else "")
    return None


def _registration_of(frame: FrameType, registrations: list[Registration]) -> Registration | None:
    """The registration whose code ``frame`` runs: its class's method (the most derived class) first, else its
    module or package."""
    self = frame.f_locals.get("self")
    classes = [reg for reg in registrations if isinstance(reg.factory, type) and isinstance(self, reg.factory)]
    if classes:
        return next((reg for reg in classes if type(self) is reg.factory), classes[0])
    module = frame.f_globals.get("__name__", "")
    for reg in registrations:
        package = reg.module.partition(".")[0]
        if module == getattr(reg.factory, "__module__", None) or (
                package not in ("", "sparsecore") and module.partition(".")[0] == package):
            return reg
    return None
