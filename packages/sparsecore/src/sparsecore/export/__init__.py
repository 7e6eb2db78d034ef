"""Getting a sparse model out: squashed dense models, compact safetensors files, 2:4 inference, ONNX.

* :func:`squash` applies the masks to the weights for good and detaches the engine.
* :func:`save_sparse` / :func:`load_sparse` write and read a safetensors file
  whose sparse tensors are stored compressed (bitmask, CSR or N:M) and whose
  header says how; :func:`load_masks` gives the stored masks back. The file
  format is specified on the docs' Export page.
* :func:`to_semi_structured` hands 2:4 ``nn.Linear`` weights to
  ``torch.sparse.to_sparse_semi_structured`` (CUDA only).
* :func:`export_onnx` writes the squashed model as ONNX.
* :func:`export_run` does it for a ``sparsecore train`` run folder (``sparsecore export``).

``save_sparse`` needs ``safetensors``, ``export_onnx`` needs ``onnx`` and
``onnxscript``: ``pip install 'sparsecore[export]'``.

Example:
    ```python
    from sparsecore.export import load_sparse, save_sparse, squash

    save_sparse(sparsifier, "lenet.safetensors")           # compact, masks kept
    model = squash(sparsifier)                              # plain dense model, zeros where masked
    model.load_state_dict(load_sparse("lenet.safetensors"))
    ```
"""

from sparsecore.export.convert import SemiStructuredResult, export_onnx, is_two_four, squash, to_semi_structured
from sparsecore.export.format import (
    FORMAT_VERSION,
    FORMATS,
    ExportError,
    SavedExport,
    load_masks,
    load_sparse,
    read_layouts,
    save_sparse,
)
from sparsecore.export.run import RunExport, export_run

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "ExportError",
    "RunExport",
    "SavedExport",
    "SemiStructuredResult",
    "export_onnx",
    "export_run",
    "is_two_four",
    "load_masks",
    "load_sparse",
    "read_layouts",
    "save_sparse",
    "squash",
    "to_semi_structured",
]
