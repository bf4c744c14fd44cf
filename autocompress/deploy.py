"""The deployable form of a model on a target runtime, and a callable that runs it.

What is timed and evaluated is what would ship:
  * ``torch``: the module traced and frozen with TorchScript (the physically pruned float model,
    or the FX int8 module). On the CPU a float module is also tried through
    ``torch.jit.optimize_for_inference`` (oneDNN convolutions with pre-packed weights); the
    faster of the two on the target's batch, timed A/B, is kept, and the file records which so
    that :func:`load_torchscript` rebuilds the same form (oneDNN-packed modules cannot be saved,
    so the file holds the frozen module and the choice is re-applied on load). In
    ``python -m benchmarks.targets`` the chosen form of fp32 LeNet-5 runs x2.23 faster than
    eager at batch 32, while on the 8x8 digits CNN at batch 1 neither form beats eager (x0.83),
    hence the measurement;
  * ``onnxruntime``: the model exported to ONNX and run in an ORT session; with int8, static QDQ
    quantization (per channel or per tensor) calibrated on training data. ORT's *dynamic* int8 is
    never used: it was measured 2-6x slower than fp32 on convolutions on our 2-core CPU
    (reported in the targets issue; not re-measured by benchmarks/targets.py).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RUNTIMES = ("torch", "onnxruntime")


@dataclass
class Deployed:
    """A model in its deployed form.

    Attributes:
        run: Runs one batch and returns the outputs as a float tensor.
        kind: What was deployed, e.g. ``torchscript``, ``onnx-fp32``, ``onnx-qdq-int8``.
        path: The deployed file.
        size_bytes: Its size on disk.
        device: Where inputs should live for timing (``cpu`` or ``cuda``); ``run`` accepts
            CPU tensors too and moves them.
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    path: str
    size_bytes: int
    device: str = "cpu"

    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Outputs for all of ``x``, in batches, on the CPU."""
        return torch.cat(
            [self.run(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        )

    def synchronize(self) -> Callable[[], None] | None:
        """What the latency meter must call before reading the clock (CUDA is asynchronous)."""
        return torch.cuda.synchronize if self.device == "cuda" else None


def onnxruntime_available() -> bool:
    """Whether onnxruntime is importable."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


_TORCHSCRIPT_INFO = "autocompress.json"


def _block_ms(fn: Callable[[], Any], calls: int, rounds: int) -> list[float]:
    """Mean milliseconds per call of ``fn`` in each of ``rounds`` blocks of ``calls`` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return times


def faster_of(
    candidate: Callable[[torch.Tensor], Any],
    current: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    rounds: int = 9,
    block_ms: float = 5.0,
) -> bool:
    """Whether ``candidate`` runs ``x`` faster than ``current``, timed A/B interleaved.

    A quick choice between two equivalent forms (about ``2 * rounds * block_ms``), not a
    measurement to report: the latency meter times whichever is kept.
    """
    with torch.inference_mode():
        for _ in range(3):
            candidate(x), current(x)
        one = max(min(_block_ms(lambda f=f: f(x), 1, 3)) for f in (candidate, current))
        calls = max(1, int(block_ms / max(one, 1e-3)))
        a, b = [], []
        for i in range(rounds):
            first, second = (candidate, current) if i % 2 == 0 else (current, candidate)
            t1 = _block_ms(lambda f=first: f(x), calls, 1)[0]
            t2 = _block_ms(lambda f=second: f(x), calls, 1)[0]
            (a if first is candidate else b).append(t1)
            (b if first is candidate else a).append(t2)
    return statistics.median(a) < statistics.median(b)


def load_torchscript(path: str | os.PathLike[str], device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a deployed ``.pt`` in the form it was timed in (re-applying its recorded passes)."""
    extra = {_TORCHSCRIPT_INFO: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    info = json.loads(extra[_TORCHSCRIPT_INFO] or "{}")
    if info.get("optimize_for_inference"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.optimize_for_inference(module)
    return module


def _torchscript(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    device: str,
    timing_input: torch.Tensor | None = None,
    threads: int = 1,
) -> Deployed:
    if device != "cpu":
        module, example = copy.deepcopy(module).to(device), example.to(device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(module.eval(), example))
    torch.jit.save(frozen, str(path))
    traced, kind = frozen, "torchscript"
    if device == "cpu" and timing_input is not None:
        try:
            optimized = load_torchscript(path)  # a fresh copy: the pass rewrites its module
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimized = torch.jit.optimize_for_inference(optimized)
        except RuntimeError:  # a graph the pass cannot take: keep the frozen module
            optimized = None
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)  # choose under the thread count the target runs with
        try:
            chosen = optimized is not None and faster_of(optimized, frozen, timing_input)
        finally:
            torch.set_num_threads(saved_threads)
        if chosen:
            info = json.dumps({"optimize_for_inference": True})
            torch.jit.save(frozen, str(path), _extra_files={_TORCHSCRIPT_INFO: info})
            traced, kind = optimized, "torchscript-onednn"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return traced(x.to(device, non_blocking=True))

    return Deployed(run, kind, str(path), path.stat().st_size, device)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Export with a dynamic batch axis (TorchScript-based exporter: no torch.export needed)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over a tensor, in batches."""

    def __init__(self, x: torch.Tensor, batch_size: int = 64) -> None:
        self._batches = iter(
            [{"input": x[i : i + batch_size].numpy()} for i in range(0, len(x), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _onnxruntime(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    int8: bool,
    calibration_x: torch.Tensor | None,
    per_channel: bool,
    threads: int,
    device: str,
) -> Deployed:
    import onnxruntime as ort

    fp32_path = path.with_suffix(".fp32.onnx") if int8 else path
    export_onnx(model, example, fp32_path)
    kind = "onnx-fp32"
    if int8:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if calibration_x is None:
            raise ValueError("ORT static int8 needs calibration data")
        # ORT's quantizer logs advice on the root logger at WARNING; our record says what ran.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(fp32_path),
                str(path),
                _Calibration(calibration_x),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        finally:
            root.setLevel(level)
        fp32_path.unlink(missing_ok=True)
        kind = "onnx-qdq-int8"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    return Deployed(run, kind, str(path), path.stat().st_size)


def deploy(
    model: nn.Module,
    example: torch.Tensor,
    out_stem: str | os.PathLike[str],
    *,
    runtime: str = "torch",
    int8_module: nn.Module | None = None,
    calibration_x: torch.Tensor | None = None,
    per_channel: bool = True,
    threads: int = 1,
    device: str = "cpu",
    timing_input: torch.Tensor | None = None,
) -> Deployed:
    """Build the deployed form of ``model`` for ``runtime`` and write it next to ``out_stem``.

    Args:
        model: The float model (pruned, fine-tuned, k-bit weights).
        example: One input batch, for tracing and export.
        out_stem: Path without suffix; ``.pt`` or ``.onnx`` is added.
        runtime: ``torch`` or ``onnxruntime``.
        int8_module: For ``torch`` with int8 activations, the FX int8 module to deploy.
        calibration_x: For ``onnxruntime`` int8: the calibration inputs. Its presence asks
            for static int8.
        per_channel: Weight scales per channel (ORT int8).
        threads: Intra-op threads of the ORT session, and of torch while choosing its form.
        device: ``cpu`` or ``cuda``.
        timing_input: A batch of the target's size. With it, a float ``torch`` model on the
            CPU is also tried through ``torch.jit.optimize_for_inference``, and the faster form
            on this batch is deployed (``kind`` says which).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {RUNTIMES}")
    out_stem = Path(out_stem)
    if runtime == "torch":
        module = int8_module if int8_module is not None else model
        deployed = _torchscript(
            module,
            example,
            out_stem.with_suffix(".pt"),
            device if int8_module is None else "cpu",
            timing_input=timing_input if int8_module is None else None,
            threads=threads,
        )
        if int8_module is not None:
            deployed.kind = "torchscript-fx-int8"
        return deployed
    return _onnxruntime(
        model,
        example,
        out_stem.with_suffix(".onnx"),
        int8=calibration_x is not None,
        calibration_x=calibration_x,
        per_channel=per_channel,
        threads=threads,
        device=device,
    )
