"""PyTorch 2 export (PT2E) int8: ``torch.export``, torchao's X86 Inductor quantizer, Inductor.

The flow PyTorch recommends now that ``torch.ao.quantization`` FX is deprecated: the model is
exported (``torch.export``, keyword inputs included), annotated by torchao's
``X86InductorQuantizer`` (static: activation ranges calibrated on training batches; dynamic:
ranges measured per batch, linear layers), converted to int8 weights with quantize/dequantize
nodes, and compiled by Inductor with freezing, which fuses each quantize-conv/linear-dequantize
pattern into oneDNN's int8 kernels. The deployed file is the converted program saved by
``torch.export.save`` (``.pt2``: int8 weights); loading it compiles it again, since a compiled
module cannot be saved. Compilation needs a C++ compiler and takes seconds per input shape
(each new batch shape compiles once; ``deploy`` times it and says so in the notes).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.hardware import torch_threads
from autocompress.runtimes._signature import Signature, flat
from autocompress.runtimes._torchscript_tools import quiet_transformers

_INFO = "autocompress.json"
# Layers the quantizer turns into int8 kernels, by their ATen operator.
_INT8_OPS = {"conv1d": "conv", "conv2d": "conv", "conv3d": "conv", "linear": "linear"}


def pt2e_unavailable() -> str | None:
    """``None`` when torchao's PT2E quantizer imports here, else why not."""
    try:
        with _quiet_torchao():
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except ImportError as e:
        return f"torchao is not installed ({e}); pip install 'autocompress[pt2e]'"
    return None


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """Hold back torchao's import-time log lines (CUDA extensions it cannot load on a CPU
    build) and torch's deprecation warnings about them."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class Pt2eInt8:
    """A model quantized through PT2E.

    Attributes:
        program: The converted program (int8 weights, quantize/dequantize nodes).
        signature: Its inputs, in the order the program takes them.
        quantized: The layers with int8 kernels, as ``conv``/``linear`` names of the graph.
        floating: Convolutions and linear layers the quantizer left in float.
    """

    program: torch.export.ExportedProgram
    signature: Signature
    quantized: tuple[str, ...]
    floating: tuple[str, ...]


def _config(dynamic: bool, per_channel: bool, reduce_range: bool) -> Any:
    """X86 Inductor's default configuration, with symmetric weight codes in [-127, 127] (scale
    max|w| / 127: the 8-bit grid the artifact already stores) per channel or per tensor."""
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    default = get_default_x86_inductor_quantization_config(
        is_dynamic=dynamic, reduce_range=reduce_range
    )
    observer = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=observer.with_args(eps=2**-12),
    )
    return QuantizationConfig(
        default.input_activation, default.output_activation, weight, default.bias
    )


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], sequence: set[int], varargs: bool
) -> Any:
    """``torch.export`` with dynamic batch axes (and sequence axes of token inputs)."""
    dim = torch.export.Dim.DYNAMIC
    shapes: tuple[Any, ...] = tuple(
        {0: dim, 1: dim} if i in sequence else {0: dim} for i in range(len(args))
    )
    if varargs:  # a FlatModel takes its tensors as ``*tensors``: one entry for them all
        shapes = (shapes,)
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def _layers(module: torch.fx.GraphModule) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The convolutions and linear layers whose weight is dequantized from int8, and those
    left in float."""
    int8: list[str] = []
    floating: list[str] = []
    for node in module.graph.nodes:
        name = getattr(node.target, "__name__", "").split(".")[0]
        if node.op != "call_function" or name not in _INT8_OPS or len(node.args) < 2:
            continue
        weight = node.args[1]
        source = getattr(weight, "target", None)
        quantized = "dequantize" in getattr(source, "__name__", "")
        (int8 if quantized else floating).append(str(node.name))
    return tuple(int8), tuple(floating)


def pt2e_int8(
    model: nn.Module,
    example: Inputs,
    calibration: list[Inputs] | None,
    *,
    dynamic: bool,
    per_channel: bool,
    reduce_range: bool,
) -> Pt2eInt8:
    """Quantize ``model`` through PT2E with the X86 Inductor quantizer.

    Args:
        model: The float model.
        example: A batch of inputs to export with (of more than one row, so that the batch
            axis is not specialised).
        calibration: Batches to calibrate static activation ranges on (static only).
        dynamic: Dynamic int8 (linear layers, ranges per batch) rather than static.
        per_channel: One weight scale per output channel (else per tensor).
        reduce_range: 7-bit activations.

    Raises:
        Exception: Whatever ``torch.export`` or the quantizer raises for a model it cannot take
            (data-dependent control flow); the caller falls back and says so.
    """
    with _quiet_torchao():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
        )

    if not dynamic and not calibration:
        raise ValueError("static int8 needs calibration batches")
    wrapped, signature, args = flat(copy.deepcopy(model).eval(), example)
    sequence = {
        i for i, name in enumerate(signature.names) if name in signature.sequence_inputs(example)
    }
    exported = _export(wrapped, args, sequence, varargs=True)
    quantizer = X86InductorQuantizer()
    quantizer.set_global(_config(dynamic, per_channel, reduce_range))
    with _quiet_torchao(), quiet_transformers(), torch.no_grad():
        prepared = prepare_pt2e(exported.module(), quantizer)
        for batch in calibration if not dynamic and calibration else [example]:
            prepared(*signature.flatten(batch))
        converted = convert_pt2e(prepared)
    quantized, floating = _layers(converted)
    if not quantized:
        raise ValueError("the quantizer found no convolution or linear layer to quantize")
    _drop_unused(converted)
    program = _export(converted, args, sequence, varargs=False)
    return Pt2eInt8(program, signature, quantized, floating)


def _drop_unused(module: torch.fx.GraphModule) -> None:
    """Remove the float weights the converted graph no longer reads (they would otherwise be
    saved beside their int8 codes)."""
    module.graph.eliminate_dead_code()
    used = {str(n.target) for n in module.graph.nodes if n.op == "get_attr"}
    for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            delattr(owner, attr)
    module.delete_all_unused_submodules()
    module.recompile()


def save_pt2e(quantized: Pt2eInt8, path: Path) -> None:
    """Write the converted program to ``path`` (``torch.export.save``), with its input names."""
    meta = {
        "inputs": list(quantized.signature.names),
        "kind": quantized.signature.kind,
        "quantized": list(quantized.quantized),
    }
    program = quantized.program
    # The example inputs would be saved too (a batch of data in the deployed file).
    program._example_inputs = None  # noqa: SLF001 - torch.export.save has no option for it
    torch.export.save(program, str(path), extra_files={_INFO: json.dumps(meta)})


class Compiled:
    """A converted program compiled by Inductor with freezing (oneDNN int8 kernels), on the
    CPU; called with the program's positional input tensors.

    Each new input shape compiles on its first call (static shapes: Inductor's int8
    convolutions do not take a dynamic batch axis in this version), with Inductor's C++
    kernels built for the thread count in force then.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self._fn = torch.compile(program.module(), dynamic=False)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        # Freezing is read when a shape compiles, which can be any call: set it for each (the
        # ``options`` of torch.compile set it too late for the quantization patterns). Always
        # in inference mode: a call in another grad mode would compile the graph again.
        with _freezing(), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out: torch.Tensor = self._fn(*args)
        return out


def _freezing() -> Any:
    """Inductor's freezing on within the block: it folds the weights into constants, which lets
    the quantization patterns fuse into oneDNN int8 kernels (without it they run as
    quantize/dequantize around float kernels)."""
    import torch._inductor.config

    return torch._inductor.config.patch(freezing=True)


def compile_for(runner: Compiled, args: tuple[torch.Tensor, ...], threads: int) -> float:
    """Compile ``runner`` for the shapes of ``args`` under ``threads`` now; seconds taken."""
    started = time.perf_counter()
    with torch_threads(threads):
        runner(*args)
    return time.perf_counter() - started


def load_pt2e(path: str | os.PathLike[str]) -> tuple[Compiled, Signature, list[str]]:
    """A saved ``.pt2`` compiled as it was measured: its runner, signature and int8 layers."""
    extra = {_INFO: ""}
    with _quiet_torchao():
        import torchao.quantization.pt2e  # noqa: F401 - registers the quantize/dequantize ops
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[_INFO] or "{}")
    signature = Signature(meta.get("kind", "tensor"), tuple(meta.get("inputs", ("input",))))
    return Compiled(program), signature, list(meta.get("quantized", []))


__all__ = [
    "Compiled",
    "Pt2eInt8",
    "compile_for",
    "load_pt2e",
    "pt2e_int8",
    "pt2e_unavailable",
    "save_pt2e",
]
