"""Quantization: k-bit weights (stored packed), and int8 activations where an int8 kernel exists.

Weights of conv and linear layers are rounded to a symmetric k-bit grid (the packed artifact
stores exactly those codes). With ``int8_activations`` the model is converted with PyTorch's FX
graph-mode static quantization for the x86 backend (calibrated on training data), so latency
is that of real int8 kernels. Without it, the deployed model computes in float32: k-bit weights
shrink the artifact but not the latency, and the trial records that.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.artifact import fake_quantize
from autocompress.steps.prune import prunable_layers

WEIGHT_BITS = (32, 16, 8, 7, 6, 5, 4, 3, 2)
GRANULARITIES = ("per_channel", "per_tensor")
INT8_ENGINE = "x86"


@dataclass(frozen=True)
class QuantizeConfig:
    """How weights and activations are quantized.

    Attributes:
        weight_bits: Bits per conv/linear weight: 32 (float), 16 (half) or 2..8 (integer grid).
        granularity: One scale per output channel (``per_channel``) or per tensor.
        int8_activations: Run with int8 activations and kernels (needs ``weight_bits <= 8``).
        keep_edges_8bit: Below 8 bits, keep the first and last layer at 8 bits (they are the
            most sensitive and the smallest).
        calibration_size: Training examples used to calibrate int8 activation ranges.
        layer_bits: Per-layer weight bits by module name (per-layer search); overrides
            ``weight_bits`` and ``keep_edges_8bit`` for those layers.
    """

    weight_bits: int = 32
    granularity: str = "per_channel"
    int8_activations: bool = False
    keep_edges_8bit: bool = True
    calibration_size: int = 512
    layer_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, bits in self.layer_bits.items():
            if bits not in WEIGHT_BITS or (self.int8_activations and bits > 8):
                raise ValueError(f"weight bits of layer {name!r} cannot be {bits}")
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, got {self.weight_bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if self.int8_activations and self.weight_bits > 8:
            raise ValueError("int8 activations need weight_bits <= 8")
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {self.calibration_size}")


def int8_supported() -> bool:
    """Whether this PyTorch build has the x86 int8 kernels (FBGEMM/oneDNN)."""
    return INT8_ENGINE in torch.backends.quantized.supported_engines


def weight_bit_plan(model: nn.Module, config: QuantizeConfig) -> dict[str, int]:
    """Bits for each conv/linear weight, by state-dict name."""
    layers = prunable_layers(model)
    plan = {}
    for i, (name, _) in enumerate(layers):
        bits = config.weight_bits
        if config.keep_edges_8bit and bits < 8 and i in (0, len(layers) - 1):
            bits = 8
        bits = config.layer_bits.get(name, bits)
        plan[f"{name}.weight" if name else "weight"] = bits
    return plan


def quantize_weights_(model: nn.Module, plan: dict[str, int], granularity: str) -> None:
    """Round each planned weight in place to its k-bit grid (what the artifact stores)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, bits in plan.items():
            if bits < 32:
                params[name].copy_(fake_quantize(params[name].detach(), bits, granularity))


def effective_bits(model: nn.Module, plan: dict[str, int]) -> float:
    """Weight-count-weighted mean bits of the planned weights."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in plan)
    return sum(params[n].numel() * b for n, b in plan.items()) / total if total else 32.0


def _qconfig_mapping(granularity: str) -> Any:
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig
    from torch.ao.quantization.qconfig_mapping import QConfigMapping

    weight = (
        PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        if granularity == "per_channel"
        else MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    )
    activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def _prepare(model: nn.Module, example_input: torch.Tensor, granularity: str) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = INT8_ENGINE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_fx(
            copy.deepcopy(model).eval(), _qconfig_mapping(granularity), (example_input,)
        )


def _convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()


def to_int8(
    model: nn.Module, example_input: torch.Tensor, calibration_x: torch.Tensor, granularity: str
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Convert a float model to int8 kernels (FX static quantization, x86).

    Returns:
        The int8 module and its calibrated activation ranges (observer min/max), from which
        :func:`int8_from_ranges` rebuilds the same module without calibration data.
    """
    prepared = _prepare(model, example_input, granularity)
    with torch.inference_mode():
        for start in range(0, len(calibration_x), 256):
            prepared(calibration_x[start : start + 256])
    ranges = {
        k: v.reshape(-1).tolist()
        for k, v in prepared.state_dict().items()
        if k.startswith("activation_post_process") and k.endswith(("min_val", "max_val"))
    }
    return _convert(prepared), ranges


def int8_from_ranges(
    model: nn.Module, example_input: torch.Tensor, granularity: str, ranges: dict[str, list[float]]
) -> nn.Module:
    """Rebuild the int8 module of :func:`to_int8` from stored activation ranges."""
    prepared = _prepare(model, example_input, granularity)
    state = {k: torch.tensor(v[0] if len(v) == 1 else v) for k, v in ranges.items()}
    missing = set(state) - set(prepared.state_dict())
    if missing:
        raise ValueError(f"stored int8 ranges do not fit this model (e.g. {sorted(missing)[0]})")
    prepared.load_state_dict(state, strict=False)
    return _convert(prepared)
