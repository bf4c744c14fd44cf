import gzip
import struct
import sys

import numpy as np
import pytest
import torch

from autocompress.errors import WorkloadError
from autocompress.idx import read_idx
from autocompress.workload import Workload, load_workload, prepare
from autocompress.zoo.vision import mnist_splits


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
    rows = [
        tuple(x.flatten().tolist()) for s in ("train", "val", "test") for x in digits.split(s).x
    ]
    seen = {
        s: {tuple(x.flatten().tolist()) for x in digits.split(s).x}
        for s in ("train", "val", "test")
    }
    # no image is shared between splits (the digits data has a few exact duplicates inside one)
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    assert len(rows) == 1797
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


def test_baseline_trains_on_a_fixed_thread_count_and_restores_the_callers(tmp_path, monkeypatch):
    import autocompress.workload as workload_module

    seen = []
    real_train = workload_module.train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(workload_module, "train", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
        assert seen == [workload_module.BASELINE_THREADS]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_corrupt_cache_file_is_retrained(tmp_path):
    load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.pt")
    cache.write_bytes(b"not a torch file")
    w = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    assert w.evaluate(w.model) > 0.5


def test_a_bit_flipped_cache_file_is_not_trusted(tmp_path):
    first = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.pt")
    state = torch.load(cache, weights_only=True)
    state["0.weight"][0, 0, 0, 0] += 1.0  # a valid file with one changed weight
    torch.save(state, cache)
    again = load_workload("tests.conftest:tiny_workload", cache_dir=tmp_path)
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)  # retrained to the same weights, the flipped file discarded


def _nan_model():
    class NaN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x) * float("nan")

    return NaN()


def test_non_finite_baseline_outputs_are_a_clear_error():
    data = (torch.randn(16, 8), torch.randint(0, 3, (16,)))
    with pytest.raises(WorkloadError, match="NaN or infinite"):
        prepare(Workload(train=data, val=data, test=data, model=_nan_model()))


def test_hugging_face_style_outputs_and_dict_batches_need_no_wrapper():
    from collections import OrderedDict

    class Output(OrderedDict):
        pass

    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, input_ids, attention_mask):
            h = (self.emb(input_ids) * attention_mask[..., None]).mean(1)
            return Output(logits=self.fc(h), hidden=h)

    batches = [
        {
            "input_ids": torch.randint(0, 20, (4, 5)),
            "attention_mask": torch.ones(4, 5, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,)),
        }
        for _ in range(3)
    ]
    loaded = prepare(Workload(train=batches, val=batches, test=batches, model=DictModel()))
    assert set(loaded.example_input) == {"input_ids", "attention_mask"}
    assert loaded.example_input["input_ids"].shape == (1, 5)
    assert 0.0 <= loaded.evaluate(loaded.model) <= 1.0


def test_labels_out_of_range_and_shapes_are_named():
    data = (torch.randn(16, 8), torch.full((16,), 7))
    with pytest.raises(WorkloadError, match=r"class indices in \[0, 3\)"):
        prepare(Workload(train=data, val=data, test=data, model=torch.nn.Linear(8, 3)))
    with pytest.raises(WorkloadError, match="one-shot iterator"):
        Workload(train=iter([data]), val=data, test=data, model=torch.nn.Linear(8, 3))


def test_a_workload_module_that_exits_is_an_error_not_an_exit(tmp_path, monkeypatch):
    (tmp_path / "exiting_wl.py").write_text("import sys\ndef make():\n    sys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkloadError, match="SystemExit"):
        load_workload("exiting_wl:make", cache_dir=None)


def test_a_transformer_baseline_trains_to_the_same_bytes_under_any_callers_thread_count():
    # With the caller's count (1 or 2 threads) these weights differ; on the fixed count they match.
    from autocompress.data import TensorData
    from autocompress.training import TrainingConfig
    from autocompress.workload import state_sha256

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(16, 64)
            layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2)
            self.head = torch.nn.Linear(64, 3)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, 16, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long() + (x[:, :, 1].sum(1) > 2).long()
    training = TrainingConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-3)
    before, digests = torch.get_num_threads(), []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            workload = Workload(
                name="encoder", train=TensorData(x[:400], y[:400]),
                val=TensorData(x[400:500], y[400:500]), test=TensorData(x[500:], y[500:]),
                model_factory=Encoder, baseline_training=training,
            )  # fmt: skip
            digests.append(state_sha256(prepare(workload, seed=0).model.state_dict()))
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]


_USER_MODULE = """
import torch
from torch import nn
from autocompress.workload import Workload
from {helper} import rows

def make_workload():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    return Workload(model=model, train=rows(64, 0), val=rows(32, 1), test=rows(32, 2))
"""
_HELPER = """
import torch
def rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)
"""


def _user_package(root):
    """``mywl/sig1d.py`` importing its neighbour ``mywl/data_rows.py``, as users lay them out."""
    package = root / "mywl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data_rows.py").write_text(_HELPER)
    (package / "sig1d.py").write_text(_USER_MODULE.format(helper="mywl.data_rows"))
    (root / "alone").mkdir()
    (root / "alone" / "helper_rows.py").write_text(_HELPER)
    (root / "alone" / "wl.py").write_text(_USER_MODULE.format(helper="helper_rows"))


def test_a_module_in_the_current_folder_loads_as_python_m_finds_it(tmp_path, monkeypatch):
    _user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    wl = load_workload("mywl.sig1d:make_workload", cache_dir=None)
    assert wl.name == "mywl.sig1d:make_workload" and len(wl.val) == 32
    assert str(tmp_path) not in sys.path  # the folder is searched, not left on the path
    for name in [m for m in sys.modules if m == "mywl" or m.startswith("mywl.")]:
        del sys.modules[name]  # other tests must not find it imported


def test_a_file_by_path_loads_with_its_neighbours(tmp_path, monkeypatch):
    _user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    wl = load_workload("alone/wl.py:make_workload", cache_dir=None)
    assert len(wl.test) == 32
    with pytest.raises(WorkloadError, match="no file .*missing.py"):
        load_workload("alone/missing.py:make_workload", cache_dir=None)


def test_a_module_not_found_names_the_folder_searched_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkloadError) as err:
        load_workload("nowhere_pkg.sig1d:make_workload", cache_dir=None)
    message = str(err.value)
    assert f"looked in the current folder {tmp_path}" in message
    assert "--workload path/to/file.py:function" in message and "\n" not in message
