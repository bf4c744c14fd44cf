"""Reader for the IDX files MNIST and Fashion-MNIST are published in (optionally gzipped)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from autocompress.errors import WorkloadError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its declared shape.

    Args:
        path: The file.

    Returns:
        The array, in native byte order.

    Raises:
        WorkloadError: The file is missing, truncated or not IDX.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise WorkloadError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise WorkloadError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise WorkloadError(f"{path} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise WorkloadError(
            f"{path} is truncated or padded: expected {count * dtype.itemsize} data bytes "
            f"for shape {shape}, found {len(raw) - header}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )
