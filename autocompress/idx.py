"""Reader for the IDX files MNIST and Fashion-MNIST are published in (optionally gzipped)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from autocompress.errors import WorkloadError
from autocompress.safe_input import non_file_kind

_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
MAX_DATA_BYTES = 1 << 30  # 1 GiB; MNIST's largest file holds 47 MB
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its declared shape.

    The data are read in chunks and never past what the header declares (plus one byte to
    notice padding), so a gzip bomb (a small file of a gigabyte of zeros) fails at once.

    Args:
        path: The file.

    Returns:
        The array, in native byte order.

    Raises:
        WorkloadError: The file is missing, not a file, truncated, padded, not IDX, or declares
            more than 1 GiB of data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        kind = non_file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise WorkloadError(f"cannot read IDX file {path}: it is {kind}, not a file")
        with opener(path, "rb") as f:
            magic = _read_at_most(f, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
                raise WorkloadError(f"{path} is not an IDX file (bad magic number)")
            dtype, ndim = np.dtype(_DTYPES[magic[2]]), magic[3]
            dims = _read_at_most(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise WorkloadError(f"{path} is truncated (header)")
            shape = struct.unpack(f">{ndim}I", dims)
            size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if size > MAX_DATA_BYTES:
                raise WorkloadError(
                    f"{path} declares shape {shape}, {size:,} bytes of data, over the "
                    f"{MAX_DATA_BYTES:,}-byte limit; it is corrupt or not IDX"
                )
            raw = _read_at_most(f, size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise WorkloadError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) > size:
        raise WorkloadError(
            f"{path} is padded or not IDX: more data than the {size} bytes its header "
            f"declares for shape {shape}"
        )
    if len(raw) < size:
        raise WorkloadError(
            f"{path} is truncated: expected {size} data bytes for shape {shape}, found {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _read_at_most(f: _Readable, limit: int) -> bytes:
    """Up to ``limit`` bytes, decompressed a chunk at a time (never more than asked)."""
    chunks, total = [], 0
    while total < limit:
        chunk = f.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
