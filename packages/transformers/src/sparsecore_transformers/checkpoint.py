"""The sparsifier's state beside a Trainer checkpoint: writing it, finding it again, reading it back.

The Trainer's own stateful-callback mechanism (``ExportableState``) stores
JSON in ``trainer_state.json``, which cannot hold masks, so the state goes into
a file of its own, :data:`STATE_FILE`, inside each ``checkpoint-<step>``
folder. It holds only tensors and plain containers and loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from sparsecore.errors import CheckpointError
from sparsecore.sparsifier import Sparsifier

#: The file, inside a ``checkpoint-<step>`` folder, that holds the sparsifier's state.
STATE_FILE = "sparsecore_sparsifier.pt"

FORMAT = 1


def checkpoint_dir(output_dir: str, global_step: int) -> str:
    """The folder the Trainer writes the checkpoint of ``global_step`` to (``<output_dir>/checkpoint-<step>``)."""
    return os.path.join(output_dir, f"checkpoint-{global_step}")


def save_state(directory: str, sparsifier: Sparsifier, global_step: int) -> str:
    """Write the sparsifier's state into a checkpoint folder the Trainer has just written.

    Args:
        directory: the checkpoint folder.
        sparsifier: the run's sparsifier.
        global_step: the Trainer's step the checkpoint is of.

    Returns:
        The path of the file written.

    Raises:
        CheckpointError: the folder does not exist.
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint folder {directory!r} does not exist, so the sparsifier state cannot be "
                              "saved beside it (checkpoints of hyper-parameter search trials are not supported)")
    path = os.path.join(directory, STATE_FILE)
    torch.save({"format": FORMAT, "global_step": global_step, "sparsifier": sparsifier.state_dict()}, path)
    return path


def load_state(directory: str, global_step: int | None = None) -> dict[str, Any]:
    """The sparsifier state saved in a checkpoint folder.

    Args:
        directory: the checkpoint folder.
        global_step: the step the state must be of (``None``: any).

    Raises:
        CheckpointError: no state file, an unknown format, or a state of another step.
    """
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"no sparsifier state in {directory!r} (expected {STATE_FILE}, written by "
                              "SparsityCallback when the checkpoint was saved)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{path}: unsupported sparsifier state format {found!r} (expected {FORMAT})")
    if global_step is not None and saved["global_step"] != global_step:
        raise CheckpointError(f"{path} holds the sparsifier state of step {saved['global_step']}, but the Trainer "
                              f"resumes at step {global_step}")
    state: dict[str, Any] = saved["sparsifier"]
    return state


def find_state_dir(candidates: Sequence[str | None], global_step: int) -> str:
    """The first of the candidate checkpoint folders that holds a sparsifier state (:func:`load_state` checks its step).

    Raises:
        CheckpointError: none does; the message names every folder looked at.
    """
    looked = [c for c in dict.fromkeys(candidates) if c]
    for directory in looked:
        if os.path.isfile(os.path.join(directory, STATE_FILE)):
            return directory
    raise CheckpointError(
        f"the Trainer resumes at step {global_step}, but none of {looked} holds a sparsifier state ({STATE_FILE}); "
        "a checkpoint outside output_dir is found through TrainingArguments(resume_from_checkpoint=<folder>), "
        "and checkpoints written without SparsityCallback cannot restore the masks")
