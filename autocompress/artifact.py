"""Packed on-disk format for compressed state dicts: its file size is the size we report.

Layout: magic ``b"ACPK"``, one format-version byte, a little-endian uint32 header length, a
zlib-compressed JSON header (one entry per tensor: name, shape, dtype, encoding, bits,
granularity, layout and the ``[offset, length]`` of each of its parts in the blob), then the
binary blob. Quantized tensors (2..8 bits, see :mod:`autocompress.grid`) are stored as
unsigned codes plus their float32 scales; 16 and 32 bits as raw float16 / float32; either may
instead use a sparse encoding (1-bit nonzero bitmap + only the nonzero codes/values) when that
is smaller. Codes are bit-packed little-endian (layout ``packed``) or, when that entropy-codes
smaller, one per byte (layout ``bytes``: a byte-wise entropy coder then sees whole symbols, as
Deep Compression's Huffman stage does). The blob is stored raw or compressed with zlib
(deflate) or lzma (xz), whichever file is smallest. Tensors that share storage (tied weights,
e.g. a language model's embedding and output layer) are stored once (``encoding: alias``).
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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from autocompress.grid import (
    GRANULARITIES,
    QuantSpec,
    absmax_scale,
    codes_for,
    dequantize,
    fake_quantize,
)

__all__ = ["QUANTIZABLE_BITS", "GRANULARITIES", "fake_quantize", "load_packed", "save_packed"]

QUANTIZABLE_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
MAGIC = b"ACPK"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_FLOATS = {16: (torch.float16, torch.int16), 32: (torch.float32, torch.int32)}


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
    t: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None, byte_codes: bool = False
) -> tuple[dict[str, Any], list[bytes]]:
    """Header fields and parts (scale, mask, data) of one quantized tensor.

    With ``byte_codes``, integer codes take one byte each instead of being bit-packed.
    """
    if not torch.is_floating_point(t):
        raise ValueError(f"only floating-point tensors can be quantized, got {t.dtype}")
    w = t.detach().cpu().to(torch.float32).reshape(t.shape)
    n, bits = w.numel(), spec.bits
    if bits in _FLOATS:
        ftype, itype = _FLOATS[bits]
        floats = w.reshape(-1).to(ftype)
        nonzero = (floats.view(itype) != 0).numpy()  # bit pattern, so -0.0 is kept
        scale = None
    else:
        if scale is None:
            scale = absmax_scale(w, spec)
        scale = scale.detach().cpu().to(torch.float32)
        codes = codes_for(w, scale, spec).reshape(-1).numpy()
        nonzero = codes != 0
    nnz = int(nonzero.sum())
    sparse = math.ceil(n / 8) + math.ceil(nnz * bits / 8) < math.ceil(n * bits / 8)
    as_bytes = byte_codes and bits < 8
    if bits in _FLOATS:
        data = _tensor_bytes(floats[torch.from_numpy(nonzero)] if sparse else floats)
    else:
        values = codes + spec.qmax
        if sparse:
            values = values[nonzero]
        data = values.astype(np.uint8).tobytes() if as_bytes else _pack(values, bits)
    mask = np.packbits(nonzero, bitorder="little").tobytes() if sparse else b""
    scale_bytes = b"" if scale is None else _tensor_bytes(scale)
    info = {
        "encoding": "sparse" if sparse else "dense",
        "bits": bits,
        "granularity": spec.granularity,
        "channel_axis": spec.channel_axis,
        "layout": "bytes" if as_bytes else "packed",
        "nnz": nnz,
        "scale_shape": None if scale is None else list(scale.shape),
    }
    return info, [scale_bytes, mask, data]


def _lzma(blob: bytes) -> bytes:
    preset = 9 | lzma.PRESET_EXTREME if len(blob) <= 8 << 20 else 6
    return lzma.compress(blob, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=preset)


_COMPRESSORS = {"zlib": lambda blob: zlib.compress(blob, 9), "lzma": _lzma}
_DECOMPRESSORS: dict[str, Callable[[memoryview], bytes]] = {
    "zlib": zlib.decompress,
    "lzma": lzma.decompress,
}


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _layout(
    state_dict: Mapping[str, torch.Tensor],
    plan: Mapping[str, QuantSpec],
    scales: Mapping[str, torch.Tensor],
    byte_codes: bool,
) -> tuple[list[dict[str, Any]], bytes]:
    """Header entries and the uncompressed blob of a state dict."""
    entries, chunks, offset = [], [], 0
    first_of: dict[tuple[Any, ...], str] = {}
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype)}
        key = _storage_key(t) if t.numel() else None
        if key is not None and key in first_of:
            entry["encoding"], entry["alias_of"] = "alias", first_of[key]
            entries.append(entry)
            continue
        if key is not None:
            first_of[key] = name
        if name in plan:
            try:
                info, parts = _encode(t, plan[name], scales.get(name), byte_codes)
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
    plan: Mapping[str, QuantSpec | int],
    scales: Mapping[str, torch.Tensor] | None = None,
    granularity: str = "per_channel",
    metadata: Mapping[str, Any] | None = None,
    entropy_coding: bool = True,
) -> int:
    """Write a state dict as a packed artifact.

    Args:
        path: Destination file (overwritten).
        state_dict: Tensors by name, e.g. ``model.state_dict()``.
        plan: How each tensor to quantize is stored (a :class:`~autocompress.grid.QuantSpec`,
            or a number of bits with ``granularity``). Those tensors load back as exactly
            ``dequantize(codes, scale)``; all other tensors are stored losslessly.
        scales: The scales of tensors already on their grid (e.g. after GPTQ); the others get
            round-to-nearest scales. A tensor ``w`` equal to ``codes * scale`` is stored with
            exactly those codes.
        granularity: Granularity of plan entries given as a bare number of bits.
        metadata: JSON-serialisable dict stored in the header and returned by ``load_packed``.
        entropy_coding: Entropy-code the blob (deflate or lzma, whichever is smaller; Deep
            Compression's last stage is Huffman coding) when that makes the file smaller,
            trying codes bit-packed and one per byte. Loading is the same either way.

    Returns:
        The size of the written file in bytes.

    Raises:
        ValueError: Unknown bits/granularity, a plan name not in the state dict, a non-tensor
            value, a non-float tensor to quantize or non-JSON metadata.
    """
    specs: dict[str, QuantSpec] = {}
    for name, spec in plan.items():
        if name not in state_dict:
            raise ValueError(f"the plan names {name!r}, which is not in the state dict")
        specs[name] = spec if isinstance(spec, QuantSpec) else QuantSpec(int(spec), granularity)
    specs = {n: s for n, s in specs.items() if s.bits != 32}
    scales = dict(scales or {})
    entries, blob = _layout(state_dict, specs, scales, byte_codes=False)
    blob_size, codec = len(blob), "raw"
    if entropy_coding:
        layouts = [(entries, blob)]
        if any(s.bits < 8 for s in specs.values()):
            layouts.append(_layout(state_dict, specs, scales, byte_codes=True))
        candidates = [(len(blob), "raw", entries, blob, len(blob))]
        for layout_entries, layout_blob in layouts:
            for codec_name, compressor in _COMPRESSORS.items():
                coded = compressor(layout_blob)
                candidates.append((len(coded), codec_name, layout_entries, coded, len(layout_blob)))
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


def _spec_of(entry: dict[str, Any]) -> QuantSpec:
    """The entry's grid; files written before group granularity imply it by the scale's shape."""
    granularity = entry.get("granularity")
    if granularity is None:
        granularity = "per_tensor" if not entry.get("scale_shape") else "per_channel"
    return QuantSpec(int(entry["bits"]), granularity, int(entry.get("channel_axis", 0)))


def _decode(entry: dict[str, Any], parts: list[bytes]) -> torch.Tensor:
    shape, enc = [int(s) for s in entry["shape"]], entry["encoding"]
    if enc == "raw":
        return _tensor_from(parts[2], _dtype(entry["dtype"]), shape)
    if enc not in ("dense", "sparse"):
        raise ValueError(f"unknown encoding {enc!r}")
    spec = _spec_of(entry)
    bits, n, nnz = spec.bits, math.prod(shape), int(entry["nnz"])
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
        values = torch.from_numpy(codes.astype(np.int32) - spec.qmax)
    if enc == "sparse":
        nonzero = np.unpackbits(np.frombuffer(parts[1], np.uint8), count=n, bitorder="little")
        full = torch.zeros(n, dtype=values.dtype)
        full[torch.from_numpy(nonzero.astype(bool))] = values
        values = full
    values = values.reshape(shape)
    if bits in _FLOATS:
        return values
    scale = _tensor_from(parts[0], torch.float32, entry["scale_shape"])
    return dequantize(values, scale, spec)


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
            if entry["encoding"] == "alias":
                state[entry["name"]] = state[entry["alias_of"]]
                continue
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
