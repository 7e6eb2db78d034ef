"""The sparse safetensors file: bit-exact round trips, exact masks, the header, the documented layout, bad files."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from sparsecore import Sparsifier
from sparsecore.export import ExportError, load_masks, load_sparse, read_layouts, save_sparse, squash
from sparsecore.export.format import encode_state, pack_bits, unpack_bits

DTYPES = [torch.float32, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def convnet(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Conv (4 input channels, so 2:4 fits) + BatchNorm + two Linears; input (4, 6, 6)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    return model.to(dtype)


def sparsifier_for(model: nn.Module, **kwargs) -> Sparsifier:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Sparsifier(model, optimizer, algorithm="static", seed=0, **{"density": 0.3, **kwargs})


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.dtype]) if t.dtype in INT_VIEW else t


def assert_bit_exact(loaded: dict, expected: dict) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert loaded[key].shape == value.shape, key
        assert torch.equal(bits(loaded[key]), bits(value)), key


def plant_special_values(sparsifier: Sparsifier) -> dict[str, list[int]]:
    """Put +0.0, -0.0 and a subnormal inside every mask; return the flat positions used."""
    planted = {}
    with torch.no_grad():
        for name, layer in sparsifier.layers.items():
            active = layer.mask.reshape(-1).nonzero()[:, 0][:3].tolist()
            flat = layer.weight.view(-1)
            flat[active[0]] = 0.0
            flat[active[1]] = -0.0
            flat[active[2]] = torch.finfo(layer.weight.dtype).tiny / 4
            planted[name] = active
    return planted


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", ["bitmask", "csr", "dense"])
def test_sparsifier_round_trip_is_bit_exact_and_masks_come_back(tmp_path, fmt, dtype):
    sparsifier = sparsifier_for(convnet(dtype))
    assert [layer.kind for layer in sparsifier.layers.values()] == ["conv2d", "linear", "linear"]
    planted = plant_special_values(sparsifier)
    path = tmp_path / f"m-{fmt}.safetensors"
    saved = save_sparse(sparsifier, path, format=fmt)
    state = squash(sparsifier).state_dict()  # +0.0 outside the masks, where the engine's masking left -0.0 too
    loaded = load_sparse(path)
    assert_bit_exact(loaded, state)
    weights = {f"{name}.weight": layer for name, layer in sparsifier.layers.items()}
    assert saved.layouts == {key: (fmt if key in weights else "dense") for key in state}
    masks = load_masks(path)
    if fmt == "dense":
        assert masks == {}
        return
    assert set(masks) == set(weights)
    for key, layer in weights.items():
        assert torch.equal(masks[key], layer.mask), key  # exactly: the planted zeros inside it included
        nonzero = layer.weight.detach() != 0
        assert torch.equal(nonzero, layer.mask & nonzero)  # every nonzero weight lies inside the mask
        zero, negative_zero, _ = planted[key.removesuffix(".weight")]
        assert masks[key].view(-1)[[zero, negative_zero]].tolist() == [True, True]
        assert not nonzero.view(-1)[[zero, negative_zero]].any()
        assert torch.signbit(loaded[key].view(-1)[[zero, negative_zero]]).tolist() == [False, True]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nm_layers_round_trip_in_nm_form(tmp_path, dtype):
    sparsifier = sparsifier_for(convnet(dtype), density=None, pattern="2:4")
    path = tmp_path / "nm.safetensors"
    saved = save_sparse(sparsifier, path, format="nm")
    assert [saved.layouts[f"{name}.weight"] for name in sparsifier.layers] == ["nm", "nm", "nm"]
    assert_bit_exact(load_sparse(path), squash(sparsifier).state_dict())
    masks = load_masks(path)
    for name, layer in sparsifier.layers.items():
        assert torch.equal(masks[f"{name}.weight"], layer.mask)
    layouts = read_layouts(path)
    assert layouts["0.weight"] == {"layout": "nm", "shape": [8, 4, 3, 3], "dtype": str(dtype)[6:],
                                   "nnz": 8 * 4 * 9 // 2, "n": 2, "m": 4}


def test_nm_format_keeps_unpatterned_layers_in_bitmask(tmp_path):
    sparsifier = sparsifier_for(convnet())
    saved = save_sparse(sparsifier, tmp_path / "f.safetensors", format="nm")
    assert [saved.layouts[f"{n}.weight"] for n in sparsifier.layers] == ["bitmask"] * 3


def test_saving_changes_nothing_and_stores_zeros_outside_the_mask(tmp_path):
    sparsifier = sparsifier_for(convnet())
    layer = sparsifier.layers["4"]
    outside = (~layer.mask).reshape(-1).nonzero()[0, 0]
    with torch.no_grad():  # as a policy that masks only in the forward would leave it
        layer.weight.view(-1)[outside] = 1.5
    before = {k: v.clone() for k, v in sparsifier.model.state_dict().items()}
    save_sparse(sparsifier, tmp_path / "f.safetensors")
    assert_bit_exact(sparsifier.model.state_dict(), before)
    loaded = load_sparse(tmp_path / "f.safetensors")
    assert loaded["4.weight"].view(-1)[outside] == 0
    assert torch.equal(loaded["4.weight"], layer.weight.detach() * layer.mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plain_model_compresses_where_smaller_and_round_trips(tmp_path, dtype):
    model = convnet(dtype)
    with torch.no_grad():
        model[4].weight.view(-1)[torch.randperm(2048, generator=torch.Generator().manual_seed(1))[:1900]] = 0.0
    path = tmp_path / "plain.safetensors"
    saved = save_sparse(model, path, format="bitmask")
    # only the mostly-zero Linear shrinks when compressed; the dense conv and last Linear stay as they are
    assert {k for k, v in saved.layouts.items() if v != "dense"} == {"4.weight"}
    assert_bit_exact(load_sparse(path), model.state_dict())
    assert torch.equal(load_masks(path)["4.weight"], model[4].weight.detach() != 0)


def test_plain_model_negative_zeros_come_back_as_zeros(tmp_path):
    model = convnet()
    with torch.no_grad():
        model[4].weight.mul_(torch.rand(16, 128, generator=torch.Generator().manual_seed(1)) < 0.1)
    negative_zeros = int(torch.signbit(model[4].weight[model[4].weight == 0]).sum())
    assert negative_zeros > 500  # masking by multiplication leaves them
    save_sparse(model, tmp_path / "f.safetensors")
    loaded = load_sparse(tmp_path / "f.safetensors")["4.weight"]
    assert torch.equal(loaded, model[4].weight.detach())  # equal as numbers; -0.0 == 0.0
    assert not torch.signbit(loaded[loaded == 0]).any()
    assert torch.equal(bits(loaded)[loaded != 0], bits(model[4].weight.detach())[loaded != 0])


def test_a_model_with_a_sparsifier_attached_is_saved_with_its_masks(tmp_path):
    sparsifier = sparsifier_for(convnet())
    save_sparse(sparsifier.model, tmp_path / "f.safetensors")
    masks = load_masks(tmp_path / "f.safetensors")
    assert {k: torch.equal(v, sparsifier.layers[k[:-7]].mask) for k, v in masks.items()} == \
        {"0.weight": True, "4.weight": True, "6.weight": True}


def test_header_metadata(tmp_path):
    sparsifier = sparsifier_for(convnet(torch.bfloat16))
    path = tmp_path / "f.safetensors"
    save_sparse(sparsifier, path, format="csr")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        stored = {name: f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118
    assert set(metadata) == {"sparsecore.format_version", "sparsecore.layout", "sparsecore.tensors"}
    assert metadata["sparsecore.format_version"] == "1"
    assert metadata["sparsecore.layout"] == "csr"
    tensors = json.loads(metadata["sparsecore.tensors"])
    assert list(tensors) == list(sparsifier.model.state_dict())
    assert tensors["0.weight"] == {"layout": "csr", "shape": [8, 4, 3, 3], "dtype": "bfloat16",
                                   "nnz": sparsifier.layers["0"].nnz}
    assert tensors["1.num_batches_tracked"] == {"layout": "dense", "shape": [], "dtype": "int64"}
    assert stored["0.weight.crow_indices"] == "I32" and stored["0.weight.values"] == "BF16"
    assert "0.weight" not in stored and "0.bias" in stored


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_an_independent_reader_decodes_the_documented_layout(tmp_path):
    """Decode with numpy and torch's own CSR, following docs/export.md only."""
    sparsifier = sparsifier_for(convnet(), pattern=None)
    state = sparsifier.model.state_dict()
    save_sparse(sparsifier, tmp_path / "b.safetensors", format="bitmask")
    save_sparse(sparsifier, tmp_path / "c.safetensors", format="csr")
    raw_b = safetensors.numpy.load_file(tmp_path / "b.safetensors")
    raw_c = safetensors.torch.load_file(tmp_path / "c.safetensors")
    for key in ("0.weight", "4.weight", "6.weight"):
        shape, numel = tuple(state[key].shape), state[key].numel()
        active = np.unpackbits(raw_b[f"{key}.bitmask"], bitorder="little")[:numel].astype(bool)
        dense = np.zeros(numel, np.float32)
        dense[active] = raw_b[f"{key}.values"]
        assert np.array_equal(dense.reshape(shape), state[key].numpy())
        rows = shape[0]
        with torch.sparse.check_sparse_tensor_invariants():  # a valid CSR matrix by torch's own checks
            csr = torch.sparse_csr_tensor(raw_c[f"{key}.crow_indices"], raw_c[f"{key}.col_indices"],
                                          raw_c[f"{key}.values"], size=(rows, numel // rows))
        assert torch.equal(csr.to_dense().reshape(shape), state[key])
    assert np.array_equal(raw_b["0.bias"], state["0.bias"].numpy())


DOCS_EXPORT = Path(__file__).resolve().parents[3] / "docs" / "export.md"


def _documented_reader() -> str:
    """The Python block of docs/export.md's "Reading it without sparsecore" section."""
    section = DOCS_EXPORT.read_text(encoding="utf-8").split("### Reading it without sparsecore", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("fmt", ["bitmask", "csr", "nm", "dense"])
def test_the_reader_on_the_docs_page_reads_every_layout(tmp_path, monkeypatch, fmt):
    sparsifier = sparsifier_for(convnet(), **({"density": None, "pattern": "2:4"} if fmt == "nm" else {}))
    save_sparse(sparsifier, tmp_path / "model.safetensors", format=fmt)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_documented_reader(), str(DOCS_EXPORT), "exec"), namespace)
    expected = squash(sparsifier).state_dict()
    assert list(namespace["state"]) == list(expected)
    for key, value in expected.items():
        assert np.array_equal(namespace["state"][key], value.numpy()), key


def test_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
    model[2].weight = model[0].weight
    save_sparse(model, tmp_path / "plain.safetensors", format="dense")
    assert_bit_exact(load_sparse(tmp_path / "plain.safetensors"), model.state_dict())
    sparsifier = sparsifier_for(model, density=0.25)
    assert list(sparsifier.layers) == ["0"]
    saved = save_sparse(sparsifier, tmp_path / "tied.safetensors")
    assert saved.layouts == {"0.weight": "bitmask", "2.weight": "bitmask"}
    masks = load_masks(tmp_path / "tied.safetensors")
    assert torch.equal(masks["0.weight"], sparsifier.layers["0"].mask)
    assert torch.equal(masks["2.weight"], sparsifier.layers["0"].mask)


def test_file_sizes(tmp_path):
    sparsifier = sparsifier_for(convnet(), density=0.1)
    nnz = sum(layer.nnz for layer in sparsifier.layers.values())
    dense = save_sparse(sparsifier, tmp_path / "d.safetensors", format="dense")
    bitmask = save_sparse(sparsifier, tmp_path / "b.safetensors", format="bitmask")
    assert dense.dense_fp32_bytes == bitmask.dense_fp32_bytes == \
        sum(v.numel() * (4 if v.is_floating_point() else 8) for v in sparsifier.model.state_dict().values())
    assert bitmask.file_bytes == (tmp_path / "b.safetensors").stat().st_size
    weights = sum(layer.capacity for layer in sparsifier.layers.values())
    saved_bytes = weights * 4 - (nnz * 4 + sum(math.ceil(layer.capacity / 8) for layer in sparsifier.layers.values()))
    assert abs(dense.file_bytes - bitmask.file_bytes - saved_bytes) < 1000  # the headers differ by less than 1 kB


def test_bit_packing_order():
    mask = torch.tensor([True, False, False, False, False, False, False, False, False, True])
    packed = pack_bits(mask)
    assert packed.tolist() == [1, 2]  # element i is bit i % 8 (least significant first) of byte i // 8
    assert torch.equal(unpack_bits(packed, 10), mask)


# ---------------------------------------------------------------- bad input
def test_bad_arguments(tmp_path):
    sparsifier = sparsifier_for(convnet())
    with pytest.raises(ExportError, match="unknown export format 'coo'; choose one of bitmask, csr, nm, dense"):
        save_sparse(sparsifier, tmp_path / "f.safetensors", format="coo")
    with pytest.raises(ExportError, match="expected a torch.nn.Module or a sparsecore.Sparsifier, got dict"):
        save_sparse({}, tmp_path / "f.safetensors")
    assert not list(tmp_path.iterdir())


def test_non_exact_nm_mask_is_refused(tmp_path):
    sparsifier = sparsifier_for(convnet(), density=None, pattern="2:4")
    layer = sparsifier.layers["4"]
    layer.mask = layer.mask.clone()
    layer.mask.view(-1, 4)[0] = True
    with pytest.raises(ExportError, match=r"4.weight: its mask does not hold exactly 2 of every 4 weights"):
        save_sparse(sparsifier, tmp_path / "f.safetensors", format="nm")


def test_non_tensor_state_is_refused(tmp_path):
    class WithExtra(nn.Linear):
        def get_extra_state(self):
            return {"note": 1}

        def set_extra_state(self, state):
            pass

    with pytest.raises(ExportError, match="state dict entry '_extra_state' is a dict, not a tensor"):
        save_sparse(WithExtra(2, 2), tmp_path / "f.safetensors")


def test_name_collisions_are_refused():
    state = {"w": torch.zeros(16, 16), "w.values": torch.ones(2)}  # no nn.Module has such keys, a plain dict may
    with pytest.raises(ExportError, match="cannot store 'w' as bitmask: the name 'w.values' is taken"):
        encode_state(state, {"w": torch.zeros(16, 16, dtype=torch.bool)}, {}, "bitmask")


def test_unwritable_path(tmp_path, monkeypatch):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ExportError, match="cannot write .*f.safetensors: .*missing is not a directory"):
        save_sparse(convnet(), tmp_path / "missing" / "f.safetensors")
    target = tmp_path / "dir" / "f.safetensors"
    target.write_bytes(b"previous export")

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(ExportError, match="cannot write .*dir/f.safetensors: No space left on device$"):
        save_sparse(convnet(), target)
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["f.safetensors"]  # no temporary file left
    assert target.read_bytes() == b"previous export"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def _tampered(tmp_path, change) -> str:
    sparsifier = sparsifier_for(convnet())
    path = tmp_path / "f.safetensors"
    save_sparse(sparsifier, path, format="csr" if "csr" in change.__name__ else "bitmask")
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(metadata, tensors)
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    return str(path)


def _version_2(metadata, tensors):
    metadata["sparsecore.format_version"] = "2"


def _extra_value(metadata, tensors):
    tensors["4.weight.values"] = torch.cat([tensors["4.weight.values"], torch.zeros(1)])


def _stray_bit(metadata, tensors):
    first_unset = int((~unpack_bits(tensors["6.weight.bitmask"], 64)).nonzero()[0, 0])
    tensors["6.weight.bitmask"][first_unset // 8] |= 1 << (first_unset % 8)


def _csr_col_out_of_range(metadata, tensors):
    tensors["4.weight.col_indices"][0] = 128


def _missing_part(metadata, tensors):
    del tensors["0.weight.values"]


def _stray_tensor(metadata, tensors):
    tensors["extra"] = torch.zeros(1)


def _bad_json(metadata, tensors):
    metadata["sparsecore.tensors"] = "{"


@pytest.mark.parametrize("change, message", [
    (_version_2, "has sparse export format version 2; this sparsecore reads version 1"),
    (_extra_value, "entry '4.weight': header says nnz=.* but .* values are stored"),
    (_stray_bit, "entry '6.weight': bitmask has 20 set bits for 19 values"),
    (_csr_col_out_of_range, r"entry '4.weight': col_indices outside \[0, 128\)"),
    (_missing_part, "entry '0.weight': tensor '0.weight.values' is missing"),
    (_stray_tensor, "tensor 'extra' is not described in the header"),
    (_bad_json, "header entry 'sparsecore.tensors' is not a JSON object"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_damaged_files_are_refused_naming_the_problem(tmp_path, change, message):
    path = _tampered(tmp_path, change)
    with pytest.raises(ExportError, match=message) as info:
        load_sparse(path)
    assert "\n" not in str(info.value)


def test_files_that_are_not_sparse_exports(tmp_path):
    with pytest.raises(ExportError, match="no sparse export file at"):
        load_sparse(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3 + b"not a safetensors file")
    with pytest.raises(ExportError, match="cannot read .*garbage.safetensors as a safetensors file"):
        load_sparse(garbage)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ExportError, match="is not a sparsecore sparse export: its header has no "
                                          "'sparsecore.format_version'"):
        load_sparse(plain)
