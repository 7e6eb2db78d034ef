"""Exporting a training run folder: its verified checkpoint, rebuilt as its ``config.json`` says, to a file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecore.export.format import FORMATS, ExportError, SavedExport, save_state
from sparsecore.selection import NMPattern
from sparsecore.train.checkpoint import read_checkpoint
from sparsecore.train.rundir import CONFIG_NAME


@dataclass
class RunExport:
    """The result of :func:`export_run`.

    Attributes:
        saved: what was written (path, sizes, layouts).
        model: the name of the reference model that was rebuilt.
        epoch: epochs trained in the exported checkpoint.
        notices: one-line notes from loading the checkpoint (e.g. one written without a digest).
    """

    saved: SavedExport
    model: str
    epoch: int
    notices: list[str] = field(default_factory=list)


def default_output(run_dir: Path, format: str) -> Path:
    """Where :func:`export_run` writes by default: ``<run_dir>/model-<format>.safetensors``."""
    return run_dir / f"model-{format}.safetensors"


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{run_dir} has no {CONFIG_NAME}, so the model cannot be rebuilt") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from None
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ExportError(f"{path} has no 'config' object naming the model")
    return config


def _num_classes(model: str, dataset: Any) -> int:
    from sparsecore.data import DATASETS
    from sparsecore.models import model_info

    spec = DATASETS.get(dataset.strip().lower()) if isinstance(dataset, str) else None
    return spec.num_classes if spec is not None else model_info(model).num_classes


def rebuild_model(config: dict[str, Any], model_state: Any) -> nn.Module:
    """The run's reference model, built as its config says, holding the checkpoint's weights.

    Raises:
        ExportError: unknown model, or a state that does not fit it.
    """
    from sparsecore.models import create_model

    name = config["model"]
    try:
        model = create_model(name, num_classes=_num_classes(name, config.get("dataset")))
    except (ValueError, ImportError) as exc:
        raise ExportError(f"cannot rebuild the run's model: {exc}") from None
    try:
        model.load_state_dict(model_state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the checkpoint's model state does not fit {name}: {first}") from None
    return model


def run_masks(model: nn.Module, sparsifier_state: Any) -> tuple[dict[str, torch.Tensor], dict[str, NMPattern]]:
    """The checkpoint's masks and N:M patterns, keyed by the model's state-dict keys (tied weights: every key).

    Raises:
        ExportError: a mask for a layer the model does not have, or of the wrong shape.
    """
    if sparsifier_state is None:  # a dense run
        return {}, {}
    masks_by_layer = sparsifier_state.get("masks") if isinstance(sparsifier_state, dict) else None
    if not isinstance(masks_by_layer, dict):
        raise ExportError("the checkpoint's sparsifier state has no masks")
    pattern = sparsifier_state.get("pattern")
    nm = NMPattern.parse(pattern) if pattern else None
    params = dict(model.named_parameters(remove_duplicate=False))
    keys_of: dict[int, list[str]] = {}
    for key, param in params.items():
        keys_of.setdefault(id(param), []).append(key)
    masks: dict[str, torch.Tensor] = {}
    patterns: dict[str, NMPattern] = {}
    for layer, mask in masks_by_layer.items():
        # a layer is named after its module (its parameter is `weight`) or "<module>.<parameter>"
        weight = params.get(f"{layer}.weight" if f"{layer}.weight" in params else layer)
        if weight is None:
            raise ExportError(f"the checkpoint has a mask for layer {layer!r}, which the model does not have")
        if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ExportError(f"the checkpoint's mask of layer {layer!r} is not a bool tensor of shape "
                              f"{tuple(weight.shape)}")
        for key in keys_of[id(weight)]:
            masks[key] = mask
            if nm is not None:
                patterns[key] = nm
    return masks, patterns


def export_run(run_dir: str | os.PathLike[str], format: str = "bitmask", output: str | os.PathLike[str] | None = None,
               *, force: bool = False) -> RunExport:
    """Write a training run's model as a sparse safetensors file (see :func:`~sparsecore.export.save_sparse`).

    Loads ``checkpoint.pt`` with the harness's verified loader (sha256 checked),
    rebuilds the reference model named in ``config.json``, loads the
    checkpoint's weights, zeroes what the saved masks leave out, and stores
    every sparse layer compressed over its mask.

    Args:
        run_dir: the run folder (or its ``checkpoint.pt``).
        format: one of :data:`~sparsecore.export.format.FORMATS`.
        output: the file to write; default ``<run_dir>/model-<format>.safetensors``.
        force: replace ``output`` if it exists.

    Raises:
        ExportError: unknown format, an existing output without ``force``, no or bad ``config.json``, a model
            that cannot be rebuilt, or the file cannot be written.
        CheckpointError: no checkpoint, or an empty, truncated, corrupted or foreign one.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    loaded = read_checkpoint(Path(run_dir))
    ckpt, folder = loaded.state, loaded.run_dir
    path = Path(output) if output is not None else default_output(folder, format)
    if path.exists() and not force:
        raise ExportError(f"{path} already exists; pass --force (force=True) to replace it")
    if path.is_dir():
        raise ExportError(f"{path} is a directory; pass a file name")
    config = _read_config(folder)
    if config["model"] != ckpt["config"].get("model"):
        raise ExportError(f"{folder / CONFIG_NAME} names model {config['model']!r} but the checkpoint was trained "
                          f"as {ckpt['config'].get('model')!r}")
    model = rebuild_model(config, ckpt["model"])
    masks, patterns = run_masks(model, ckpt["sparsifier"])
    saved = save_state(model.state_dict(), masks, patterns, path, format)
    return RunExport(saved, config["model"], int(ckpt["epoch"]), list(loaded.notices))
