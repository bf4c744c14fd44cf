"""The deployable form of a model on a target runtime, and a callable that runs it.

What is timed and evaluated is what would ship:
  * ``torch``: the module traced and frozen with TorchScript: the physically pruned float
    model, or its int8 form (FX static int8 where FX can trace the model, else
    ``quantize_dynamic`` on its linear layers; the trial's notes say which);
  * ``onnxruntime``: the float model exported to ONNX and run in an ORT session, or ORT's
    static (QDQ / QOperator) or dynamic int8 of that export. The ONNX path never depends on
    PyTorch's int8 tracer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.deploy._onnx import (
    export_onnx,
    feeds,
    onnxruntime_available,
    quantize_dynamic_int8,
    quantize_static_int8,
    quantize_weights_nbits,
    session,
)
from autocompress.deploy._signature import FlatModel, Signature, signature_of
from autocompress.deploy._torch import (
    attention_fast_path,
    dynamic_int8,
    faster_of,
    fx_static_int8,
    int8_supported,
    load_torchscript,
    torchscript,
)
from autocompress.errors import TrialFailure

RUNTIMES = ("torch", "onnxruntime")

__all__ = [
    "RUNTIMES",
    "Deployed",
    "FlatModel",
    "Signature",
    "deploy",
    "export_onnx",
    "faster_of",
    "int8_supported",
    "load_onnx",
    "load_torchscript",
    "onnxruntime_available",
    "signature_of",
]


def load_onnx(path: str | os.PathLike[str], threads: int = 1) -> Callable[[Inputs], torch.Tensor]:
    """A deployed ``.onnx`` file as a callable on the model's inputs (a tensor, a tuple, or
    keyword tensors named as the graph's inputs), returning the output tensor."""
    sess = session(Path(path), threads)
    names = tuple(i.name for i in sess.get_inputs())

    def run(inputs: Inputs) -> torch.Tensor:
        kind = (
            "dict"
            if isinstance(inputs, dict)
            else "tuple"
            if isinstance(inputs, tuple)
            else "tensor"
        )
        return torch.from_numpy(sess.run(None, feeds(Signature(kind, names), inputs))[0])

    return run


@dataclass
class Deployed:
    """A model in its deployed form.

    Attributes:
        run: Runs one batch of inputs and returns the output tensor (on the CPU).
        kind: What was deployed, e.g. ``torchscript``, ``onnx-fp32``, ``onnx-qdq-int8``.
        path: The deployed file.
        size_bytes: Its size on disk.
        device: Where the model runs (``cpu`` or ``cuda``).
        notes: What a user should know about this form (a fallback taken, float kernels).
    """

    run: Callable[[Inputs], torch.Tensor]
    kind: str
    path: str
    size_bytes: int
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def synchronize(self) -> Callable[[], None] | None:
        """What the latency meter must call before reading the clock (CUDA is asynchronous)."""
        return torch.cuda.synchronize if self.device == "cuda" else None


def _int8_failure(message: str, cause: BaseException | None = None) -> TrialFailure:
    detail = f": {type(cause).__name__}: {str(cause).strip().splitlines()[0]}" if cause else ""
    failure = TrialFailure(f"int8 failed: {message}{detail}")
    failure.method = "int8"  # type: ignore[attr-defined]
    return failure


def _torch_int8(
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
        raise _int8_failure("dynamic int8", e) from e
    if count == 0:
        raise _int8_failure("dynamic int8 quantizes linear layers only, and this model has none")
    notes.append(f"dynamic int8 on {count} linear layers; other layers run in float32")
    return module, "torchscript-dynamic-int8", notes


def deploy(
    model: nn.Module,
    out_stem: str | os.PathLike[str],
    *,
    example_input: Inputs,
    runtime: str = "torch",
    int8: Any = None,
    weights: Any = None,
    calibration: list[Inputs] | None = None,
    threads: int = 1,
    device: str = "cpu",
    timing_input: Inputs | None = None,
) -> Deployed:
    """Build the deployed form of ``model`` for ``runtime`` and write it next to ``out_stem``.

    Args:
        model: The float model (pruned, fine-tuned, weights on their grid).
        out_stem: Path without suffix; ``.pt`` or ``.onnx`` is added.
        example_input: One batch of inputs, for tracing and export.
        runtime: ``torch`` or ``onnxruntime``.
        int8: The configuration's :class:`~autocompress.methods.int8.Int8`, or ``None``.
        weights: The configuration's
            :class:`~autocompress.methods.weights.WeightQuantization`, or ``None``. Without
            int8, on ``onnxruntime``, weights of 8 bits or fewer (per channel or in groups) are
            deployed as ONNX Runtime's weight-only ``MatMulNBits``, so the file keeps them low-bit.
        calibration: Calibration input batches (training split) for static int8.
        threads: Intra-op threads of the runtime, and of torch while choosing its form.
        device: ``cpu`` or ``cuda``.
        timing_input: A batch of the target's size. With it, a float ``torch`` model on the
            CPU is also tried through ``torch.jit.optimize_for_inference``, and the faster form
            on this batch is deployed (``kind`` says which).

    Raises:
        TrialFailure: int8 could not be built for this model (``int8 failed: ...``).
        ValueError: An unknown runtime, or int8 on a device without int8 kernels.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {RUNTIMES}")
    if int8 is not None and device != "cpu":
        raise ValueError(f"int8 deployment is not offered on {device}")
    out_stem = Path(out_stem)
    if runtime == "torch":
        return _deploy_torch(
            model, out_stem, example_input, int8, calibration, threads, device, timing_input
        )
    return _deploy_onnx(model, out_stem, example_input, int8, weights, calibration, threads, device)


def _deploy_torch(
    model: nn.Module,
    out_stem: Path,
    example: Inputs,
    int8: Any,
    calibration: list[Inputs] | None,
    threads: int,
    device: str,
    timing_input: Inputs | None,
) -> Deployed:
    path = out_stem.with_suffix(".pt")
    notes: list[str] = []
    module, kind = model, ""
    if int8 is not None:
        module, kind, notes = _torch_int8(model, int8, example, calibration)
    try:
        with attention_fast_path(int8 is None):
            runner, signature, traced_kind = torchscript(
                module, example, path, device, None if int8 else timing_input, threads
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        if int8 is not None:
            raise _int8_failure(f"tracing the {kind} module", e) from e
        raise
    kind = kind or traced_kind

    def run(inputs: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            args = [t.to(device, non_blocking=True) for t in signature.flatten(inputs)]
            return runner(*args).cpu()

    return Deployed(run, kind, str(path), path.stat().st_size, device, notes)


def _nbits(weights: Any) -> tuple[int, int | None] | None:
    """(bits, block size) of a weight-only MatMulNBits deployment, or ``None``."""
    if weights is None or weights.bits > 8 or weights.granularity == "per_tensor":
        return None
    bits = 4 if max([weights.bits, *weights.layer_bits.values()]) <= 4 else 8
    group = weights.granularity.removeprefix("group")
    return bits, int(group) if group.isdigit() else None


def _deploy_onnx(
    model: nn.Module,
    out_stem: Path,
    example: Inputs,
    int8: Any,
    weights: Any,
    calibration: list[Inputs] | None,
    threads: int,
    device: str,
) -> Deployed:
    path = out_stem.with_suffix(".onnx")
    nbits = None if int8 is not None or device != "cpu" else _nbits(weights)
    fp32_path = path.with_suffix(".fp32.onnx") if int8 is not None or nbits else path
    signature = export_onnx(model, example, fp32_path)
    kind = "onnx-fp32"
    notes: list[str] = []
    if nbits is not None:
        bits, block = nbits
        try:
            count = quantize_weights_nbits(
                fp32_path, path, bits=bits, block_size=block, embeddings=weights.embeddings
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - a failed weight-only export keeps the float file
            count = 0
            notes.append(
                f"MatMulNBits weight-only export failed ({type(e).__name__}); deployed fp32"
            )
        if count:
            fp32_path.unlink(missing_ok=True)
            kind = f"onnx-matmulnbits-int{bits}"
            notes.append(
                f"{count} MatMul/Gather nodes deployed as ONNX Runtime {bits}-bit weight-only "
                "(smaller file; other layers float32)"
            )
        else:
            fp32_path.replace(path)
    if int8 is not None:
        try:
            if int8.mode == "static":
                if calibration is None:
                    raise ValueError("static int8 needs calibration batches")
                quantize_static_int8(
                    fp32_path,
                    path,
                    signature,
                    calibration,
                    per_channel=int8.per_channel,
                    reduce_range=int8.reduce_range,
                    quant_format=int8.quant_format,
                    calibration_method=int8.calibration,
                )
                kind = f"onnx-{int8.quant_format}-int8"
            else:
                quantize_dynamic_int8(
                    fp32_path, path, per_channel=int8.per_channel, reduce_range=int8.reduce_range
                )
                kind = "onnx-dynamic-int8"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            raise _int8_failure(f"ONNX Runtime {int8.mode} int8", e) from e
        finally:
            fp32_path.unlink(missing_ok=True)
    try:
        sess = session(path, threads, device)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        if int8 is not None:
            raise _int8_failure(f"loading the {kind} model in ONNX Runtime", e) from e
        raise

    def run(inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, feeds(signature, inputs))[0])

    return Deployed(run, kind, str(path), path.stat().st_size, device, notes)
