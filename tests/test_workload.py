import gzip
import struct

import numpy as np
import pytest
import torch

from autocompress.errors import WorkloadError
from autocompress.idx import read_idx
from autocompress.workload import load_workload, mnist_splits


def write_idx(path, array: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_round_trip(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    ints = np.array([1, -2, 300000], dtype=np.int32)
    write_idx(tmp_path / "y", ints, code=0x0C, gz=False)
    assert np.array_equal(read_idx(tmp_path / "y"), ints)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x01\x08\x01")
    with pytest.raises(WorkloadError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 2), np.uint8), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(WorkloadError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_splits_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (5100, 28, 28), np.uint8)
    )
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 5100, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20, np.uint8))
    train, val, test = mnist_splits(tmp_path)
    assert (len(train), len(val), len(test)) == (100, 5000, 20)
    assert train.x.shape[1:] == (1, 28, 28) and train.y.dtype == torch.long


def test_mnist_needs_a_directory(monkeypatch):
    monkeypatch.delenv("AUTOCOMPRESS_MNIST_DIR", raising=False)
    with pytest.raises(WorkloadError, match="--data-dir"):
        load_workload("mnist-mlp")


@pytest.mark.parametrize(
    "ref, message",
    [
        ("cifar", "unknown workload 'cifar'"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("tests.conftest:missing", "has no function 'missing'"),
        ("tests.conftest:tiny_cnn", "returned Sequential, expected"),
    ],
)
def test_bad_workload_references(ref, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(ref, cache_dir=None)


def test_digits_workload_has_three_disjoint_splits(digits):
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.evaluate(digits.model, "val") > 0.95
    assert digits.evaluate(digits.model, "test") > 0.95


def test_baseline_is_cached(tmp_path):
    first = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    second = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_corrupt_cache_file_is_retrained(tmp_path):
    load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.pt")
    cache.write_bytes(b"not a torch file")
    w = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    assert w.evaluate(w.model) > 0.5
