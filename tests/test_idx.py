"""IDX files that lie about their size: a gzip bomb fails at once, in little memory."""

from __future__ import annotations

import gzip
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from autocompress.errors import WorkloadError
from autocompress.idx import MAX_DATA_BYTES, read_idx


def _gzip_bomb(path, shape: tuple[int, ...], zeros: int) -> None:
    """An IDX header declaring ``shape`` (uint8), then ``zeros`` zero bytes, gzipped."""
    header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    parts = [packer.compress(header)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    path.write_bytes(b"".join(parts))


def test_a_gzip_bomb_fails_fast_in_little_memory(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, (2, 2), 50 << 20)
    assert bomb.stat().st_size < 100_000  # 50 MB of zeros, compressed
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(WorkloadError) as info:
            read_idx(bomb)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "is padded or not IDX: more data than the 4 bytes its header declares" in message
    assert "\n" not in message
    assert peak < 5 << 20, f"{peak:,} bytes allocated"  # the old reader held all 50 MB
    assert elapsed < 1.0


def test_a_header_declaring_more_than_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge"
    shape = (60_000, 1024, 1024)  # 63 GB of uint8
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *shape) + b"\x00" * 16)
    with pytest.raises(WorkloadError, match=f"over the {MAX_DATA_BYTES:,}-byte limit"):
        read_idx(path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "labels.gz"
    os.mkfifo(fifo)
    with pytest.raises(WorkloadError, match="it is a FIFO"):
        read_idx(fifo)


def test_a_corrupt_gzip_stream_is_one_line(tmp_path):
    good = gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4) + b"\x01\x02\x03\x04")
    path = tmp_path / "x.gz"
    path.write_bytes(good[:12] + bytes(b ^ 0xFF for b in good[12:20]) + good[20:])
    with pytest.raises(WorkloadError) as info:
        read_idx(path)
    assert "\n" not in str(info.value)


def test_exact_data_still_reads(tmp_path):
    data = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    path = tmp_path / "ok.gz"
    header = bytes([0, 0, 0x0C, 3]) + struct.pack(">3I", 2, 3, 4)
    path.write_bytes(gzip.compress(header + data.tobytes()))
    assert np.array_equal(read_idx(path), data)


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of unsigned bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    "image, labels, fragment",
    [
        ((10, 32, 32), [0] * 10, "images of shape (32, 32), MNIST's are (28, 28)"),
        ((10, 28, 28), [0] * 9 + [12], "labels from 0 to 12, MNIST's are 0 to 9"),
        ((10, 28, 28), [0] * 7, "10 images but labels of shape (7,)"),
    ],
    ids=["wrong-image-size", "label-out-of-range", "fewer-labels"],
)
def test_a_data_folder_with_wrong_images_or_labels_is_one_line(tmp_path, image, labels, fragment):
    from autocompress.workload import load_workload

    for prefix in ("train", "t10k"):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros(image))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array(labels))
    with pytest.raises(WorkloadError) as info:
        load_workload("mnist-mlp", data_dir=tmp_path, cache_dir=None)
    assert fragment in str(info.value) and "point --data-dir at MNIST" in str(info.value)
