"""The transformer workload: the python-stdlib byte corpus, gpt-tiny, and the harness's bits-per-byte records."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import sparsecore
import torch
import torch.nn.functional as F
from sparsecore.data import (
    LANGUAGE_MODEL,
    DatasetUnavailableError,
    TextSplit,
    list_datasets,
    load_dataset,
    python_source_files,
    read_python_stdlib,
)
from sparsecore.errors import ConfigurationError
from sparsecore.models import TinyGPT, create_model, model_info
from sparsecore.train import TrainConfig, run_training

pytestmark = pytest.mark.filterwarnings("ignore:these modules stay dense")


def _is_test(relative: str) -> bool:
    return zlib.crc32(relative.encode()) % 10 == 0


@pytest.fixture()
def source_tree(tmp_path: Path) -> Path:
    """A small source tree: 40 modules (some in packages), plus files the corpus must leave out."""
    root = tmp_path / "lib"
    for i in range(40):
        path = root / ("pkg" if i % 3 else "") / f"mod{i:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"# module {i}\nvalue_{i} = {i} * 2\n".encode() * 6)
    for skipped in ("site-packages/x.py", "__pycache__/y.py", "test/test_z.py", "pkg/tests/t.py", "notes.txt"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_bytes(b"LEFT OUT\n")
    return root


# --- the corpus ----------------------------------------------------------------------------


def test_source_files_are_sorted_and_leave_out_packages_caches_and_tests(source_tree: Path) -> None:
    files = [p.relative_to(source_tree).as_posix() for p in python_source_files(source_tree)]
    assert len(files) == 40
    assert files == sorted(files)
    assert not any(part in f for f in files for part in ("site-packages", "__pycache__", "test/", "tests/"))


def test_split_is_by_file_checksum_in_sorted_order(source_tree: Path) -> None:
    train, test, count = read_python_stdlib(source_tree)
    files = python_source_files(source_tree)
    relative = [p.relative_to(source_tree).as_posix() for p in files]
    expected_test = b"".join(p.read_bytes() for p, r in zip(files, relative, strict=True) if _is_test(r))
    expected_train = b"".join(p.read_bytes() for p, r in zip(files, relative, strict=True) if not _is_test(r))
    assert count == 40
    assert 0 < len(expected_test) < len(expected_train)
    assert bytes(test.tolist()) == expected_test
    assert bytes(train.tolist()) == expected_train
    assert b"LEFT OUT" not in bytes(train.tolist()) + bytes(test.tolist())


def test_missing_or_empty_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        read_python_stdlib(tmp_path / "nowhere")
    with pytest.raises(DatasetUnavailableError, match="no .py files"):
        read_python_stdlib(tmp_path)
    (tmp_path / "only.py").write_bytes(b"x = 1\n")  # one file: one split stays empty
    with pytest.raises(DatasetUnavailableError, match="split of the 1 files .* is empty"):
        read_python_stdlib(tmp_path)


def test_load_dataset_gives_a_language_model_dataset(source_tree: Path) -> None:
    assert "python-stdlib" in list_datasets()
    ds = load_dataset("Python-Stdlib", data_dir=source_tree, limit_train=7, limit_test=3)
    assert (ds.name, ds.task, ds.num_classes, ds.input_shape) == ("python-stdlib", LANGUAGE_MODEL, 256, (128,))
    assert (len(ds.train), len(ds.test)) == (7, 3)
    assert ds.source == f"40 .py files under {source_tree}"
    with pytest.raises(ValueError, match="limit_test must be a positive int"):
        load_dataset("python-stdlib", data_dir=source_tree, limit_test=0)


def test_the_interpreters_own_stdlib_is_the_default_source() -> None:
    ds = load_dataset("python-stdlib", limit_train=1, limit_test=1)
    assert ds.source.startswith("python-") and "stdlib" in ds.source
    assert ds.train.data.numel() > 1_000_000 and ds.test.data.numel() > 100_000


# --- windows -------------------------------------------------------------------------------


def test_windows_are_inputs_and_next_byte_targets() -> None:
    data = torch.arange(1000, dtype=torch.int64).remainder(251).to(torch.uint8)
    split = TextSplit(data, context=16, windows=10)
    g = torch.Generator().manual_seed(0)
    batches = list(split.batches(4, generator=g))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 16), (4, 16), (2, 16)]
    for x, y in batches:
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts = x[:, 0]
        for row, start in zip(x, starts.tolist(), strict=True):
            assert torch.equal(row, data[start:start + 16].long())
    assert split.num_batches(4) == 3 and split.num_batches(4, drop_last=True) == 2


def test_training_windows_are_seeded_and_fresh_each_epoch() -> None:
    split = TextSplit(torch.randint(0, 256, (5000,), dtype=torch.uint8), context=32, windows=64)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = torch.cat([x for x, _ in split.batches(16, generator=g1)])
    assert torch.equal(first, torch.cat([x for x, _ in split.batches(16, generator=g2)]))
    second = torch.cat([x for x, _ in split.batches(16, generator=g1)])
    assert not torch.equal(first, second)
    starts = split.starts(True, torch.Generator().manual_seed(0))
    assert int(starts.min()) >= 0 and int(starts.max()) <= 5000 - 1 - 32


def test_evaluation_windows_are_fixed_and_spread_over_the_split() -> None:
    split = TextSplit(torch.zeros(1001, dtype=torch.uint8), context=100, windows=4)
    assert split.starts(False).tolist() == [0, 300, 600, 900]
    full = TextSplit(torch.zeros(1001, dtype=torch.uint8), context=100)
    assert len(full) == 10 and full.starts(False).tolist() == list(range(0, 1000, 100))


def test_bad_text_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="1-d uint8"):
        TextSplit(torch.zeros(100, dtype=torch.int64), context=8)
    with pytest.raises(ValueError, match="too short"):
        TextSplit(torch.zeros(8, dtype=torch.uint8), context=8)
    split = TextSplit(torch.zeros(100, dtype=torch.uint8), context=8)
    with pytest.raises(ValueError, match="no augmentation"):
        next(split.batches(4, augment=True))


# --- the model -----------------------------------------------------------------------------


def test_gpt_tiny_registry_entry_and_output_layout() -> None:
    info = model_info("gpt-tiny")
    assert (info.input_shape, info.default_dataset, info.num_classes, info.outputs, info.task) == (
        (128,), "python-stdlib", 256, "logits", "language-model")
    torch.manual_seed(0)
    model = create_model("gpt-tiny")
    assert isinstance(model, TinyGPT)
    assert sum(p.numel() for p in model.parameters()) == 445_952
    tokens = torch.randint(0, 256, (2, 20))
    logits = model(tokens)
    assert logits.shape == (2, 256, 20)
    targets = torch.randint(0, 256, (2, 20))
    per_position = F.cross_entropy(logits.transpose(1, 2).reshape(-1, 256), targets.reshape(-1))
    assert torch.allclose(F.cross_entropy(logits, targets), per_position)


def test_gpt_tiny_is_causal_and_ties_its_head_to_the_embedding() -> None:
    torch.manual_seed(0)
    model = TinyGPT(context=16, dim=32, depth=1, heads=2).eval()
    tokens = torch.randint(0, 256, (1, 16))
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 256
    a, b = model(tokens), model(changed)
    assert torch.equal(a[..., :10], b[..., :10])
    assert not torch.allclose(a[..., 10:], b[..., 10:])
    with torch.no_grad():
        model.token_embedding.weight[7].zero_()
    assert torch.count_nonzero(model(tokens)[0, 7]) == 0  # the head reads the embedding's rows


def test_gpt_tiny_refuses_bad_inputs() -> None:
    model = TinyGPT(context=16, dim=32, depth=1, heads=2)
    with pytest.raises(ValueError, match="integer tokens"):
        model(torch.randn(2, 16))
    with pytest.raises(ValueError, match="longer than the context of 16"):
        model(torch.zeros(1, 17, dtype=torch.int64))
    with pytest.raises(ValueError, match="must divide dim"):
        TinyGPT(dim=30, heads=4)


def test_engine_sparsifies_exactly_the_projections() -> None:
    model = create_model("gpt-tiny")
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.warns(UserWarning, match="these modules stay dense"):
        sparsifier = sparsecore.Sparsifier(model, optimizer, "static", density=0.1)
    expected = [f"blocks.{b}.{name}" for b in range(2)
                for name in ("attn.q", "attn.k", "attn.v", "attn.out", "fc", "proj")]
    assert list(sparsifier.layers) == expected
    assert set(sparsifier.dense_layers) == {"token_embedding", "position_embedding"}
    assert [layer.nnz for layer in sparsifier.layers.values()] == [round(0.1 * layer.weight.numel())
                                                                   for layer in sparsifier.layers.values()]
    assert sum(layer.weight.numel() for layer in sparsifier.layers.values()) == 393_216


# --- the harness ---------------------------------------------------------------------------


def test_harness_trains_gpt_tiny_and_records_bits_per_byte(source_tree: Path, tmp_path: Path, capsys) -> None:
    result = run_training(TrainConfig(model="gpt-tiny", dataset="python-stdlib", data_dir=str(source_tree),
                                      algorithm="set", density=0.1, epochs=2, batch_size=4, limit_train=8,
                                      limit_test=4, eval_batch_size=3, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                      device="cpu", threads=1, plots=False, runs_dir=str(tmp_path / "runs")))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["test_bits_per_byte"] == pytest.approx(r["test_loss"] / math.log(2), rel=1e-12)
        assert r["train_bits_per_byte"] == pytest.approx(r["train_loss"] / math.log(2), rel=1e-12)
    assert result.test_bits_per_byte == records[-1]["test_bits_per_byte"]
    # the recorded test loss is the mean over every target byte of the fixed evaluation windows
    model = result.model
    assert model is not None
    model.eval()
    x, y = next(load_dataset("python-stdlib", data_dir=source_tree, limit_test=4).test.batches(4, shuffle=False))
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    assert records[-1]["test_loss"] == pytest.approx(expected, rel=1e-5)
    out = capsys.readouterr().out
    assert f"test bits per byte: {result.test_bits_per_byte:.4f}" in out and "bpb " in out
    summary = (result.run_dir / "summary.md").read_text()
    assert "| train bits/byte |" in summary and "test accuracy" not in summary


@pytest.mark.parametrize(("model", "dataset", "message"), [
    ("gpt-tiny", "random", "language-model model, and the random dataset holds classification samples"),
    ("lenet-300-100", "python-stdlib", "classification model, but dataset 'python-stdlib' is a language-model"),
])
def test_model_and_dataset_tasks_must_match(model: str, dataset: str, message: str, source_tree: Path,
                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        run_training(TrainConfig(model=model, dataset=dataset, data_dir=str(source_tree), epochs=1, device="cpu",
                                 quiet=True, runs_dir=str(tmp_path)))
