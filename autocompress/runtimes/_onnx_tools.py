"""ONNX deployed forms: the float model exported, and ONNX Runtime's int8 quantizations.

The export uses the TorchScript-based exporter (:data:`EXPORTER`; the dynamo one is offered
and compared) with named inputs and dynamic batch and sequence axes. It runs with autograd
on: under ``no_grad`` PyTorch takes the fused fast path of ``nn.MultiheadAttention``
(``aten::_native_multi_head_attention``), which has no ONNX form.
int8 is ONNX Runtime's ``quantize_static`` (QDQ or QOperator; MinMax, Entropy or Percentile
calibration on training data) or ``quantize_dynamic``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.runtimes._signature import Signature, flat

OUTPUT_NAME = "output"


def onnxruntime_available() -> bool:
    """Whether onnxruntime is importable."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def exportable(model: nn.Module) -> nn.Module:
    """``model``, or a copy whose ``nn.MultiheadAttention`` modules compute the same function
    without a constant sequence length (their traced form bakes the example's length in,
    pytorch/pytorch#117209), so the exported graph takes any length."""
    from autocompress.attention import SlicedMultiheadAttention, unsupported

    whole = [
        m for m in model.modules()
        if type(m) is nn.MultiheadAttention and m.batch_first and unsupported(m) is None
    ]  # fmt: skip
    if not whole:
        return model
    model = copy.deepcopy(model)
    for module in model.modules():
        if (
            type(module) is nn.MultiheadAttention
            and module.batch_first
            and unsupported(module) is None
        ):
            SlicedMultiheadAttention.convert(module)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def export_onnx(
    model: nn.Module,
    example: Inputs,
    path: str | os.PathLike[str],
    exporter: str = "",
) -> Signature:
    """Export ``model`` to ONNX with named inputs and dynamic batch (and sequence) axes.

    Args:
        model: The float model.
        example: One batch of inputs.
        path: Where the ``.onnx`` file goes (weights inside it).
        exporter: ``torchscript`` (the legacy exporter) or ``dynamo`` (``torch.export`` based,
            needs onnxscript); :data:`EXPORTER` when not given.

    Returns:
        The signature: the ONNX graph's inputs are ``signature.names``, its output ``output``.
    """
    exporter = exporter or EXPORTER
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    wrapped, signature, args = flat(exportable(model), example)
    sequence = signature.sequence_inputs(example)
    axes: dict[str, dict[int, str]] = {
        name: ({0: "batch", 1: "sequence"} if name in sequence else {0: "batch"})
        for name in signature.names
    }
    with torch.inference_mode(False), torch.enable_grad():
        out = wrapped(*args)
        axes[OUTPUT_NAME] = (
            {0: "batch", 1: "sequence"} if sequence and out.dim() >= 3 else {0: "batch"}
        )
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                _dynamo_export(wrapped, args, signature, sequence, path)
            else:
                torch.onnx.export(
                    wrapped,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=list(signature.names),
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=axes,
                    opset_version=17,
                )
    return signature


EXPORTERS = ("torchscript", "dynamo")
# The exporter deployments use. torch 2.13 recommends the dynamo one, but on this project's
# models it gives no better graph for ONNX Runtime and OpenVINO (same CNN graph, same BERT
# fusions, a 61% larger tiny-BERT file) and exports 3-13x slower, once per trial
# (``python -m benchmarks.onnx_exporters``, BENCHMARKS.md): the TorchScript one stays.
EXPORTER = "torchscript"


def exporter_note() -> str:
    """The deploy note that says which exporter wrote the ONNX graph."""
    return f"ONNX graph from torch.onnx's {EXPORTER} exporter"


def _dynamo_export(
    wrapped: nn.Module,
    args: tuple[torch.Tensor, ...],
    signature: Signature,
    sequence: set[str],
    path: str | os.PathLike[str],
) -> None:
    """``torch.onnx.export(dynamo=True)`` with the same names and dynamic axes."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = tuple(
        {0: batch, 1: length} if name in sequence else {0: batch} for name in signature.names
    )
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it logs each torchvision operator it cannot register
    try:
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            dynamo=True,
            input_names=list(signature.names),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(shapes,),  # one entry: the flat model takes ``*tensors``
            opset_version=18,
            external_data=False,
        )
    finally:
        logger.setLevel(level)


def feeds(signature: Signature, inputs: Inputs) -> dict[str, np.ndarray]:
    """ONNX Runtime's input feed for ``inputs``."""
    return {
        name: t.detach().cpu().numpy()
        for name, t in zip(signature.names, signature.flatten(inputs), strict=True)
    }


class CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over batches of model inputs."""

    def __init__(self, signature: Signature, batches: list[Inputs]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([feeds(signature, b) for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # ORT's quantizer logs advice on the root logger at WARNING; our record says what ran.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_static_int8(
    fp32_path: Path,
    path: Path,
    signature: Signature,
    calibration: list[Inputs],
    *,
    per_channel: bool,
    reduce_range: bool,
    quant_format: str,
    calibration_method: str,
) -> None:
    """ONNX Runtime static int8 (activations uint8, weights int8 symmetric)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra: dict[str, Any] = {}
    if calibration_method != "minmax":
        # Histogram calibration needs batches of one shape, and fails on tensors carrying an
        # attention mask's -3.4e38: calibrate the layers with weights only.
        calibration = _same_shape(calibration, signature)
        extra["op_types_to_quantize"] = ["Conv", "MatMul", "Gemm"]
    with _quiet_quantizer():
        quantize_static(
            str(fp32_path),
            str(path),
            CalibrationReader(signature, calibration),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[calibration_method],
            **extra,
        )


def _same_shape(batches: list[Inputs], signature: Signature) -> list[Inputs]:
    """The calibration batches of the most common shape."""
    shapes = [tuple(tuple(t.shape) for t in signature.flatten(b)) for b in batches]
    common = max(set(shapes), key=shapes.count)
    return [b for b, shape in zip(batches, shapes, strict=True) if shape == common]


def quantize_dynamic_int8(
    fp32_path: Path, path: Path, *, per_channel: bool, reduce_range: bool
) -> None:
    """ONNX Runtime dynamic int8: int8 weights, activation ranges measured per batch."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(
            str(fp32_path),
            str(path),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            # Fused operators (com.microsoft domain) have no shape inference: float by default.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantize_weights_nbits(
    fp32_path: Path, path: Path, *, bits: int, block_size: int | None, embeddings: bool
) -> int:
    """ONNX Runtime's ``MatMulNBits`` (and, for 4 bits, ``GatherBlockQuantized`` embeddings):
    weight-only low-bit MatMul, so the deployed file keeps low-bit weights.

    The weights are already on autocompress's grid; ONNX Runtime rounds them again to its own
    symmetric grid (``bits``, blocks of ``block_size`` input features, or one scale per output
    channel when ``block_size`` is ``None``). What is measured is that file.

    Returns:
        How many nodes were quantized (0: the file is left as float; nothing to quantize).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    ops = ("MatMul", "Gather") if embeddings and bits == 4 else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size or 128,
        is_symmetric=True,
        bits=bits,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=ops,
        channel_wised_quantize=block_size is None,
    )
    fp32 = onnx.load(str(fp32_path))
    if "Gather" in ops:
        # The quantizer sets opset 21 for int4 Gather without converting the graph, which
        # leaves older nodes invalid (ReduceL2's `axes` attribute became an input in opset 18):
        # convert the graph first.
        fp32 = _at_opset(fp32, 21)
    with _quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(fp32, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    count = sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph.node)
    if count:
        onnx.save(model, str(path))
    return count


def _at_opset(model: Any, version: int) -> Any:
    """``model`` with its default-domain opset raised to ``version`` by ONNX's converter."""
    import onnx
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= version:
        return model
    converted = version_converter.convert_version(model, version)
    onnx.checker.check_model(converted)
    return converted


def session(path: Path, threads: int, device: str = "cpu") -> Any:
    """An ONNX Runtime session with all graph optimisations, pinned to ``threads``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


# onnxruntime.transformers.optimizer's model types for the Hugging Face model types it fuses.
FUSABLE = {"bert": "bert", "gpt2": "gpt2", "vit": "vit"}


def transformer_type(model: nn.Module) -> tuple[str, int, int] | None:
    """(optimizer model type, heads, hidden size) of the Hugging Face BERT, GPT-2 or ViT in
    ``model``, or ``None``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        kind = FUSABLE.get(str(getattr(config, "model_type", "")))
        if kind is None:
            continue
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        return kind, int(heads or 0), int(hidden or 0)
    return None


def with_eager_attention(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Hugging Face attention is the eager (MatMul/Softmax) form,
    the one ONNX Runtime's optimizer recognises; ``model`` itself where there is none."""
    targets = [m for m in model.modules() if hasattr(m, "set_attn_implementation")]
    if not targets:
        return model
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "set_attn_implementation"):
            with contextlib.suppress(Exception):  # a model that offers no eager form keeps its own
                getattr(module, "set_attn_implementation")("eager")  # noqa: B009 - typed Tensor
    return model


def fuse_transformer(path: Path, kind: tuple[str, int, int]) -> dict[str, int]:
    """Rewrite the ONNX file at ``path`` with ONNX Runtime's transformer optimizer (attention,
    layer norm, GELU fusions; no float16); return the fused operators and their counts.

    The heads and hidden size are detected from the graph (0): after head or width pruning
    they are no longer the configuration's.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_quantizer():
        optimized = optimize_model(str(path), model_type=kind[0], num_heads=0, hidden_size=0)
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(path))
    return fused
