"""ONNX Runtime: the float model exported to ONNX, ORT's int8 or weight-only low-bit forms.

int8 is ORT's static (QDQ / QOperator, MinMax / Entropy / Percentile calibration) or dynamic
quantization of the export; weights of 8 bits or fewer without int8 are deployed as
``MatMulNBits``. The ONNX path never depends on PyTorch's int8 tracer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.params import Param
from autocompress.runtimes._base import Deployed, DeployRequest, Runtime, step_failure
from autocompress.runtimes._onnx_tools import (
    export_onnx,
    exporter_note,
    feeds,
    fuse_transformer,
    onnxruntime_available,
    quantize_dynamic_int8,
    quantize_static_int8,
    quantize_weights_nbits,
    session,
    transformer_type,
    with_eager_attention,
)
from autocompress.runtimes._signature import Signature


def nbits(weights: Any) -> tuple[int, int | None] | None:
    """(bits, block size) of a weight-only low-bit deployment of ``weights``, or ``None``."""
    if weights is None or weights.bits > 8 or weights.granularity == "per_tensor":
        return None
    bits = 4 if max([weights.bits, *weights.layer_bits.values()]) <= 4 else 8
    group = weights.granularity.removeprefix("group")
    return bits, int(group) if group.isdigit() else None


def _run_session(sess: Any, signature: Signature) -> Callable[[Inputs], torch.Tensor]:
    def run(inputs: Inputs) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, feeds(signature, inputs))[0])

    return run


@dataclass(frozen=True)
class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU (or CUDA) execution provider, all graph optimisations on.

    Attributes:
        graph: ``plain`` (the export as it is) or ``fused``: for Hugging Face BERT, GPT-2 and
            ViT models, exported with eager attention and rewritten by ONNX Runtime's
            transformer optimizer (fused attention, layer norm and GELU) before any int8.
    """

    graph: str = "plain"

    name: ClassVar[str] = "onnxruntime"
    LOW_BIT_WEIGHTS: ClassVar[bool] = True  # MatMulNBits
    FORMAT: ClassVar[str] = "onnx"
    DEVICES: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    SUFFIXES: ClassVar[tuple[str, ...]] = (".onnx",)
    INT8_PARAMS: ClassVar[tuple[str, ...]] = (
        "mode", "per_channel", "calibration", "quant_format", "reduce_range",
    )  # fmt: skip
    SEARCH: ClassVar[dict[str, Param]] = {
        "graph": Param(str, "plain", "ONNX Runtime: fuse a BERT/GPT-2/ViT graph with its "
                       "transformer optimizer", choices=("plain", "fused")),
    }  # fmt: skip

    @classmethod
    def asks(cls, param: str, chosen: Any, facts: Any = None) -> bool:
        if param == "graph":  # only a transformer has something to fuse
            return facts is None or getattr(facts, "transformer", None) is not None
        return True

    @classmethod
    def available(cls) -> str | None:
        if onnxruntime_available():
            return None
        return "needs onnxruntime: pip install onnxruntime"

    def deploy(self, model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
        path = out_stem.with_suffix(".onnx")
        int8, device = request.int8, request.device
        low_bits = None if int8 is not None or device != "cpu" else nbits(request.weights)
        fp32_path = path.with_suffix(".fp32.onnx") if int8 is not None or low_bits else path
        notes: list[str] = []
        fusable = transformer_type(model) if self.graph == "fused" else None
        exported = with_eager_attention(model) if fusable else model
        signature = export_onnx(exported, request.example, fp32_path)
        notes.append(exporter_note())
        kind = "onnx-fp32"
        if self.graph == "fused":
            kind = self._fuse(fp32_path, fusable, notes) or kind
        if low_bits is not None:
            kind = self._weight_only(fp32_path, path, low_bits, request.weights, notes) or kind
        if int8 is not None:
            kind = self._int8(fp32_path, path, signature, request)
        try:
            sess = session(path, request.threads, device)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            if int8 is not None:
                raise step_failure("int8", f"loading the {kind} model in ONNX Runtime", e) from e
            raise
        return Deployed(
            _run_session(sess, signature), kind, str(path), path.stat().st_size, device, notes,
            low_bit_weights=int8 is not None or kind.startswith("onnx-matmulnbits"),
        )  # fmt: skip

    @staticmethod
    def _fuse(path: Path, fusable: tuple[str, int, int] | None, notes: list[str]) -> str | None:
        if fusable is None:
            notes.append("graph fused: not a Hugging Face BERT, GPT-2 or ViT; nothing fused")
            return None
        try:
            fused = fuse_transformer(path, fusable)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            raise step_failure("runtime", "ONNX Runtime transformer optimizer", e) from e
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "nothing"
        notes.append(f"ONNX Runtime transformer optimizer ({fusable[0]}) fused: {listed}")
        return "onnx-fused-fp32"

    @staticmethod
    def _weight_only(
        fp32_path: Path,
        path: Path,
        low_bits: tuple[int, int | None],
        weights: Any,
        notes: list[str],
    ) -> str | None:
        bits, block = low_bits
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
        if not count:
            fp32_path.replace(path)
            return None
        fp32_path.unlink(missing_ok=True)
        notes.append(
            f"{count} MatMul/Gather nodes deployed as ONNX Runtime {bits}-bit weight-only "
            "(smaller file; other layers float32)"
        )
        return f"onnx-matmulnbits-int{bits}"

    @staticmethod
    def _int8(fp32_path: Path, path: Path, signature: Signature, request: DeployRequest) -> str:
        int8 = request.int8
        try:
            if int8.mode == "static":
                if request.calibration is None:
                    raise ValueError("static int8 needs calibration batches")
                quantize_static_int8(
                    fp32_path,
                    path,
                    signature,
                    request.calibration,
                    per_channel=int8.per_channel,
                    reduce_range=int8.reduce_range,
                    quant_format=int8.quant_format,
                    calibration_method=int8.calibration,
                )
                return f"onnx-{int8.quant_format}-int8"
            quantize_dynamic_int8(
                fp32_path, path, per_channel=int8.per_channel, reduce_range=int8.reduce_range
            )
            return "onnx-dynamic-int8"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001
            raise step_failure("int8", f"ONNX Runtime {int8.mode} int8", e) from e
        finally:
            fp32_path.unlink(missing_ok=True)

    def load(
        self, path: str | os.PathLike[str], threads: int = 1
    ) -> Callable[[Inputs], torch.Tensor]:
        sess = session(Path(path), threads)
        names = tuple(i.name for i in sess.get_inputs())

        def run(inputs: Inputs) -> torch.Tensor:
            signature = Signature.named(inputs, names)
            return torch.from_numpy(sess.run(None, feeds(signature, inputs))[0])

        return run
