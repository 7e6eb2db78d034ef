"""``sparsecore export RUN_DIR``: a tiny run folder exported and read back exactly; bad input gives one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sparsecore import cli
from sparsecore.export import load_masks, load_sparse, read_layouts
from sparsecore.models import create_model
from sparsecore.train.checkpoint import load_checkpoint

TINY_ARGS = ["--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
             "--batch-size", "20", "--threads", "1", "--no-plots", "--quiet", "--epochs", "1"]
WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def _train(runs: Path, name: str, *extra: str) -> Path:
    assert cli.main(["train", *TINY_ARGS, "--runs-dir", str(runs), "--run-name", name, *extra]) == 0
    return runs / name


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"), "tiny", "--density", "0.3")


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """A copy of the run folder a test may damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _export(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = cli.main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def _expected_state(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The checkpoint's weights with +0.0 outside the masks, and the masks by state-dict key."""
    ckpt, _ = load_checkpoint(run)
    masks = {f"{name}.weight": mask for name, mask in ckpt["sparsifier"]["masks"].items()}
    state = {k: torch.where(masks[k], v, torch.zeros(())) if k in masks else v for k, v in ckpt["model"].items()}
    return state, masks


def _assert_bit_exact(loaded: dict, expected: dict) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key].view(torch.int32), value.view(torch.int32)), key


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
def test_export_round_trip(run_copy, capsys, fmt):
    code, out, err = _export(capsys, str(run_copy), "--format", fmt)
    assert (code, err) == (0, [])
    path = run_copy / f"model-{fmt}.safetensors"
    size = path.stat().st_size
    assert out == [f"wrote {path} ({fmt}; lenet-300-100 after 1 epoch; 3 of 6 tensors compressed)",
                   f"file: {size:,} bytes",
                   "dense fp32 state dict: 1,066,440 bytes",  # (784*300 + 300 + 300*100 + 100 + 100*10 + 10) * 4
                   f"ratio: {size / 1_066_440:.4f} of dense ({1_066_440 / size:.1f}x smaller)"]
    expected, masks = _expected_state(run_copy)
    loaded = load_sparse(path)
    _assert_bit_exact(loaded, expected)
    stored_masks = load_masks(path)
    assert set(stored_masks) == set(WEIGHTS)
    assert all(torch.equal(stored_masks[k], masks[k]) for k in WEIGHTS)
    assert {k: v["layout"] for k, v in read_layouts(path).items()} == \
        {k: fmt if k in WEIGHTS else "dense" for k in expected}
    model = create_model("lenet-300-100")
    model.load_state_dict(loaded)  # the file is a state dict of the reference model


def test_sizes_of_the_formats(run_copy, capsys):
    sizes = {}
    for fmt in ("dense", "bitmask", "csr"):
        code, out, _ = _export(capsys, str(run_copy), "--format", fmt, "--output", str(run_copy / f"{fmt}.st"))
        assert code == 0
        sizes[fmt] = (run_copy / f"{fmt}.st").stat().st_size
        assert out[1] == f"file: {sizes[fmt]:,} bytes"
    nnz = sum(int(m.sum()) for m in _expected_state(run_copy)[1].values())
    weights = 784 * 300 + 300 * 100 + 100 * 10
    assert 1_066_440 < sizes["dense"] < 1_066_440 + 2000  # the header and its padding
    assert abs(sizes["bitmask"] - (1_066_440 - weights * 4 + weights // 8 + nnz * 4)) < 2000
    assert abs(sizes["csr"] - (1_066_440 - weights * 4 + (301 + 101 + 11) * 4 + nnz * 8)) < 2000
    _assert_bit_exact(load_sparse(run_copy / "dense.st"), _expected_state(run_copy)[0])


def test_dense_run_folder(tmp_path, capsys):
    run = _train(tmp_path, "dense", "--dense")
    code, out, _ = _export(capsys, str(run))
    assert code == 0
    assert out[0].endswith("(bitmask; lenet-300-100 after 1 epoch; 0 of 6 tensors compressed)")
    ckpt, _ = load_checkpoint(run)
    _assert_bit_exact(load_sparse(run / "model-bitmask.safetensors"), ckpt["model"])


def test_existing_output_needs_force(run_copy, capsys):
    target = run_copy / "out.safetensors"
    target.write_bytes(b"keep me")
    code, out, err = _export(capsys, str(run_copy), "--output", str(target))
    assert (code, out) == (2, [])
    assert err == [f"sparsecore export: error: {target} already exists; pass --force (force=True) to replace it"]
    assert target.read_bytes() == b"keep me"
    code, _, _ = _export(capsys, str(run_copy), "--output", str(target), "--force")
    assert code == 0 and load_sparse(target)


def _error(capsys, *argv: str) -> str:
    code, out, err = _export(capsys, *argv)
    assert (code, out, len(err)) == (2, [], 1), err
    assert err[0].startswith("sparsecore export: error: ")
    return err[0].removeprefix("sparsecore export: error: ")


def test_missing_run_folder(tmp_path, capsys):
    assert _error(capsys, str(tmp_path / "nope")) == f"no run folder or checkpoint file at {tmp_path / 'nope'}"


def test_unknown_format(run_copy, capsys):
    assert _error(capsys, str(run_copy), "--format", "coo") == \
        "unknown export format 'coo'; choose one of bitmask, csr, nm, dense"
    assert sorted(p.name for p in run_copy.iterdir() if "safetensors" in p.name) == []


def test_corrupted_checkpoint(run_copy, capsys):
    file = run_copy / "checkpoint.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    message = _error(capsys, str(run_copy))
    assert message.startswith(f"checkpoint {file} is corrupted or truncated")
    assert not (run_copy / "model-bitmask.safetensors").exists()


def test_missing_or_mismatched_config(run_copy, capsys):
    config = run_copy / "config.json"
    original = config.read_text()
    config.unlink()
    assert _error(capsys, str(run_copy)) == f"{run_copy} has no config.json, so the model cannot be rebuilt"
    config.write_text("{not json")
    assert _error(capsys, str(run_copy)).startswith(f"{config} is not valid JSON: ")
    data = json.loads(original)
    data["config"]["model"] = "lenet-5-caffe"
    config.write_text(json.dumps(data))
    assert _error(capsys, str(run_copy)) == (f"{config} names model 'lenet-5-caffe' but the checkpoint was trained "
                                             f"as 'lenet-300-100'")
    assert not (run_copy / "model-bitmask.safetensors").exists()


def test_output_in_a_missing_folder(run_copy, capsys):
    target = run_copy / "missing" / "out.safetensors"
    assert _error(capsys, str(run_copy), "--output", str(target)) == \
        f"cannot write {target}: {target.parent} is not a directory"


def test_run_masks_carry_an_nm_pattern_to_the_nm_layout(tmp_path):
    from sparsecore import Sparsifier
    from sparsecore.export.format import save_state
    from sparsecore.export.run import run_masks

    model = create_model("lenet-300-100")
    sparsifier = Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm="static", pattern="2:4",
                            seed=0)
    state = sparsifier.state_dict()
    rebuilt = create_model("lenet-300-100")
    rebuilt.load_state_dict(model.state_dict())
    masks, patterns = run_masks(rebuilt, state)
    assert list(masks) == list(WEIGHTS) and {str(p) for p in patterns.values()} == {"2:4"}
    saved = save_state(rebuilt.state_dict(), masks, patterns, tmp_path / "nm.safetensors", "nm")
    assert [saved.layouts[k] for k in WEIGHTS] == ["nm", "nm", "nm"]
    stored = load_masks(tmp_path / "nm.safetensors")
    assert all(torch.equal(stored[f"{name}.weight"], layer.mask) for name, layer in sparsifier.layers.items())


def test_run_masks_refuse_masks_that_do_not_fit():
    from sparsecore.export import ExportError
    from sparsecore.export.run import run_masks

    model = create_model("lenet-300-100")
    with pytest.raises(ExportError, match="the checkpoint has a mask for layer 'fc9', which the model does not have"):
        run_masks(model, {"masks": {"fc9": torch.ones(2, 2, dtype=torch.bool)}})
    with pytest.raises(ExportError, match=r"the checkpoint's mask of layer 'fc3' is not a bool tensor of shape \(10, 100\)"):
        run_masks(model, {"masks": {"fc3": torch.ones(100, 10, dtype=torch.bool)}})
    assert run_masks(model, None) == ({}, {})
