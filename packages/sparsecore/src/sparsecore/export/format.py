"""The sparse safetensors file: :func:`save_sparse`, :func:`load_sparse`, :func:`load_masks`.

A file holds a state dict. Sparse tensors are stored compressed under derived
names (``<key>.bitmask`` + ``<key>.values``; ``<key>.crow_indices`` +
``<key>.col_indices`` + ``<key>.values``; ``<key>.values`` + ``<key>.indices``),
every other tensor under its own key, as is. The header's metadata says how
each key is stored (``docs/export.md`` gives the format in full):

* ``sparsecore.format_version``: ``"1"``;
* ``sparsecore.layout``: the format the file was written with;
* ``sparsecore.tensors``: JSON object, state-dict key → ``{"layout", "shape",
  "dtype"}`` (plus ``"nnz"`` for compressed tensors, ``"n"``/``"m"`` for N:M),
  in the state dict's order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecore.errors import SparsecoreError
from sparsecore.selection import NMPattern

#: Version of the file layout this module writes and reads.
FORMAT_VERSION = 1
#: Formats :func:`save_sparse` writes.
FORMATS = ("bitmask", "csr", "nm", "dense")
#: Header metadata keys.
META_VERSION = "sparsecore.format_version"
META_LAYOUT = "sparsecore.layout"
META_TENSORS = "sparsecore.tensors"
#: The tensors stored for one state-dict entry of each layout, as suffixes of its key ("" = the key itself).
PARTS: dict[str, tuple[str, ...]] = {
    "dense": ("",),
    "bitmask": (".bitmask", ".values"),
    "csr": (".crow_indices", ".col_indices", ".values"),
    "nm": (".values", ".indices"),
}
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)
_INSTALL_HINT = "pip install 'sparsecore[export]'"


class ExportError(SparsecoreError):
    """Bad input to an export function, or a file that is not a valid sparse export (the message says why)."""


@dataclass(frozen=True)
class SavedExport:
    """What :func:`save_sparse` wrote.

    Attributes:
        path: the file.
        format: the format it was written with.
        file_bytes: its size on disk, header included.
        dense_fp32_bytes: bytes of the same state dict's tensors held dense, floating-point ones as float32
            (the reference a compressed file is measured against).
        layouts: state-dict key → how it is stored (``"dense"``, ``"bitmask"``, ``"csr"`` or ``"nm"``).
    """

    path: Path
    format: str
    file_bytes: int
    dense_fp32_bytes: int
    layouts: dict[str, str]


def _safetensors() -> Any:
    """The ``safetensors`` package (with ``safetensors.torch`` loaded), or a clear error when it is missing."""
    try:
        import safetensors.torch
    except ModuleNotFoundError:
        raise ExportError(f"sparse export needs the safetensors package, which is not installed ({_INSTALL_HINT})"
                          ) from None
    return safetensors


def dense_fp32_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``state``'s tensors held dense, floating-point ones as float32 (4 bytes a value)."""
    return sum(t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size() for t in state.values())


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes: element ``i`` of its row-major flattening is bit ``i % 8`` of byte ``i // 8``."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) << _BIT_SHIFTS).sum(dim=1, dtype=torch.int64).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` bits as a flat bool tensor."""
    return ((packed.unsqueeze(1) >> _BIT_SHIFTS) & 1).reshape(-1)[:count].bool()


def _matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view CSR stores: ``(shape[0], prod(shape[1:]))`` (a 1-D tensor of ``n`` is ``(n, 1)``)."""
    rows = int(shape[0])
    return rows, math.prod(shape) // rows if rows else 0


def _index_dtype(rows: int, cols: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(rows, cols, nnz) < 2**31 else torch.int64


# ---------------------------------------------------------------- encoding
def _encode(key: str, t: torch.Tensor, mask: torch.Tensor, layout: str,
            nm: NMPattern | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The stored tensors (suffix → tensor) and metadata of one compressed entry; ``t`` is zero outside ``mask``."""
    info: dict[str, Any] = {"layout": layout, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                            "nnz": int(mask.sum())}
    if layout == "bitmask":
        return {".bitmask": pack_bits(mask), ".values": t.reshape(-1)[mask.reshape(-1)]}, info
    if layout == "csr":
        rows, cols = _matrix_shape(t.shape)
        m2 = mask.reshape(rows, cols)
        index = _index_dtype(rows, cols, info["nnz"])
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        crow[1:] = m2.sum(dim=1).cumsum(0)
        col = m2.nonzero()[:, 1]
        return {".crow_indices": crow.to(index), ".col_indices": col.to(index),
                ".values": t.reshape(rows, cols)[m2]}, info
    assert nm is not None
    if nm.m > 256:
        raise ExportError(f"{key}: groups of {nm.m} do not fit the N:M form's uint8 positions; save it with "
                          f"format='bitmask'")
    if not nm.is_exact(mask):
        raise ExportError(f"{key}: its mask does not hold exactly {nm.n} of every {nm.m} weights along dim 1, "
                          f"so it has no N:M form; save it with format='bitmask'")
    positions = nm.grouped(mask).nonzero()[:, 1].view(-1, nm.n)  # row-major: increasing within each group
    info.update(n=nm.n, m=nm.m)
    return {".values": nm.grouped(t).gather(1, positions), ".indices": positions.to(torch.uint8)}, info


def _compressed_bytes(t: torch.Tensor, nnz: int, layout: str) -> int:
    if layout == "csr":
        rows, cols = _matrix_shape(t.shape)
        index = _index_dtype(rows, cols, nnz).itemsize
        return (rows + 1) * index + nnz * (index + t.element_size())
    return math.ceil(t.numel() / 8) + nnz * t.element_size()


def _sources(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, NMPattern]]:
    """The state dict to save, the masks of its sparse entries and their N:M patterns, by state-dict key."""
    from sparsecore.sparsifier import Sparsifier, attached_sparsifier, unwrap_model

    if isinstance(obj, nn.Module) and attached_sparsifier(obj) is not None:
        obj = attached_sparsifier(obj)
    if isinstance(obj, Sparsifier):
        model = obj.model
        keys_of: dict[int, list[str]] = {}
        for key, param in model.named_parameters(remove_duplicate=False):
            keys_of.setdefault(id(param), []).append(key)
        masks, patterns = {}, {}
        for layer in obj.layers.values():
            for key in keys_of.get(id(layer.weight), []):
                masks[key] = layer.mask
                if isinstance(layer.pattern, NMPattern):
                    patterns[key] = layer.pattern
    elif isinstance(obj, nn.Module):
        model, masks, patterns = unwrap_model(obj), {}, {}
    else:
        raise ExportError(f"expected a torch.nn.Module or a sparsecore.Sparsifier, got {type(obj).__name__}")
    state = model.state_dict()
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise ExportError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                              f"a safetensors file holds tensors only")
    return state, masks, patterns


def encode_state(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 patterns: Mapping[str, NMPattern], format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a sparse export of ``state``.

    Entries with a mask are stored compressed (``format``; ``"nm"`` applies to entries with a pattern, the others
    fall back to ``"bitmask"``) with ``+0.0`` outside the mask. Other floating-point entries of at least two
    dimensions are compressed over their nonzero values when that takes fewer bytes than keeping them dense
    (their zeros, ``-0.0`` included, come back as ``+0.0``); everything else is stored as is.
    ``format="dense"`` stores every entry as is (masked entries with ``+0.0`` outside their masks).

    Raises:
        ExportError: unknown format, a mask of the wrong shape, a non-N:M mask for ``"nm"``, or derived names
            that collide with other keys.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state.items():
        t = value.detach().cpu()
        mask = masks.get(key)
        if mask is not None:
            if mask.shape != t.shape:
                raise ExportError(f"{key}: mask of shape {tuple(mask.shape)} for a tensor of shape {tuple(t.shape)}")
            mask = mask.detach().cpu().bool()
            t = torch.where(mask, t, torch.zeros((), dtype=t.dtype))
        layout = "dense"
        if format != "dense" and t.is_floating_point() and t.numel() > 0:
            wanted = "bitmask" if format == "nm" and key not in patterns else format
            if mask is not None:
                layout = wanted
            elif t.dim() >= 2:
                mask = t != 0  # -0.0 is a zero: stored as +0.0
                if _compressed_bytes(t, int(mask.sum()), wanted) < t.numel() * t.element_size():
                    layout = wanted
        if layout == "dense":
            storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            parts = {"": t.clone() if storage in seen else t.contiguous()}  # safetensors refuses shared memory
            seen.add(storage)
            described[key] = {"layout": "dense", "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            assert mask is not None
            parts, described[key] = _encode(key, t, mask, layout, patterns.get(key))
        for suffix, part in parts.items():
            name = key + suffix
            if name in tensors or (suffix and name in state):
                raise ExportError(f"cannot store {key!r} as {layout}: the name {name!r} is taken by another entry")
            tensors[name] = part.contiguous()
    metadata = {META_VERSION: str(FORMAT_VERSION), META_LAYOUT: format, META_TENSORS: json.dumps(described)}
    return tensors, metadata


def save_sparse(model_or_sparsifier: nn.Module | Any, path: str | os.PathLike[str],
                format: str = "bitmask") -> SavedExport:
    """Write a model's state dict to a safetensors file with its sparse tensors compressed.

    Given a :class:`~sparsecore.Sparsifier` (or a model it is attached to),
    each sparse layer's weight is stored compressed over its mask, so the mask
    comes back exactly from :func:`load_masks` (weights that are exactly zero
    inside it included), with ``+0.0`` outside the mask: what
    :func:`~sparsecore.export.squash` leaves. The sparsifier and its model are
    not changed. Given a plain model (a squashed one, say), floating-point
    tensors of at least two dimensions are compressed over their nonzero values
    where that makes them smaller. Every other tensor is stored as is. The
    file replaces ``path`` in one step.

    :func:`load_sparse` gives back every stored value bit for bit; zeros
    outside the stored pattern come back as ``+0.0`` (masking by
    multiplication leaves ``-0.0`` where a negative weight was masked: it
    compares equal).

    Example:
        ```python
        from sparsecore.export import save_sparse, load_sparse
        save_sparse(sparsifier, "model.safetensors", format="bitmask")
        model.load_state_dict(load_sparse("model.safetensors"))
        ```

    Args:
        model_or_sparsifier: the model, or the sparsifier that keeps it sparse.
        path: the file to write.
        format: ``"bitmask"`` (packed bits + values), ``"csr"`` (the weight as
            a ``shape[0] x prod(shape[1:])`` CSR matrix), ``"nm"`` (N:M layers as
            ``n`` values and positions per group of ``m``; other tensors as in
            ``"bitmask"``) or ``"dense"`` (every tensor as is).

    Returns:
        A :class:`SavedExport` with the file's size and each key's layout.

    Raises:
        ExportError: bad format or object, an entry that is not a tensor, safetensors missing, or the file
            cannot be written.
    """
    state, masks, patterns = _sources(model_or_sparsifier)
    return save_state(state, masks, patterns, path, format)


def save_state(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
               patterns: Mapping[str, NMPattern], path: str | os.PathLike[str], format: str) -> SavedExport:
    """Write ``state`` as :func:`encode_state` lays it out (masks and N:M patterns by state-dict key).

    Raises:
        ExportError: as :func:`encode_state` and :func:`write_file`.
    """
    tensors, metadata = encode_state(state, masks, patterns, format)
    path = Path(path)
    write_file(tensors, metadata, path)
    layouts = {key: info["layout"] for key, info in json.loads(metadata[META_TENSORS]).items()}
    return SavedExport(path, format, path.stat().st_size, dense_fp32_bytes(state), layouts)


def write_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file through a temporary file beside it, replacing ``path`` in one step.

    Raises:
        ExportError: safetensors is missing, or the file cannot be written (no temporary file is left).
    """
    safetensors = _safetensors()
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: {path.parent} is not a directory")
    tmp = path.with_name(path.name + ".tmp")
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except Exception as exc:  # OSError, or safetensors' own error type for failed writes
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise ExportError(f"cannot write {path}: {reason}") from None


# ---------------------------------------------------------------- decoding
class _Reader:
    """A sparse export opened for reading; every check names the file and the entry."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"no sparse export file at {self.path}")
        safetensors = _safetensors()
        try:
            with safetensors.safe_open(str(self.path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                self.stored = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"cannot read {self.path} as a safetensors file: {reason}") from None
        version = metadata.get(META_VERSION)
        if version is None:
            raise ExportError(f"{self.path} is not a sparsecore sparse export: its header has no {META_VERSION!r}")
        if version != str(FORMAT_VERSION):
            raise ExportError(f"{self.path} has sparse export format version {version}; this sparsecore reads "
                              f"version {FORMAT_VERSION}")
        try:
            entries = json.loads(metadata.get(META_TENSORS, ""))
        except json.JSONDecodeError:
            entries = None
        if not isinstance(entries, dict):
            raise ExportError(f"{self.path}: header entry {META_TENSORS!r} is not a JSON object")
        self.entries: dict[str, dict[str, Any]] = entries
        expected = {key + suffix for key, info in entries.items() for suffix in PARTS.get(self._layout(key, info), ())}
        extra = sorted(set(self.stored) - expected)
        if extra:
            raise ExportError(f"{self.path}: tensor {extra[0]!r} is not described in the header")

    def fail(self, key: str, problem: str) -> ExportError:
        return ExportError(f"{self.path}: entry {key!r}: {problem}")

    def _layout(self, key: str, info: Any) -> str:
        layout = info.get("layout") if isinstance(info, dict) else None
        if layout not in PARTS:
            raise self.fail(key, f"unknown layout {layout!r}")
        return layout

    def _part(self, key: str, suffix: str, dtype: torch.dtype | tuple[torch.dtype, ...], dims: int) -> torch.Tensor:
        name = key + suffix
        if name not in self.stored:
            raise self.fail(key, f"tensor {name!r} is missing")
        t = self.stored[name]
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed or t.dim() != dims:
            raise self.fail(key, f"tensor {name!r} is {t.dim()}-D {t.dtype}, expected {dims}-D "
                                 f"{' or '.join(str(d) for d in allowed)}")
        return t

    def _shape_dtype(self, key: str, info: dict[str, Any]) -> tuple[tuple[int, ...], torch.dtype]:
        shape, name = info.get("shape"), info.get("dtype")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise self.fail(key, f"bad shape {shape!r}")
        dtype = getattr(torch, name, None) if isinstance(name, str) else None
        if not isinstance(dtype, torch.dtype):
            raise self.fail(key, f"unknown dtype {name!r}")
        return tuple(shape), dtype

    def _nnz(self, key: str, info: dict[str, Any], values: torch.Tensor) -> int:
        nnz = info.get("nnz")
        if nnz != values.shape[0]:
            raise self.fail(key, f"header says nnz={nnz!r} but {values.shape[0]} values are stored")
        return nnz

    def decode(self, key: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The entry's tensor and, for a compressed entry, its stored pattern (bool, the tensor's shape)."""
        info = self.entries[key]
        layout = self._layout(key, info)
        shape, dtype = self._shape_dtype(key, info)
        numel = math.prod(shape)
        if layout == "dense":
            t = self._part(key, "", dtype, len(shape))
            if tuple(t.shape) != shape:
                raise self.fail(key, f"stored shape {tuple(t.shape)} differs from the header's {shape}")
            return t, None
        values = self._part(key, ".values", dtype, 2 if layout == "nm" else 1)
        if layout == "bitmask":
            packed = self._part(key, ".bitmask", torch.uint8, 1)
            if packed.numel() != math.ceil(numel / 8):
                raise self.fail(key, f"bitmask has {packed.numel()} bytes, expected {math.ceil(numel / 8)}")
            bits = unpack_bits(packed, packed.numel() * 8)
            if bits[numel:].any():
                raise self.fail(key, "bitmask has bits set past the tensor's end")
            flat_mask = bits[:numel]
            if int(flat_mask.sum()) != self._nnz(key, info, values):
                raise self.fail(key, f"bitmask has {int(flat_mask.sum())} set bits for {values.shape[0]} values")
            out = torch.zeros(numel, dtype=dtype)
            out[flat_mask] = values
            return out.view(shape), flat_mask.view(shape)
        if layout == "csr":
            return self._decode_csr(key, info, shape, dtype, values)
        return self._decode_nm(key, info, shape, dtype, values)

    def _decode_csr(self, key: str, info: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype,
                    values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nnz = self._nnz(key, info, values)
        index = (torch.int32, torch.int64)
        crow = self._part(key, ".crow_indices", index, 1).long()
        col = self._part(key, ".col_indices", index, 1).long()
        if not shape:
            raise self.fail(key, "a CSR entry needs at least one dimension")
        rows, cols = _matrix_shape(shape)
        if crow.numel() != rows + 1 or crow[0] != 0 or crow[-1] != nnz or col.numel() != nnz \
                or bool((crow.diff() < 0).any()):
            raise self.fail(key, f"crow_indices must rise from 0 to nnz={nnz} over {rows + 1} entries, with "
                                 f"{nnz} col_indices")
        if nnz and (col.min() < 0 or col.max() >= cols):
            raise self.fail(key, f"col_indices outside [0, {cols})")
        flat = torch.repeat_interleave(torch.arange(rows), crow.diff()) * cols + col
        if bool((flat.diff() <= 0).any()):
            raise self.fail(key, "col_indices are not strictly increasing within a row")
        out = torch.zeros(rows * cols, dtype=dtype)
        out[flat] = values
        mask = torch.zeros(rows * cols, dtype=torch.bool)
        mask[flat] = True
        return out.view(shape), mask.view(shape)

    def _decode_nm(self, key: str, info: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype,
                   values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            nm = NMPattern(info.get("n"), info.get("m"))  # type: ignore[arg-type]
            groups = nm.groups_in(shape)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        indices = self._part(key, ".indices", torch.uint8, 2).long()
        if tuple(values.shape) != (groups, nm.n) or tuple(indices.shape) != (groups, nm.n):
            raise self.fail(key, f"values and indices must be ({groups}, {nm.n}), got {tuple(values.shape)} and "
                                 f"{tuple(indices.shape)}")
        if info.get("nnz") != groups * nm.n:
            raise self.fail(key, f"header says nnz={info.get('nnz')!r}, expected {groups * nm.n}")
        if bool((indices >= nm.m).any()) or bool((indices.diff(dim=1) <= 0).any()):
            raise self.fail(key, f"indices must increase within each group and stay below {nm.m}")
        grouped = torch.zeros(groups, nm.m, dtype=dtype).scatter_(1, indices, values)
        grouped_mask = torch.zeros(groups, nm.m, dtype=torch.bool).scatter_(1, indices, True)
        return nm.ungrouped(grouped, shape).contiguous(), nm.ungrouped(grouped_mask, shape).contiguous()


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` back into a state dict.

    Every tensor comes back bit for bit as it was stored, in its dtype and
    shape, in the state dict's order, on the CPU: load it with
    ``model.load_state_dict(load_sparse(path))``.

    Raises:
        ExportError: no file there, not a safetensors file, not a sparse export, another format version, or
            stored tensors that contradict the header (the message names the entry).
    """
    reader = _Reader(path)
    return {key: reader.decode(key)[0] for key in reader.entries}


def load_masks(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The stored pattern of every compressed entry of a sparse export (bool, shaped like the tensor).

    For an entry saved from a :class:`~sparsecore.Sparsifier` this is the
    layer's mask exactly; for one saved from a plain model, where its values
    were nonzero. Entries stored dense have none.

    Raises:
        ExportError: as :func:`load_sparse`.
    """
    reader = _Reader(path)
    masks = {}
    for key in reader.entries:
        mask = reader.decode(key)[1]
        if mask is not None:
            masks[key] = mask
    return masks


def read_layouts(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The header's description of every entry (layout, shape, dtype, nnz, N:M), by state-dict key.

    Raises:
        ExportError: as :func:`load_sparse`.
    """
    return dict(_Reader(path).entries)
