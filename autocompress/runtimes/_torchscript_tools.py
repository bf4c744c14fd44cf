"""PyTorch deployed forms: TorchScript (frozen, optionally oneDNN), FX static int8, dynamic int8.

On the CPU a float module is also tried through ``torch.jit.optimize_for_inference`` (oneDNN
convolutions with pre-packed weights); the faster of the two on the target's batch, timed A/B,
is kept, and the file records which so that :func:`load_torchscript` rebuilds the same form
(oneDNN-packed modules cannot be saved). In ``python -m benchmarks.targets`` the chosen form
of fp32 LeNet-5 runs x2.23 faster than eager at batch 32, while on the 8x8 digits CNN at batch
1 neither form beats eager (x0.83), hence the measurement.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from autocompress.architecture import bias_of, weight_of
from autocompress.data import Inputs
from autocompress.hardware import torch_threads
from autocompress.runtimes._signature import Signature, flat
from autocompress.transformer_parts import HF_CONV1D

INT8_ENGINE = "x86"
_INFO = "autocompress.json"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hold back transformers' log lines while tracing (tracing reads properties that log)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def attention_fast_path(enabled: bool) -> Iterator[None]:
    """PyTorch's fused attention fast path on or off within the block (traced graphs keep
    what was taken: quantized linear layers have no ``.weight`` tensor the fast path can read)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def int8_supported() -> bool:
    """Whether this PyTorch build has the x86 int8 kernels (FBGEMM/oneDNN)."""
    return INT8_ENGINE in torch.backends.quantized.supported_engines


def _block_ms(fn: Callable[[], Any], calls: int, rounds: int) -> list[float]:
    """Mean milliseconds per call of ``fn`` in each of ``rounds`` blocks of ``calls`` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return times


def _bound(f: Callable[..., Any], args: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
    """``f`` called with ``args``."""
    return lambda: f(*args)


def faster_of(
    candidate: Callable[..., Any],
    current: Callable[..., Any],
    x: tuple[torch.Tensor, ...] | torch.Tensor,
    rounds: int = 9,
    block_ms: float = 5.0,
) -> bool:
    """Whether ``candidate`` runs ``x`` faster than ``current``, timed A/B interleaved.

    A quick choice between two equivalent forms (about ``2 * rounds * block_ms``), not a
    measurement to report: the latency meter times whichever is kept.
    """
    args = x if isinstance(x, tuple) else (x,)
    with torch.inference_mode():
        for _ in range(3):
            candidate(*args), current(*args)
        one = max(min(_block_ms(_bound(f, args), 1, 3)) for f in (candidate, current))
        calls = max(1, int(block_ms / max(one, 1e-3)))
        a: list[float] = []
        b: list[float] = []
        for i in range(rounds):
            first, second = (candidate, current) if i % 2 == 0 else (current, candidate)
            t1 = _block_ms(_bound(first, args), calls, 1)[0]
            t2 = _block_ms(_bound(second, args), calls, 1)[0]
            (a if first is candidate else b).append(t1)
            (b if first is candidate else a).append(t2)
    return statistics.median(a) < statistics.median(b)


def load_torchscript(path: str | os.PathLike[str], device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a deployed ``.pt`` in the form it was timed in (re-applying its recorded passes).

    It takes the model's inputs as positional tensors, in the order of the example input's
    keys (or positions), and returns the output tensor.
    """
    extra = {_INFO: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    info = json.loads(extra[_INFO] or "{}")
    if info.get("optimize_for_inference"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.optimize_for_inference(module)
    return cast(torch.jit.ScriptModule, module)


def torchscript(
    module: nn.Module,
    example: Inputs,
    path: Path,
    device: str = "cpu",
    timing_input: Inputs | None = None,
    threads: int = 1,
    info: dict[str, Any] | None = None,
) -> tuple[Callable[..., torch.Tensor], Signature, str]:
    """Trace, freeze and save ``module``; return the callable that runs it, its signature, kind.

    Raises:
        RuntimeError: The module cannot be traced.
    """
    wrapped, signature, args = flat(module, example)
    if device != "cpu":
        wrapped = copy.deepcopy(wrapped).to(device)
        args = tuple(a.to(device) for a in args)
    with warnings.catch_warnings(), torch.no_grad(), quiet_transformers():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, args, strict=False, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    meta = {"inputs": list(signature.names), "kind": signature.kind, **(info or {})}
    _save_torchscript(frozen, path, meta)
    runner: Callable[..., torch.Tensor] = frozen
    kind = "torchscript"
    if device == "cpu" and timing_input is not None:
        try:
            optimized = load_torchscript(path)  # a fresh copy: the pass rewrites its module
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimized = torch.jit.optimize_for_inference(optimized)
        except RuntimeError:  # a graph the pass cannot take: keep the frozen module
            optimized = None
        with torch_threads(threads):  # choose under the thread count the target runs with
            chosen = optimized is not None and faster_of(
                optimized, frozen, signature.flatten(timing_input)
            )
        if chosen and optimized is not None:  # chosen only when there is one
            meta["optimize_for_inference"] = True
            _save_torchscript(frozen, path, meta)
            runner, kind = optimized, "torchscript-onednn"
    return runner, signature, kind


def _save_torchscript(module: Any, path: Path, meta: dict[str, Any]) -> None:
    """Save through memory: PyTorch's own file writer aborts the whole process (a C++
    exception in a destructor, exit 134) when the disk fills; Python's write raises OSError."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={_INFO: json.dumps(meta)})
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def _observers(per_channel: bool, reduce_range: bool) -> Any:
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig
    from torch.ao.quantization.qconfig_mapping import QConfigMapping

    # Codes in [-127, 127] with scale max|w| / 127: exactly the 8-bit grid the artifact stores.
    if per_channel:
        weight = PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127
        )
    else:
        weight = MinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127
        )
    activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def fx_static_int8(
    model: nn.Module,
    example: Inputs,
    calibration: list[Inputs],
    per_channel: bool,
    reduce_range: bool,
) -> nn.Module:
    """FX graph-mode static int8 (x86), calibrated on ``calibration`` batches.

    Raises:
        Exception: Whatever FX raises for a model it cannot trace (Hugging Face models,
            dynamic control flow); the caller falls back to dynamic int8.
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = INT8_ENGINE
    wrapped, signature, args = flat(copy.deepcopy(model).eval(), example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(wrapped, _observers(per_channel, reduce_range), args)
        with torch.inference_mode():
            for batch in calibration:
                prepared(*signature.flatten(batch))
        converted = convert_fx(prepared).eval()
    return _Unflatten(converted, signature)


class _Unflatten(nn.Module):
    """A flat int8 module called with the model's own inputs again."""

    def __init__(self, module: nn.Module, signature: Signature) -> None:
        super().__init__()
        self.module = module
        self.signature = signature

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        return cast(torch.Tensor, self.module(*self.signature.flatten(inputs)))


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with transformers' ``Conv1D`` layers replaced by ``nn.Linear``
    (same function; dynamic int8 quantizes ``nn.Linear`` only)."""
    model = copy.deepcopy(model)
    if not HF_CONV1D:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, HF_CONV1D):
            weight, bias = weight_of(module), bias_of(module)
            n_in, n_out = weight.shape
            linear = nn.Linear(n_in, n_out, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.t())
                if bias is not None:
                    linear.bias.copy_(bias)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, linear)
    return model


def dynamic_int8(model: nn.Module, per_channel: bool, reduce_range: bool) -> tuple[nn.Module, int]:
    """``torch.ao.quantization.quantize_dynamic`` on every linear layer.

    Returns:
        The quantized module and how many linear layers it quantized.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    torch.backends.quantized.engine = INT8_ENGINE
    model = conv1d_as_linear(model).eval()
    count = sum(isinstance(m, nn.Linear) for m in model.modules())
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8)
    del reduce_range  # PyTorch's dynamic int8 picks its own activation range
    return quantized, count
