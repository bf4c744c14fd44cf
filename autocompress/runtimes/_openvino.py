"""OpenVINO on the CPU: f32, bf16 or f16 inference precision, NNCF int8 and low-bit weights.

The model is exported to ONNX as for ONNX Runtime (named inputs, dynamic batch and sequence
axes) and converted with ``openvino.convert_model``; a physically pruned model converts
smaller. On top of the float model:

- ``int8: static``: NNCF post-training quantization (``nncf.quantize``) on the training
  split's calibration batches; ``model_type=TRANSFORMER`` for models with attention, with
  SmoothQuant's alpha (``smooth_quant``) and the preset (``int8_preset``) as searchable knobs;
- ``int8: dynamic``: int8 weights by ``nncf.compress_weights`` (``INT8_ASYM``), activations
  quantized per group of 32 at run time by the CPU plugin (``DYNAMIC_QUANTIZATION_GROUP_SIZE``);
- weights of 8 bits or fewer without int8: ``nncf.compress_weights`` (``INT4_SYM`` in the
  method's groups, or ``INT8_SYM``), so the file keeps low-bit weights (MatMul and embedding
  layers; NNCF keeps the first and last at 8 bits).

The precision is a compile hint (``INFERENCE_PRECISION_HINT``) recorded in the model's
``rt_info`` so that :meth:`OpenVINO.load` compiles the file as it was measured; below f32 the
float weights are saved as float16 (half the file). The deployed size is the ``.xml`` plus
the ``.bin``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.params import Param
from autocompress.runtimes._base import (
    Deployed,
    DeployRequest,
    Runtime,
    files_size,
    step_failure,
)
from autocompress.runtimes._onnx_tools import export_onnx, exporter_note, feeds
from autocompress.runtimes._signature import Signature

PRECISIONS = ("f32", "bf16", "f16")
PRESETS = ("performance", "mixed")
_CAPABILITIES = {"FP32": "f32", "BF16": "bf16", "FP16": "f16"}
_RT_INFO = "autocompress_precision"
_RT_DYNAMIC = "autocompress_dynamic_int8"
DYNAMIC_GROUP = 32


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino as ov

    return ov.Core()


@functools.lru_cache(maxsize=1)
def cpu_precisions() -> tuple[str, ...]:
    """The inference precisions OpenVINO's CPU plugin offers on this CPU."""
    capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return tuple(p for p in PRECISIONS if any(_CAPABILITIES.get(c) == p for c in capabilities))


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    # NNCF draws progress bars and logs advice; the trial's notes say what ran.
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _compile(model_or_path: Any, precision: str, threads: int, dynamic: bool) -> Any:
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if dynamic:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = DYNAMIC_GROUP
    return _core().compile_model(model_or_path, "CPU", config)


def _runner(compiled: Any, names: tuple[str, ...]) -> Callable[[Inputs], torch.Tensor]:
    request = compiled.create_infer_request()

    def run(inputs: Inputs) -> torch.Tensor:
        request.infer(feeds(Signature.named(inputs, names), inputs))
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def _last_line(error: BaseException) -> str:
    """OpenVINO's errors start with the call stack's files: the cause is the last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _blamed(request: DeployRequest) -> str:
    """The step a failure to compile the deployed model is blamed on."""
    if request.int8 is not None:
        return "int8"
    if request.weights is not None and request.weights.bits <= 8:
        return "weights"
    return "runtime"


def _convert_direct(model: nn.Module, request: DeployRequest, signature: Signature) -> Any:
    """``model`` converted by OpenVINO from PyTorch (no ONNX), its inputs named as ours."""
    import openvino as ov

    from autocompress.runtimes._onnx_tools import exportable
    from autocompress.runtimes._signature import flat

    wrapped, _, args = flat(exportable(model), request.example)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings; the result is measured
        converted = ov.convert_model(wrapped, example_input=args)
    for port, name in zip(converted.inputs, signature.names, strict=True):
        port.get_tensor().set_names({name})
    return converted


def _low_bit_constants(model: Any) -> int:
    """How many weight constants of ``model`` are stored in 8 bits or fewer."""
    import openvino as ov

    low = {ov.Type.i4, ov.Type.u4, ov.Type.i8, ov.Type.u8}
    return sum(
        op.get_type_name() == "Constant" and op.get_element_type() in low for op in model.get_ops()
    )


@dataclass(frozen=True)
class OpenVINO(Runtime):
    """OpenVINO's CPU plugin, with NNCF for int8 and low-bit weights.

    Attributes:
        precision: ``f32``, ``bf16`` or ``f16``: the inference precision of the float parts
            (offered as this CPU's plugin reports).
        int8_preset: NNCF's preset for static int8: ``performance`` (symmetric activations)
            or ``mixed`` (asymmetric activations).
        smooth_quant: SmoothQuant's alpha for static int8 of models with attention (0: off).
    """

    precision: str = "f32"
    int8_preset: str = "performance"
    smooth_quant: float = 0.95

    name: ClassVar[str] = "openvino"
    LOW_BIT_WEIGHTS: ClassVar[bool] = True  # nncf.compress_weights
    FORMAT: ClassVar[str] = "openvino"
    SUFFIXES: ClassVar[tuple[str, ...]] = (".xml",)
    INT8_PARAMS: ClassVar[tuple[str, ...]] = ("mode",)
    ATTENTION_INT8: ClassVar[str] = "static"  # NNCF's transformer model type with SmoothQuant
    SEARCH: ClassVar[dict[str, Param]] = {
        "precision": Param(str, "f32", "float precision the model runs in (as the CPU offers)",
                           choices=PRECISIONS),
        "int8_preset": Param(str, "performance", "NNCF preset of static int8 (OpenVINO)",
                             choices=PRESETS),
        "smooth_quant": Param(float, 0.95, "SmoothQuant alpha of static int8 with attention "
                              "(OpenVINO; 0: off)", bounds=(0.0, 1.0)),
    }  # fmt: skip

    @classmethod
    def available(cls) -> str | None:
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except ImportError:
            return "needs openvino and nncf: pip install 'autocompress[openvino]'"
        return None

    @classmethod
    def offered(cls, param: str, device: str = "cpu") -> tuple[Any, ...] | None:
        return cpu_precisions() if param == "precision" else None

    @classmethod
    def asks(cls, param: str, chosen: Mapping[str, Any], facts: Any = None) -> bool:
        static = getattr(chosen.get("int8"), "mode", None) == "static"
        if param == "smooth_quant":  # SmoothQuant applies to attention models only
            return static and (facts is None or getattr(facts, "transformer", None) is not None)
        if param == "int8_preset":
            return static
        return True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.smooth_quant <= 1.0:
            raise ValueError(f"openvino smooth_quant must be in [0, 1], got {self.smooth_quant}")

    def describe(self) -> str:
        return f"openvino {self.precision}"

    def deploy(self, model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
        import openvino as ov

        if request.device != "cpu":
            raise ValueError("the openvino runtime runs on the CPU only")
        if self.precision not in cpu_precisions():
            raise step_failure(
                "runtime",
                f"precision {self.precision} is not offered on this CPU (OpenVINO offers "
                f"{', '.join(cpu_precisions())})",
            )
        xml = out_stem.with_suffix(".xml")
        # One fixed name for the export: the converter records it in the .xml, which must
        # not depend on where a trial or a replay wrote it.
        with tempfile.TemporaryDirectory(dir=out_stem.parent) as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            signature = export_onnx(model, request.example, onnx_path)
            ov_model = ov.convert_model(str(onnx_path))
        float_model = ov_model
        notes: list[str] = [exporter_note()]
        ov_model, kind, dynamic = self._compress(float_model, signature, request, notes)
        files = (str(xml), str(xml.with_suffix(".bin")))
        try:
            compiled = self._save_and_compile(ov_model, xml, request.threads, dynamic)
        except RuntimeError as e:
            static = getattr(request.int8, "mode", None) == "static"
            if not (static and request.attention):
                raise step_failure(_blamed(request), "compiling the OpenVINO model", e) from e
            # NNCF's transformer model type can leave a graph of our ONNX export that the CPU
            # plugin cannot fold (GPT-2, pruned or not); the same quantization of the model
            # converted from PyTorch directly compiles, and else the default model type.
            rejected = _last_line(e)
            compiled, ov_model, kind, notes = self._recover(model, float_model, signature,
                                                            request, xml, rejected)  # fmt: skip
        if self.precision != "f32":
            notes.append("float weights stored as float16 in the .bin")
        return Deployed(
            _runner(compiled, signature.names), kind, str(xml), files_size(files), "cpu",
            notes, files, low_bit_weights=_low_bit_constants(ov_model) > 0,
        )  # fmt: skip

    def _recover(
        self,
        model: nn.Module,
        float_model: Any,
        signature: Signature,
        request: DeployRequest,
        xml: Path,
        rejected: str,
    ) -> tuple[Any, Any, str, list[str]]:
        """Static int8 of an attention model again, after the CPU plugin rejected the graph."""
        attempts = (
            ("converted from PyTorch directly", lambda: _convert_direct(model, request, signature),
             request),
            ("quantized with the default model type", lambda: float_model,
             replace(request, attention=False)),
        )  # fmt: skip
        error: BaseException | None = None
        for how, convert, attempt in attempts:
            notes = [f"NNCF's transformer int8 of the ONNX export gave a graph the CPU plugin "
                     f"rejects ({rejected}); {how}"]  # fmt: skip
            try:
                # `convert` is one of the lambdas above, which mypy does not annotate
                converted = convert()  # type: ignore[no-untyped-call]
                ov_model, kind, dynamic = self._compress(converted, signature, attempt, notes)
                compiled = self._save_and_compile(ov_model, xml, request.threads, dynamic)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - the next way, or the failure below
                error = e
                continue
            return compiled, ov_model, kind, notes
        raise step_failure("int8", "compiling the OpenVINO model", error) from error

    def _compress(
        self, ov_model: Any, signature: Signature, request: DeployRequest, notes: list[str]
    ) -> tuple[Any, str, bool]:
        """The float model with the request's int8 or low-bit weights: model, kind, dynamic."""
        if request.int8 is not None:
            return self._int8(ov_model, signature, request, notes)
        if request.weights is not None and request.weights.bits <= 8:
            compressed, kind = self._weight_only(
                ov_model, request.weights, notes, f"openvino-{self.precision}"
            )
            return compressed, kind, False
        return ov_model, f"openvino-{self.precision}", False

    def _save_and_compile(self, ov_model: Any, xml: Path, threads: int, dynamic: bool) -> Any:
        import openvino as ov

        ov_model.set_rt_info(self.precision, [_RT_INFO])
        ov_model.set_rt_info(str(dynamic), [_RT_DYNAMIC])
        ov.save_model(ov_model, str(xml), compress_to_fp16=self.precision != "f32")
        return _compile(str(xml), self.precision, threads, dynamic)

    def _int8(
        self, ov_model: Any, signature: Signature, request: DeployRequest, notes: list[str]
    ) -> tuple[Any, str, bool]:
        import nncf

        mode = request.int8.mode
        try:
            with _quiet_nncf():
                if mode == "dynamic":
                    compressed = nncf.compress_weights(
                        ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM
                    )
                else:
                    if request.calibration is None:
                        raise ValueError("static int8 needs calibration batches")
                    compressed = self._quantize(ov_model, signature, request)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            raise step_failure("int8", f"NNCF {mode} int8", e) from e
        if mode == "dynamic":
            if not _low_bit_constants(compressed):
                raise step_failure("int8", "NNCF found no weights to store as int8")
            notes.append(
                "int8 weights (nncf.compress_weights); the CPU plugin quantizes the activations "
                f"of fully connected layers per group of {DYNAMIC_GROUP} at run time, other "
                "layers decompress their weights to float"
            )
            return compressed, "openvino-dynamic-int8", True
        what = "transformer" if request.attention else "default"
        alpha = f", SmoothQuant alpha {self.smooth_quant}" if request.attention else ""
        notes.append(f"NNCF static int8 ({what} model type, {self.int8_preset} preset{alpha})")
        return compressed, "openvino-nncf-int8", False

    def _quantize(self, ov_model: Any, signature: Signature, request: DeployRequest) -> Any:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        calibration = request.calibration or []
        dataset = nncf.Dataset(calibration, lambda batch: feeds(signature, batch))
        extra: dict[str, Any] = {}
        if request.attention:
            alpha = self.smooth_quant if self.smooth_quant > 0 else -1
            extra["model_type"] = nncf.ModelType.TRANSFORMER
            extra["advanced_parameters"] = AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)
            )
        preset = (
            nncf.QuantizationPreset.MIXED
            if self.int8_preset == "mixed"
            else nncf.QuantizationPreset.PERFORMANCE
        )
        return nncf.quantize(
            ov_model, dataset, preset=preset, subset_size=max(1, len(calibration)), **extra
        )

    @staticmethod
    def _weight_only(ov_model: Any, weights: Any, notes: list[str], kind: str) -> tuple[Any, str]:
        import nncf

        if weights.granularity == "per_tensor":
            notes.append("per-tensor low-bit weights run as float on OpenVINO")
            return ov_model, kind
        bits = max([weights.bits, *weights.layer_bits.values()])
        group = weights.granularity.removeprefix("group")
        if bits <= 4:
            from nncf.quantization.advanced_parameters import (
                AdvancedCompressionParameters,
                GroupSizeFallbackMode,
            )

            mode = nncf.CompressWeightsMode.INT4_SYM
            extra: dict[str, Any] = {"group_size": int(group) if group.isdigit() else -1}
            extra["ratio"] = 1.0
            # A pruned layer whose width the group does not divide gets the largest power of
            # two below it that does (NNCF's ADJUST), instead of failing the trial.
            extra["advanced_parameters"] = AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
            )
        else:
            mode, extra = nncf.CompressWeightsMode.INT8_SYM, {}
        try:
            with _quiet_nncf():
                compressed = nncf.compress_weights(ov_model, mode=mode, **extra)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            raise step_failure("weights", "NNCF weight compression", e) from e
        count = _low_bit_constants(compressed)
        if not count:
            notes.append(
                f"{bits}-bit weights run as float on OpenVINO: NNCF found no weights to compress"
            )
            return ov_model, kind
        width = 4 if bits <= 4 else 8
        notes.append(
            f"{count} weight tensors stored as int{width} (nncf.compress_weights; first and "
            "last layers kept at 8 bits); activations float"
        )
        return compressed, f"openvino-int{width}-weights"

    def load(
        self, path: str | os.PathLike[str], threads: int = 1
    ) -> Callable[[Inputs], torch.Tensor]:
        model = _core().read_model(str(path))

        def recorded(key: str, default: str) -> str:
            return (
                str(model.get_rt_info([key]).astype(str)) if model.has_rt_info([key]) else default
            )

        precision = recorded(_RT_INFO, self.precision)
        dynamic = recorded(_RT_DYNAMIC, "False") == "True"
        names = tuple(i.get_any_name() for i in model.inputs)
        return _runner(_compile(model, precision, threads, dynamic), names)
