"""Packed on-disk format for compressed state dicts: its file size is the size we report.

Layout: magic ``b"ACPK"``, one format-version byte, a little-endian uint32 header length, a
zlib-compressed JSON header (one entry per tensor: name, shape, dtype, encoding, bits, layout
and the ``[offset, length]`` of each of its parts in the blob), then the binary blob. Quantized
tensors (2..8 bits) are stored as unsigned codes plus float32 scales; 16 and 32 bits as raw
float16 / float32; either may instead use a sparse encoding (1-bit nonzero bitmap + only the
nonzero codes/values) when that is smaller. Codes are bit-packed little-endian (layout
``packed``) or, when that entropy-codes smaller, one per byte (layout ``bytes``: a byte-wise
entropy coder then sees whole symbols, as Deep Compression's Huffman stage does). The blob is
stored raw or compressed with zlib (deflate) or lzma (xz), whichever file is smallest.
Everything else is stored losslessly in its own dtype. Raw bytes are in the machine's
(little-endian) byte order.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

QUANTIZABLE_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
GRANULARITIES = ("per_channel", "per_tensor")
MAGIC = b"ACPK"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_FLOATS = {16: (torch.float16, torch.int16), 32: (torch.float32, torch.int32)}


def _check(bits: int, granularity: str) -> None:
    if bits not in QUANTIZABLE_BITS:
        raise ValueError(f"bits must be one of {QUANTIZABLE_BITS}, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def _quantize(w: torch.Tensor, bits: int, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int32, same shape as ``w``) and float32 scales ((C,) per channel, else 0-d).

    Tensors with fewer than two dimensions always get one per-tensor scale.
    """
    qmax = 2 ** (bits - 1) - 1
    per_channel = granularity == "per_channel" and w.dim() >= 2
    if w.numel() == 0:
        scale = torch.zeros(w.shape[0] if per_channel else (), dtype=torch.float32)
        return torch.zeros(w.shape, dtype=torch.int32), scale
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"cannot quantize a weight with NaN or infinite values to {bits} bits")
    if per_channel:
        scale = w.abs().reshape(w.shape[0], -1).amax(dim=1) / qmax
    else:
        scale = w.abs().amax() / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(w / _broadcast(safe, w.dim())).clamp_(-qmax, qmax)
    return codes.to(torch.int32), scale


def _broadcast(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(scale.shape + (1,) * (ndim - 1)) if scale.dim() == 1 else scale


def _dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The one dequantization used both in memory and when loading: codes.float() * scale."""
    return codes.float() * _broadcast(scale, codes.dim())


def fake_quantize(weight: torch.Tensor, bits: int, granularity: str) -> torch.Tensor:
    """Round a float weight to a symmetric signed k-bit grid and return it dequantized.

    Args:
        weight: A floating-point tensor.
        bits: One of ``QUANTIZABLE_BITS``. 32 returns a float32 copy; 16 round-trips through
            float16; 2..8 use codes in ``[-qmax, qmax]`` with ``qmax = 2**(bits-1) - 1``.
        granularity: ``"per_channel"`` (one scale ``max|w| / qmax`` per slice of dim 0, for
            tensors with at least 2 dims) or ``"per_tensor"`` (one scale).

    Returns:
        A float32 tensor of the same shape; zeros stay exactly zero, all-zero channels give
        zeros (never NaN).

    Raises:
        ValueError: Unknown bits or granularity, a non-float tensor, or non-finite values
            with 2..8 bits.
    """
    _check(bits, granularity)
    if not torch.is_floating_point(weight):
        raise ValueError(f"fake_quantize needs a floating-point tensor, got {weight.dtype}")
    w = weight.detach().cpu().to(torch.float32)
    if bits == 32:
        return w.clone()
    if bits == 16:
        return w.to(torch.float16).to(torch.float32)
    return _dequantize(*_quantize(w, bits, granularity))


def _pack(u: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (< 2**bits) into exactly ceil(n*bits/8) bytes, little-endian bits."""
    if bits == 8 or u.size == 0:
        return u.astype(np.uint8).tobytes()
    bitmat = np.unpackbits(u.astype(np.uint8)[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def _unpack(buf: bytes, n: int, bits: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8 or n == 0:
        return raw[:n]
    bitmat = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    return np.packbits(bitmat, axis=1, bitorder="little").reshape(n)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _tensor_from(buf: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not buf:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype).reshape(shape)


def _encode(
    t: torch.Tensor, bits: int, granularity: str, byte_codes: bool = False
) -> tuple[dict[str, Any], list[bytes]]:
    """Header fields and parts (scale, mask, data) of one quantized tensor.

    With ``byte_codes``, integer codes take one byte each instead of being bit-packed.
    """
    if not torch.is_floating_point(t):
        raise ValueError(f"only floating-point tensors can be quantized, got {t.dtype}")
    w = t.detach().cpu().to(torch.float32).reshape(t.shape)
    n = w.numel()
    if bits in _FLOATS:
        ftype, itype = _FLOATS[bits]
        flat = w.reshape(-1).to(ftype)
        nonzero = (flat.view(itype) != 0).numpy()  # bit pattern, so -0.0 is kept
        values, scale, item_bits = flat, None, bits
    else:
        codes, scale = _quantize(w, bits, granularity)
        flat = codes.reshape(-1).numpy()
        nonzero = flat != 0
        values, item_bits = flat + (2 ** (bits - 1) - 1), bits
    nnz = int(nonzero.sum())
    sparse = math.ceil(n / 8) + math.ceil(nnz * item_bits / 8) < math.ceil(n * item_bits / 8)
    if sparse:
        values = values[torch.from_numpy(nonzero)] if bits in _FLOATS else values[nonzero]
    as_bytes = byte_codes and bits < 8
    if bits in _FLOATS:
        data = _tensor_bytes(values)
    elif as_bytes:
        data = values.astype(np.uint8).tobytes()
    else:
        data = _pack(values, bits)
    mask = np.packbits(nonzero, bitorder="little").tobytes() if sparse else b""
    scale_bytes = b"" if scale is None else _tensor_bytes(scale)
    info = {
        "encoding": "sparse" if sparse else "dense",
        "bits": bits,
        "layout": "bytes" if as_bytes else "packed",
        "nnz": nnz,
        "scale_shape": None if scale is None else list(scale.shape),
    }
    return info, [scale_bytes, mask, data]


def _lzma(blob: bytes) -> bytes:
    preset = 9 | lzma.PRESET_EXTREME if len(blob) <= 8 << 20 else 6
    return lzma.compress(blob, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=preset)


_COMPRESSORS = {"zlib": lambda blob: zlib.compress(blob, 9), "lzma": _lzma}
_DECOMPRESSORS = {"zlib": zlib.decompress, "lzma": lzma.decompress}


def _layout(
    state_dict: Mapping[str, torch.Tensor],
    weight_bits: Mapping[str, int],
    granularity: str,
    byte_codes: bool,
) -> tuple[list[dict[str, Any]], bytes]:
    """Header entries and the uncompressed blob of a state dict."""
    entries, chunks, offset = [], [], 0
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype)}
        if name in weight_bits:
            try:
                info, parts = _encode(t, int(weight_bits[name]), granularity, byte_codes)
            except ValueError as e:
                raise ValueError(f"tensor {name!r}: {e}") from None
            entry.update(info)
        else:
            entry["encoding"], parts = "raw", [b"", b"", _tensor_bytes(t)]
        entry["parts"] = []
        for part in parts:
            entry["parts"].append([offset, len(part)])
            chunks.append(part)
            offset += len(part)
        entries.append(entry)
    return entries, b"".join(chunks)


def save_packed(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    weight_bits: Mapping[str, int],
    granularity: str = "per_channel",
    metadata: Mapping[str, Any] | None = None,
    entropy_coding: bool = True,
) -> int:
    """Write a state dict as a packed artifact.

    Args:
        path: Destination file (overwritten).
        state_dict: Tensors by name, e.g. ``model.state_dict()``.
        weight_bits: Bits (one of ``QUANTIZABLE_BITS``) for each tensor to quantize; those
            tensors load back as exactly ``fake_quantize(t, bits, granularity)``. All other
            tensors are stored losslessly in their own dtype.
        granularity: ``"per_channel"`` or ``"per_tensor"``, as in ``fake_quantize``.
        metadata: JSON-serialisable dict stored in the header and returned by ``load_packed``.
        entropy_coding: Entropy-code the blob (deflate or lzma, whichever is smaller; Deep
            Compression's last stage is Huffman coding) when that makes the file smaller,
            trying codes bit-packed and one per byte. Loading is the same either way.

    Returns:
        The size of the written file in bytes.

    Raises:
        ValueError: Unknown bits/granularity, a ``weight_bits`` name not in the state dict, a
            non-tensor value, a non-float tensor to quantize or non-JSON metadata.
    """
    for name, bits in weight_bits.items():
        if name not in state_dict:
            raise ValueError(f"weight_bits names {name!r}, which is not in the state dict")
        _check(bits, granularity)
    entries, blob = _layout(state_dict, weight_bits, granularity, byte_codes=False)
    blob_size, codec = len(blob), "raw"
    if entropy_coding:
        layouts = [(entries, blob)]
        if any(bits < 8 for bits in weight_bits.values()):
            layouts.append(_layout(state_dict, weight_bits, granularity, byte_codes=True))
        candidates = [(len(blob), "raw", entries, blob, len(blob))]
        for layout_entries, layout_blob in layouts:
            for name, compressor in _COMPRESSORS.items():
                coded = compressor(layout_blob)
                candidates.append((len(coded), name, layout_entries, coded, len(layout_blob)))
        _, codec, entries, blob, blob_size = min(candidates, key=lambda c: c[0])
    try:
        header = json.dumps(
            {
                "tensors": entries,
                "blob_size": blob_size,
                "blob_codec": codec,
                "metadata": dict(metadata or {}),
            },
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata is not JSON-serialisable: {e}") from None
    packed = zlib.compress(header.encode("utf-8"), 9)
    with open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(packed)))
        f.write(packed)
        f.write(blob)
    return os.path.getsize(path)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _decode(entry: dict[str, Any], parts: list[bytes]) -> torch.Tensor:
    shape, enc = [int(s) for s in entry["shape"]], entry["encoding"]
    if enc == "raw":
        return _tensor_from(parts[2], _dtype(entry["dtype"]), shape)
    if enc not in ("dense", "sparse"):
        raise ValueError(f"unknown encoding {enc!r}")
    bits, n, nnz = int(entry["bits"]), math.prod(shape), int(entry["nnz"])
    count = nnz if enc == "sparse" else n
    as_bytes = entry.get("layout", "packed") == "bytes"
    if entry.get("layout", "packed") not in ("packed", "bytes"):
        raise ValueError(f"unknown layout {entry['layout']!r}")
    if len(parts[2]) != (count if as_bytes else math.ceil(count * bits / 8)) or (
        enc == "sparse" and len(parts[1]) != math.ceil(n / 8)
    ):
        raise ValueError(f"tensor {entry['name']!r} has data of the wrong length")
    if bits in _FLOATS:
        values = _tensor_from(parts[2], _FLOATS[bits][0], [count]).to(torch.float32)
    else:
        codes = np.frombuffer(parts[2], np.uint8) if as_bytes else _unpack(parts[2], count, bits)
        values = codes.astype(np.int32) - (2 ** (bits - 1) - 1)
        values = torch.from_numpy(values)
    if enc == "sparse":
        nonzero = np.unpackbits(np.frombuffer(parts[1], np.uint8), count=n, bitorder="little")
        full = torch.zeros(n, dtype=values.dtype)
        full[torch.from_numpy(nonzero.astype(bool))] = values
        values = full
    values = values.reshape(shape)
    if bits in _FLOATS:
        return values
    scale = _tensor_from(parts[0], torch.float32, entry["scale_shape"])
    return _dequantize(values, scale)


def load_packed(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a packed artifact written by ``save_packed``.

    Args:
        path: The file.

    Returns:
        The state dict (quantized tensors as float32, bit-identical to ``fake_quantize``;
        others in their original dtype) and the metadata dict.

    Raises:
        ValueError: The file is not a packed artifact: bad magic, unknown version, truncated
            or corrupt header or data. The message names the path.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _PREFIX.size:
        raise ValueError(f"{path}: not a packed artifact (truncated, only {len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a packed artifact (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unknown packed-artifact format version {version}")
    start = _PREFIX.size + header_len
    if len(data) < start:
        raise ValueError(f"{path}: packed artifact is truncated (header incomplete)")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : start]).decode("utf-8"))
        blob = memoryview(data)[start:]
        codec = header.get("blob_codec", "raw")
        if codec in _DECOMPRESSORS:
            blob = memoryview(_DECOMPRESSORS[codec](blob))
        elif codec != "raw":
            raise ValueError(f"unknown blob codec {codec!r}")
        if len(blob) != header["blob_size"]:
            raise ValueError(f"blob is {len(blob)} bytes, header says {header['blob_size']}")
        state: dict[str, torch.Tensor] = {}
        for entry in header["tensors"]:
            parts = []
            for off, length in entry["parts"]:
                if off < 0 or length < 0 or off + length > len(blob):
                    raise ValueError(f"tensor {entry['name']!r} lies outside the blob")
                parts.append(bytes(blob[off : off + length]))
            state[entry["name"]] = _decode(entry, parts)
        return state, header["metadata"]
    except (
        zlib.error,
        lzma.LZMAError,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        RuntimeError,
        ValueError,
    ) as e:
        raise ValueError(f"{path}: corrupt or truncated packed artifact ({e})") from None
