"""Errors of the training job: run folders that cannot be written or read, divergence, interruption."""

from __future__ import annotations

from pathlib import Path

from sparsecore.errors import SparsecoreError


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
