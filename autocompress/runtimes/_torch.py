"""PyTorch: the model traced and frozen with TorchScript, float32 or bfloat16, or its int8 form.

int8 runs on the ``torch.ao.quantization`` form where it runs the asked mode (FX static int8
where FX can trace the model, ``quantize_dynamic`` on linear layers for dynamic; TorchScript
``.pt``), and through PT2E (``torch.export``, torchao's X86 Inductor quantizer, compiled by
Inductor; a ``.pt2`` file) where it cannot: static int8 of a model FX cannot trace (Hugging Face
models with keyword inputs), or when the legacy path fails. PT2E ran slower in every case
measured (x1.65 on the digits CNN, x2.1 on a tiny BERT on an AMD EPYC without VNNI;
``python -m benchmarks.pt2e_int8``) and costs an Inductor compile of a minute or more per
trial, so it is not raced against the legacy form; where that is measured faster (VNNI/AMX
CPUs) the rule can change. The trial's notes say which ran and why; its label says the int8
mode that ran.
``precision: bf16``
casts weights and floating inputs to bfloat16 inside the traced module (outputs come back as
float32); it is offered where the CPU has bfloat16 instructions (``avx512_bf16`` or AMX) or on a
GPU.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from autocompress.data import Inputs, as_output, batch_size_of, call_model, map_tensors
from autocompress.errors import TrialFailure, reason
from autocompress.hardware import cpu_flags, torch_threads
from autocompress.params import Param
from autocompress.runtimes._base import Deployed, DeployRequest, Runtime, files_size, step_failure
from autocompress.runtimes._pt2e_tools import (
    compile_for,
    load_pt2e,
    pt2e_int8,
    pt2e_unavailable,
    save_pt2e,
)
from autocompress.runtimes._torchscript_tools import (
    attention_fast_path,
    dynamic_int8,
    fx_static_int8,
    load_torchscript,
    torchscript,
)

PRECISIONS = ("f32", "bf16")
# Why the legacy form runs where it can: PT2E ran slower in every case measured (AMD EPYC,
# AVX2: x1.65 on the digits CNN, x2.1-2.8 on a tiny BERT; BENCHMARKS.md) and compiles per trial.
LEGACY_FIRST = (
    "PT2E's Inductor kernels ran slower than the legacy ones where measured (BENCHMARKS.md) and "
    "compile per trial: PT2E only where the legacy path cannot run the mode"
)
# The deprecated torch.ao.quantization forms, by kind, as the notes name them.
LEGACY = {
    "torchscript-fx-int8": "FX static int8 (torch.ao.quantization, deprecated)",
    "torchscript-dynamic-int8": "dynamic int8 (torch.ao.quantization.quantize_dynamic)",
}
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


def _export_batch(request: DeployRequest) -> Inputs:
    """A batch of more than one row to export with (a batch axis of size 1 would be
    specialised), else the example."""
    for batch in [*(request.calibration or []), request.timing_input]:
        if batch is not None and batch_size_of(batch) > 1:
            return batch
    return request.example


def _pt2e(
    model: nn.Module, int8: Any, request: DeployRequest, out_stem: Path
) -> tuple[Deployed | None, list[str]]:
    """The model's PT2E int8 form, or ``None`` and why not (the caller falls back)."""
    unavailable = pt2e_unavailable()
    if unavailable is not None:
        return None, [f"PT2E int8 is not available here ({unavailable})"]
    dynamic = int8.mode == "dynamic"
    path = out_stem.with_suffix(".pt2")
    try:
        quantized = pt2e_int8(
            model,
            _export_batch(request),
            request.calibration,
            dynamic=dynamic,
            per_channel=int8.per_channel,
            reduce_range=int8.reduce_range,
        )
        save_pt2e(quantized, path)
        runner, signature, _ = load_pt2e(path)  # what loading the file gives: what is measured
        timing = request.timing_input if request.timing_input is not None else request.example
        seconds = compile_for(runner, signature.flatten(timing), request.threads)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - export and Inductor fail in many ways; fall back
        path.unlink(missing_ok=True)
        return None, [f"PT2E {int8.mode} int8 failed on this model ({reason(e, 160)})"]
    layers = len(quantized.quantized)
    notes = [
        f"PT2E {int8.mode} int8 (torchao X86InductorQuantizer, Inductor): int8 kernels on "
        f"{layers} convolution/linear layer{'s' if layers != 1 else ''}"
        + (f", {len(quantized.floating)} left in float32" if quantized.floating else ""),
        f"Inductor compiled it in {seconds:.1f} s for the timing batch (once per input shape, "
        "and again when the file is loaded)",
    ]

    def run(inputs: Inputs) -> torch.Tensor:
        return runner(*signature.flatten(inputs))

    deployed = Deployed(
        run, f"pt2e-int8-{int8.mode}", str(path), files_size((path,)), "cpu", notes,
        low_bit_weights=True, int8_mode=int8.mode,
    )  # fmt: skip
    return deployed, notes


def _int8(
    model: nn.Module, int8: Any, example: Inputs, calibration: list[Inputs] | None
) -> tuple[nn.Module, str, list[str], str]:
    """The legacy ``torch.ao.quantization`` int8 module (FX static, else dynamic), its kind,
    notes and the int8 mode that runs."""
    notes: list[str] = []
    if int8.mode == "static":
        if calibration is None:
            raise ValueError("static int8 needs calibration batches")
        try:
            module = fx_static_int8(
                model, example, calibration, int8.per_channel, int8.reduce_range
            )
            return module, "torchscript-fx-int8", notes, "static"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - FX cannot trace many real models; fall back
            notes.append(
                f"FX static int8 could not trace this model ({reason(e, 160)}); "
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
    return module, "torchscript-dynamic-int8", notes, "dynamic"


def _traced(
    module: nn.Module,
    kind: str,
    out_stem: Path,
    request: DeployRequest,
    timing: Inputs | None,
    notes: list[str] | None = None,
    mode: str | None = None,
) -> Deployed:
    """``module`` traced, frozen and saved as TorchScript (``.pt``)."""
    path = out_stem.with_suffix(".pt")
    with attention_fast_path(request.int8 is None):
        runner, signature, traced_kind = torchscript(
            module, request.example, path, request.device, timing, request.threads
        )
    device = request.device

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            args = [t.to(device, non_blocking=True) for t in signature.flatten(inputs)]
            return runner(*args).cpu()

    return Deployed(
        run, kind or traced_kind, str(path), path.stat().st_size, device, list(notes or []),
        low_bit_weights=request.int8 is not None, int8_mode=mode,
    )  # fmt: skip


def _legacy_int8(model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
    """The ``torch.ao.quantization`` int8 form (FX static, else dynamic) as TorchScript.

    Raises:
        TrialFailure: Neither form can be built (blamed on ``int8``).
    """
    module, kind, notes, mode = _int8(model, request.int8, request.example, request.calibration)
    try:
        return _traced(module, kind, out_stem, request, None, notes, mode)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        raise step_failure("int8", f"tracing the {kind} module", e) from e


def _deploy_int8(model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
    """The legacy int8 form where it runs the asked mode; PT2E where it cannot (FX cannot trace
    the model for static int8) or fails; the legacy fallback (dynamic) when PT2E fails too."""
    int8 = request.int8
    legacy: Deployed | None = None
    failure: TrialFailure | None = None
    try:
        legacy = _legacy_int8(model, out_stem, request)
    except TrialFailure as e:
        failure = e
    if legacy is not None and legacy.int8_mode == int8.mode:
        legacy.notes.insert(0, f"{LEGACY[legacy.kind]}: {LEGACY_FIRST}")
        return legacy
    pt2e, notes = _pt2e(model, int8, request, out_stem)
    if pt2e is not None:
        if legacy is not None:  # the legacy path fell back: PT2E runs what was asked
            Path(legacy.path).unlink(missing_ok=True)
        return pt2e
    if legacy is None:
        message = str(failure).removeprefix("int8 failed: ")
        raise step_failure("int8", f"{message}; and {notes[0]}") from failure
    legacy.notes[:0] = notes
    return legacy


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
    SUFFIXES: ClassVar[tuple[str, ...]] = (".pt", ".pt2")
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
        if request.int8 is not None:
            return _deploy_int8(model, out_stem, request)
        module, kind = model, ""
        if self.precision == "bf16":
            module, kind = _Bfloat16(model).eval(), "torchscript-bf16"
        timing = request.timing_input if self.precision == "f32" else None
        try:
            return _traced(module, kind, out_stem, request, timing)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            if self.precision != "f32":
                raise step_failure("runtime", f"tracing the {kind} module", e) from e
            raise

    def load(
        self, path: str | os.PathLike[str], threads: int = 1
    ) -> Callable[[Inputs], torch.Tensor]:
        if Path(path).suffix == ".pt2":
            runner, signature, _ = load_pt2e(path)

            def run_pt2e(inputs: Inputs) -> torch.Tensor:
                with torch_threads(threads):
                    return runner(*signature.flatten(inputs))

            return run_pt2e
        module = load_torchscript(path)

        def run(inputs: Inputs) -> torch.Tensor:
            if isinstance(inputs, dict):
                flat = tuple(inputs.values())
            elif isinstance(inputs, tuple):
                flat = inputs
            else:
                flat = (inputs,)
            with torch.inference_mode():
                return cast(torch.Tensor, module(*flat))

        return run
