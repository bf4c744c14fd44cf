"""The deployable form of a model on a target runtime, and a callable that runs it.

One verb, a runtime per file (:mod:`autocompress.runtimes`): what is timed and evaluated is
what would ship, on ``torch`` (TorchScript, FX/dynamic int8, bf16), ``onnxruntime`` (ONNX, ORT
int8 and ``MatMulNBits``) or ``openvino`` (OpenVINO IR, NNCF int8 and low-bit weights).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.runtimes import (
    RUNTIMES,
    Deployed,
    DeployRequest,
    OnnxRuntime,
    Runtime,
    has_attention,
    load_deployed,
)
from autocompress.runtimes._onnx_tools import export_onnx, onnxruntime_available
from autocompress.runtimes._signature import FlatModel, Signature, signature_of
from autocompress.runtimes._torchscript_tools import faster_of, int8_supported, load_torchscript

__all__ = [
    "RUNTIMES",
    "Deployed",
    "FlatModel",
    "Signature",
    "deploy",
    "export_onnx",
    "faster_of",
    "int8_supported",
    "load_deployed",
    "load_onnx",
    "load_torchscript",
    "onnxruntime_available",
    "signature_of",
]


def load_onnx(path: str | os.PathLike[str], threads: int = 1) -> Callable[[Inputs], torch.Tensor]:
    """A deployed ``.onnx`` file as a callable on the model's inputs (a tensor, a tuple, or
    keyword tensors named as the graph's inputs), returning the output tensor."""
    return OnnxRuntime().load(path, threads)


def deploy(
    model: nn.Module,
    out_stem: str | os.PathLike[str],
    *,
    example_input: Inputs,
    runtime: str | Runtime = "torch",
    int8: Any = None,
    weights: Any = None,
    calibration: list[Inputs] | None = None,
    threads: int = 1,
    device: str = "cpu",
    timing_input: Inputs | None = None,
) -> Deployed:
    """Build the deployed form of ``model`` on ``runtime`` and write it next to ``out_stem``.

    Args:
        model: The float model (pruned, fine-tuned, weights on their grid).
        out_stem: Path without suffix; the runtime adds its own (``.pt``, ``.onnx``, ``.xml``).
        example_input: One batch of inputs, for tracing and export.
        runtime: A runtime's name in :data:`RUNTIMES` (its default settings) or a runtime
            with its settings, e.g. ``OpenVINO(precision="bf16")``.
        int8: The configuration's :class:`~autocompress.methods.int8.Int8`, or ``None``.
        weights: The configuration's
            :class:`~autocompress.methods.weights.WeightQuantization`, or ``None``: weights of
            8 bits or fewer (per channel or in groups) without int8 are deployed on the
            runtime's weight-only low-bit kernels where it has them.
        calibration: Calibration input batches (training split) for static int8.
        threads: Intra-op threads of the runtime.
        device: ``cpu`` or ``cuda``.
        timing_input: A batch of the target's size, for runtimes that choose between
            equivalent forms by timing them (TorchScript with or without oneDNN).

    Raises:
        TrialFailure: A step could not be deployed for this model (blamed on it).
        ValueError: An unknown runtime, or int8 on a device without int8 kernels.
    """
    if isinstance(runtime, str):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; use one of {tuple(RUNTIMES)}")
        runtime = RUNTIMES[runtime]()
    if device not in runtime.DEVICES:
        raise ValueError(f"the {runtime.name} runtime runs on {', '.join(runtime.DEVICES)}")
    if int8 is not None and device != "cpu":
        raise ValueError(f"int8 deployment is not offered on {device}")
    request = DeployRequest(
        example=example_input,
        int8=int8,
        weights=weights,
        calibration=calibration,
        threads=threads,
        device=device,
        timing_input=timing_input,
        attention=has_attention(model),
    )
    return runtime.deploy(model, Path(out_stem), request)
