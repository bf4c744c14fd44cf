"""PyTorch: the model traced and frozen with TorchScript, float32 or bfloat16, or its int8 form.

int8 is FX static int8 where FX can trace the model, else ``quantize_dynamic`` on its linear
layers (the trial's notes say which). ``precision: bf16`` casts weights and floating inputs to
bfloat16 inside the traced module (outputs come back as float32); it is offered where the CPU
has bfloat16 instructions (``avx512_bf16`` or AMX) or on a GPU.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autocompress.data import Inputs, as_output, call_model, map_tensors
from autocompress.hardware import cpu_flags
from autocompress.params import Param
from autocompress.runtimes._base import Deployed, DeployRequest, Runtime, step_failure
from autocompress.runtimes._torchscript_tools import (
    attention_fast_path,
    dynamic_int8,
    fx_static_int8,
    load_torchscript,
    torchscript,
)

PRECISIONS = ("f32", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class _Bfloat16(nn.Module):
    """``model`` in bfloat16: floating inputs cast in, the output cast back to float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.bfloat16) if torch.is_floating_point(t) else t

        inputs: Inputs = kwargs if kwargs else (args if len(args) > 1 else args[0])
        return as_output(call_model(self.model, map_tensors(inputs, cast))).float()


def _int8(
    model: nn.Module, int8: Any, example: Inputs, calibration: list[Inputs] | None
) -> tuple[nn.Module, str, list[str]]:
    notes: list[str] = []
    if int8.mode == "static":
        if calibration is None:
            raise ValueError("static int8 needs calibration batches")
        try:
            module = fx_static_int8(
                model, example, calibration, int8.per_channel, int8.reduce_range
            )
            return module, "torchscript-fx-int8", notes
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - FX cannot trace many real models; fall back
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            notes.append(
                f"FX static int8 could not trace this model ({type(e).__name__}: {reason}); "
                "deployed dynamic int8 on its linear layers instead"
            )
    try:
        module, count = dynamic_int8(model, int8.per_channel, int8.reduce_range)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        raise step_failure("int8", "dynamic int8", e) from e
    if count == 0:
        raise step_failure(
            "int8", "dynamic int8 quantizes linear layers only, and this model has none"
        )
    notes.append(f"dynamic int8 on {count} linear layers; other layers run in float32")
    return module, "torchscript-dynamic-int8", notes


@dataclass(frozen=True)
class TorchRuntime(Runtime):
    """PyTorch through TorchScript (frozen; oneDNN where it measures faster).

    Attributes:
        precision: ``f32`` or ``bf16`` (weights and activations in bfloat16).
    """

    precision: str = "f32"

    name: ClassVar[str] = "torch"
    FORMAT: ClassVar[str] = "torchscript"
    DEVICES: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    SUFFIXES: ClassVar[tuple[str, ...]] = (".pt",)
    INT8_PARAMS: ClassVar[tuple[str, ...]] = ("mode", "per_channel", "reduce_range")
    SEARCH: ClassVar[dict[str, Param]] = {
        "precision": Param(str, "f32", "float precision the model runs in (bf16 where offered)",
                           choices=PRECISIONS),
    }  # fmt: skip

    @classmethod
    def offered(cls, param: str, device: str = "cpu") -> tuple[Any, ...] | None:
        if param != "precision":
            return None
        if device == "cuda":
            return PRECISIONS
        return PRECISIONS if any(f in cpu_flags() for f in BF16_FLAGS) else ("f32",)

    @classmethod
    def asks(cls, param: str, chosen: Any, facts: Any = None) -> bool:
        return not (param == "precision" and chosen.get("int8") is not None)

    def deploy(self, model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
        offered = self.offered("precision", request.device) or PRECISIONS
        if self.precision not in offered:
            raise step_failure(
                "runtime",
                f"precision {self.precision} is not offered on this CPU (no "
                f"{' or '.join(BF16_FLAGS)}); torch offers {', '.join(offered)} here",
            )
        path = out_stem.with_suffix(".pt")
        notes: list[str] = []
        module, kind, int8 = model, "", request.int8
        if int8 is not None:
            module, kind, notes = _int8(model, int8, request.example, request.calibration)
        elif self.precision == "bf16":
            module, kind = _Bfloat16(model).eval(), "torchscript-bf16"
        timing = None if (int8 is not None or self.precision != "f32") else request.timing_input
        try:
            with attention_fast_path(int8 is None):
                runner, signature, traced_kind = torchscript(
                    module, request.example, path, request.device, timing, request.threads
                )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            if int8 is not None:
                raise step_failure("int8", f"tracing the {kind} module", e) from e
            if self.precision != "f32":
                raise step_failure("runtime", f"tracing the {kind} module", e) from e
            raise
        kind = kind or traced_kind
        device = request.device

        def run(inputs: Inputs) -> torch.Tensor:
            with torch.inference_mode():
                args = [t.to(device, non_blocking=True) for t in signature.flatten(inputs)]
                return runner(*args).cpu()

        return Deployed(
            run, kind, str(path), path.stat().st_size, device, notes,
            low_bit_weights=int8 is not None,
        )  # fmt: skip

    def load(
        self, path: str | os.PathLike[str], threads: int = 1
    ) -> Callable[[Inputs], torch.Tensor]:
        module = load_torchscript(path)

        def run(inputs: Inputs) -> torch.Tensor:
            if isinstance(inputs, dict):
                flat = tuple(inputs.values())
            elif isinstance(inputs, tuple):
                flat = inputs
            else:
                flat = (inputs,)
            with torch.inference_mode():
                return module(*flat)

        return run
