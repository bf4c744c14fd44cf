"""int8 activations: run the model on int8 kernels where the target has them.

A deploy-stage method: the quantize stage has already put the weights on an 8-bit (or finer)
grid; deployment turns the model into the target's int8 form (:mod:`autocompress.deploy`).
``static`` calibrates activation ranges on training data; ``dynamic`` measures them per batch
and quantizes linear layers only (fast for transformers, slow on convolutions: it is measured,
never assumed).

- ``cpu-torch``: static is FX graph-mode quantization (x86); where the model cannot be traced
  (Hugging Face models, attention), dynamic is ``torch.ao.quantization.quantize_dynamic``.
- ``cpu-onnxruntime``: ONNX Runtime's ``quantize_static`` (QDQ or QOperator, MinMax / Entropy /
  Percentile calibration) or ``quantize_dynamic``, on the exported float model.
- ``cpu-openvino``: NNCF's ``quantize`` (static; its preset and SmoothQuant alpha are the
  runtime's settings) or int8 weights with the CPU plugin's dynamic activation quantization.

Each runtime declares which of these settings it reads (``INT8_PARAMS``); only those are asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from autocompress.methods._base import Context, Method, Param, Suggester
from autocompress.runtimes import RUNTIMES

MODES = ("static", "dynamic")
CALIBRATIONS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")


@dataclass(frozen=True)
class Int8(Method):
    """int8 activations and kernels on the target.

    Attributes:
        mode: ``static`` (calibrated ranges) or ``dynamic`` (ranges per batch, linear layers).
        per_channel: One weight scale per output channel (else per tensor).
        calibration: ONNX Runtime's calibration method for static ranges.
        quant_format: ONNX Runtime's graph format for static int8: ``qdq`` or ``qoperator``.
        reduce_range: 7-bit activations (avoids overflow on CPUs without VNNI).
    """

    mode: str = "static"
    per_channel: bool = True
    calibration: str = "minmax"
    quant_format: str = "qdq"
    reduce_range: bool = False

    WARM_START_REQUIRED_OFF: ClassVar[bool] = True
    stage: ClassVar[str] = "deploy"
    SEARCH: ClassVar[dict[str, Param]] = {
        "mode": Param(str, "static", "static (calibrated) or dynamic activation ranges",
                      choices=MODES),
        "per_channel": Param(bool, True, "one weight scale per output channel"),
        "calibration": Param(str, "minmax", "ONNX Runtime calibration method",
                             choices=CALIBRATIONS),
        "quant_format": Param(str, "qdq", "ONNX Runtime int8 graph format", choices=FORMATS),
        "reduce_range": Param(bool, False, "7-bit activations"),
    }  # fmt: skip

    def __post_init__(self) -> None:
        for name, allowed in (
            ("mode", MODES), ("calibration", CALIBRATIONS), ("quant_format", FORMATS),
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"int8 {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )

    @classmethod
    def suggest(cls, s: Suggester) -> Method | None:
        weights = s.chosen.get("weights")
        if weights is not None and getattr(weights, "bits", 8) > 8:
            return None  # int8 kernels need weights of 8 bits or fewer
        # Each runtime reads its own subset (ORT's calibration method and graph format).
        used = RUNTIMES[s.runtime].INT8_PARAMS
        values = {k: s(k) for k in cls.SEARCH if k in used}
        if values.get("mode") == "dynamic":
            values.pop("calibration", None), values.pop("quant_format", None)
        return cls(**values)

    def describe(self) -> str:
        text = f"int8 {self.mode}"
        if self.mode == "static" and (self.quant_format != "qdq" or self.calibration != "minmax"):
            text += f" {self.quant_format}/{self.calibration}"
        return text + (" rr" if self.reduce_range else "")

    def apply(self, model: nn.Module, ctx: Context) -> None:
        """Nothing here: deployment builds the int8 form for the target."""
