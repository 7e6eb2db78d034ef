"""Turning a sparse-trained model into a plain one for inference: squash, 2:4 semi-structured weights, ONNX."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecore.export.format import ExportError
from sparsecore.selection import NMPattern
from sparsecore.sparsifier import Sparsifier, attached_sparsifier, unwrap_model

_TWO_FOUR = NMPattern(2, 4)


def squash(sparsifier: Sparsifier) -> nn.Module:
    """Apply every mask to its weight for good and detach the engine.

    Inactive weights become ``+0.0`` (whatever the masking policy left
    there: masking by multiplication leaves ``-0.0`` where a weight was
    negative), then :meth:`~sparsecore.Sparsifier.remove` takes off the optimizer
    hooks and restores replaced forwards. The result is a plain model with
    dense tensors, zeros where the masks were off; it trains on as a dense
    model unless a new sparsifier is attached.

    Args:
        sparsifier: the sparsifier of a trained model.

    Returns:
        The model (unwrapped from DDP / DataParallel / ``torch.compile``).

    Raises:
        ExportError: ``sparsifier`` is not a :class:`~sparsecore.Sparsifier`.
    """
    if not isinstance(sparsifier, Sparsifier):
        raise ExportError(f"squash takes the sparsecore.Sparsifier of a model, got {type(sparsifier).__name__}")
    with torch.no_grad():
        for layer in sparsifier.layers.values():
            layer.weight.masked_fill_(~layer.mask.to(layer.weight.device), 0)
    sparsifier.remove()
    return sparsifier.model


def _refuse_attached(model: Any, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ExportError(f"{what} takes a torch.nn.Module, got {type(model).__name__}")
    if attached_sparsifier(model) is not None:
        raise ExportError(f"{what}: the model still has a sparsifier attached; call "
                          f"sparsecore.export.squash(sparsifier) first")
    return unwrap_model(model)


@dataclass
class SemiStructuredResult:
    """What :func:`to_semi_structured` did.

    Attributes:
        model: the model (changed in place where layers were converted).
        converted: names of the ``nn.Linear`` modules whose weight is now a
            ``SparseSemiStructuredTensor``.
        skipped: module name → why that ``nn.Linear`` was left as it was.
        reason: why nothing was converted at all (e.g. no CUDA), else ``None``.
    """

    model: nn.Module
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive weights along dim 1 holds at most 2 nonzeros (a 2:4 weight)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((_TWO_FOUR.grouped(weight) != 0).sum(dim=1) <= 2).all())


def _linear_modules(model: nn.Module) -> list[tuple[str, nn.Linear, str | None]]:
    """Every ``nn.Linear`` with why it cannot take a semi-structured weight (``None`` when it can)."""
    read_directly = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        why = None
        if id(module) in read_directly:
            why = "MultiheadAttention reads this weight directly, not through F.linear"
        elif uses.get(id(w), 0) > 1:
            why = "the weight is shared with another module"
        elif not is_two_four(w.detach()):
            why = "the weight is not 2:4 along in_features (more than 2 nonzeros in some group of 4)"
        elif w.device.type != "cuda":
            why = f"the weight is on {w.device.type}; semi-structured kernels need CUDA"
        found.append((name, module, why))
    return found


def to_semi_structured(model: nn.Module) -> SemiStructuredResult:
    """Hand 2:4-sparse ``nn.Linear`` weights to ``torch.sparse.to_sparse_semi_structured`` for inference.

    Call it on a squashed model (:func:`squash`) already on a CUDA device in
    the dtype it will run in (``model.half().cuda()``; cuSPARSELt takes
    float16, bfloat16, int8 and float8, CUTLASS float32 too). Each
    ``nn.Linear`` whose weight's zeros make it 2:4 along ``in_features`` gets
    its weight replaced by a ``SparseSemiStructuredTensor`` (``F.linear`` then
    runs the sparse kernel); a conversion that does not give the same dense
    weight back is not kept. Layers torch refuses (shapes below its minimums,
    unsupported dtype or GPU) are skipped with torch's reason.

    On a machine without CUDA, or a model on the CPU, nothing changes and
    :attr:`SemiStructuredResult.reason` says why; ``skipped`` still says, per
    layer, whether its weight is 2:4 (then only the device stops it).

    Example:
        ```python
        model = squash(sparsifier).half().cuda().eval()
        result = to_semi_structured(model)
        print(result.converted, result.skipped)
        ```

    Raises:
        ExportError: not a module, or a sparsifier is still attached.
    """
    model = _refuse_attached(model, "to_semi_structured")
    linears = _linear_modules(model)
    result = SemiStructuredResult(model, skipped={name: why for name, _, why in linears if why is not None})
    if not torch.cuda.is_available():
        result.reason = "to_sparse_semi_structured needs CUDA, and torch sees no CUDA device; the model is unchanged"
        return result
    if not any(module.weight.device.type == "cuda" for _, module, _ in linears):
        result.reason = ("the model's Linear weights are not on a CUDA device (move it with .cuda() first); "
                         "the model is unchanged")
        return result
    from torch.sparse import to_sparse_semi_structured

    for name, module, why in linears:
        if why is not None:
            continue
        dense = module.weight.detach().contiguous()
        try:
            sparse = to_sparse_semi_structured(dense)
            same = torch.equal(sparse.to_dense(), dense)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            result.skipped[name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            continue
        if not same:
            result.skipped[name] = "the semi-structured weight did not give the dense weight back"
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        result.converted.append(name)
    if not result.converted:
        result.reason = "no Linear layer could be converted (see skipped); the model is unchanged"
    return result


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: Sequence[Any],
                **options: Any) -> Path:
    """Export a squashed (plain, dense) model to ONNX with ``torch.onnx.export``.

    The weights go into the file dense, zeros included: ONNX has no sparse
    weight layout that runtimes execute faster, so the file is as large as
    the dense model (use :func:`~sparsecore.export.save_sparse` for a compact
    copy). The model is exported in eval mode and left in the mode it was in.

    Example:
        ```python
        model = squash(sparsifier)
        export_onnx(model, "model.onnx", (torch.randn(1, 1, 28, 28),))
        ```

    Args:
        model: a model without an attached sparsifier (see :func:`squash`).
        path: the ``.onnx`` file to write.
        example_inputs: the positional inputs to trace the model with.
        **options: passed on to ``torch.onnx.export`` (defaults here:
            ``external_data=False``, one self-contained file, which must stay under
            protobuf's 2 GB, and ``verbose=False``).

    Returns:
        The path written.

    Raises:
        ExportError: not a module, a sparsifier still attached, torch older than 2.5, or onnx / onnxscript
            not installed.
    """
    model = _refuse_attached(model, "export_onnx")
    if torch.__version__ < (2, 5):  # type: ignore[operator]  # TorchVersion compares with tuples
        raise ExportError(f"ONNX export needs torch >= 2.5 (its dynamo exporter); this is torch {torch.__version__}")
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}, not installed "
                          f"(pip install 'sparsecore[export]')")
    options = {"external_data": False, "verbose": False, **options}
    was_training = model.training
    model.eval()
    try:
        torch.onnx.export(model, tuple(example_inputs), str(path), **options)
    finally:
        model.train(was_training)
    return Path(path)
