"""The integer grid weights are rounded to: symmetric k-bit codes times float32 scales.

One scale per tensor, per output channel, or per group of ``group_size`` consecutive input
features of each output channel (the layout ONNX Runtime's ``MatMulNBits`` and GPTQ use).
The same two functions quantize in memory, in quantization-aware fine-tuning and in the packed
artifact, so the model that is evaluated is exactly the model that is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

GRANULARITIES = ("per_channel", "per_tensor", "group32", "group64", "group128")
INTEGER_BITS = (2, 3, 4, 5, 6, 7, 8)
FLOAT_BITS = (16, 32)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: 2..8 (integer codes), 16 (float16) or 32 (unchanged).
        granularity: ``per_channel``, ``per_tensor`` or ``groupN`` (N input features share
            a scale, within one output channel).
        channel_axis: The tensor's output-channel axis (1 for transformers' ``Conv1D``,
            whose weight is stored ``[in, out]``; 0 otherwise).
    """

    bits: int
    granularity: str = "per_channel"
    channel_axis: int = 0

    def __post_init__(self) -> None:
        if self.bits not in INTEGER_BITS + FLOAT_BITS:
            raise ValueError(f"bits must be one of {INTEGER_BITS + FLOAT_BITS}, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.channel_axis not in (0, 1):
            raise ValueError(f"channel_axis must be 0 or 1, got {self.channel_axis!r}")

    @property
    def group_size(self) -> int | None:
        """Input features per scale for group granularity, else ``None``."""
        return int(self.granularity[5:]) if self.granularity.startswith("group") else None

    @property
    def qmax(self) -> int:
        """The largest code: codes lie in ``[-qmax, qmax]``."""
        return int(2 ** (self.bits - 1) - 1)

    def to_list(self) -> list[object]:
        """A compact JSON form: ``[bits, granularity, channel_axis]``."""
        return [self.bits, self.granularity, self.channel_axis]

    @classmethod
    def from_list(cls, value: list[Any] | int) -> QuantSpec:
        """Inverse of :meth:`to_list` (a bare number of bits also works)."""
        if isinstance(value, int):
            return cls(int(value))
        bits, granularity, axis = value
        return cls(int(bits), str(granularity), int(axis))


def _as_rows(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``w`` as ``[channels, features]`` (channel axis first, the rest flattened)."""
    if w.dim() < 2:
        return w.reshape(1, -1)
    if spec.channel_axis == 1:
        w = w.transpose(0, 1)
    features = 1
    for n in w.shape[1:]:
        features *= n
    return w.reshape(w.shape[0], features)


def _from_rows(rows: torch.Tensor, shape: torch.Size, spec: QuantSpec) -> torch.Tensor:
    if len(shape) < 2:
        return rows.reshape(shape)
    if spec.channel_axis == 1:
        swapped = (shape[1], shape[0], *shape[2:])
        return rows.reshape(swapped).transpose(0, 1).contiguous()
    return rows.reshape(shape)


def scale_shape(shape: torch.Size | list[int], spec: QuantSpec) -> list[int]:
    """Shape of the scales of a tensor of ``shape``: ``[]``, ``[C]`` or ``[C, groups]``."""
    shape = list(shape)
    if spec.granularity == "per_tensor" or len(shape) < 2:
        return []
    channels = shape[spec.channel_axis]
    if spec.group_size is None:
        return [channels]
    features = 1
    for i, n in enumerate(shape):
        if i != spec.channel_axis:
            features *= n
    return [channels, -(-features // spec.group_size)]


def _grouped(rows: torch.Tensor, group: int) -> torch.Tensor:
    """``[C, F]`` -> ``[C, G, group]``, zero-padded at the end (zeros never raise a scale)."""
    c, f = rows.shape
    pad = (-f) % group
    if pad:
        rows = torch.cat([rows, rows.new_zeros(c, pad)], dim=1)
    return rows.reshape(c, -1, group)


def absmax_scale(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round-to-nearest scales: the largest magnitude of each slice over ``qmax``."""
    rows = _as_rows(w.detach().to(torch.float32), spec)
    if rows.numel() == 0:
        return torch.zeros([max(n, 0) for n in scale_shape(w.shape, spec)])
    if spec.granularity == "per_tensor" or w.dim() < 2:
        return rows.abs().amax() / spec.qmax
    if spec.group_size is None:
        return rows.abs().amax(dim=1) / spec.qmax
    return _grouped(rows, spec.group_size).abs().amax(dim=2) / spec.qmax


def _expanded(scale: torch.Tensor, rows: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Scales broadcast to ``rows`` (``[C, F]``); zero scales become one (codes are zero)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if safe.dim() == 0:
        return safe
    if safe.dim() == 1:
        return safe[:, None]
    if spec.group_size is None:  # TypeError, as repeat_interleave(None) raised
        raise TypeError(f"scales of shape {list(scale.shape)} need a group granularity")
    return safe.repeat_interleave(spec.group_size, dim=1)[:, : rows.shape[1]]


def codes_for(w: torch.Tensor, scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes (int32, shape of ``w``) of ``w`` on the grid given by ``scale``.

    Raises:
        ValueError: ``w`` has NaN or infinite values.
    """
    w = w.detach().to(torch.float32)
    if w.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.int32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(
            f"cannot quantize a weight with NaN or infinite values to {spec.bits} bits"
        )
    rows = _as_rows(w, spec)
    codes = torch.round(rows / _expanded(scale, rows, spec)).clamp_(-spec.qmax, spec.qmax)
    return _from_rows(codes.to(torch.int32), w.shape, spec)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``codes * scale`` as float32, the one dequantization used in memory and on load."""
    if codes.numel() == 0:
        return torch.zeros(codes.shape)
    rows = _as_rows(codes, spec).to(torch.float32)
    return _from_rows(rows * _expanded(scale, rows, spec), codes.shape, spec)


def quantize(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes and scales of ``w`` (integer bits only)."""
    scale = absmax_scale(w, spec)
    return codes_for(w, scale, spec), scale


def fake_quantize(
    weight: torch.Tensor, spec: QuantSpec | int, granularity: str = "per_channel"
) -> torch.Tensor:
    """``weight`` rounded to its grid and dequantized (float32, same shape).

    32 bits returns a float32 copy; 16 round-trips through float16; 2..8 bits use
    round-to-nearest on the grid of ``spec``. Zeros stay zero; all-zero slices give zeros.

    Raises:
        ValueError: A non-float tensor, or non-finite values with integer bits.
    """
    if isinstance(spec, int):
        spec = QuantSpec(spec, granularity)
    if not torch.is_floating_point(weight):
        raise ValueError(f"fake_quantize needs a floating-point tensor, got {weight.dtype}")
    w = weight.detach().cpu().to(torch.float32)
    if spec.bits == 32:
        return w.clone()
    if spec.bits == 16:
        return w.to(torch.float16).to(torch.float32)
    if w.numel() == 0:
        return w.clone()
    codes, scale = quantize(w, spec)
    return dequantize(codes, scale, spec)


def storage_bits(numel: int, shape: list[int], spec: QuantSpec | None) -> int:
    """Bits a tensor takes on the grid: its codes plus its float32 scales (32 when float)."""
    if spec is None or spec.bits == 32:
        return 32 * numel
    if spec.bits == 16:
        return 16 * numel
    scales = 1
    for n in scale_shape(shape, spec):
        scales *= n
    return spec.bits * numel + 32 * scales
