"""What every runtime shares: its declared settings, the request it deploys, what it returns.

A runtime is a frozen dataclass whose fields are its own settings (precision, graph fusion,
int8 calibration knobs), declared as searchable parameters in ``SEARCH`` like a method's. It
says whether it can run here (:meth:`Runtime.available`), which of its choices this host
offers (:meth:`Runtime.offered`), which settings of the ``int8`` method it reads
(``INT8_PARAMS``), how it turns a PyTorch model into its deployed file(s)
(:meth:`Runtime.deploy`) and how it loads them back (:meth:`Runtime.load`). The one dict of
runtimes is :data:`autocompress.runtimes.RUNTIMES`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from autocompress.data import Inputs
from autocompress.errors import TrialFailure, reason
from autocompress.params import Param


@dataclass
class Deployed:
    """A model in its deployed form.

    Attributes:
        run: Runs one batch of inputs and returns the output tensor (on the CPU).
        kind: What was deployed, e.g. ``torchscript``, ``onnx-fp32``, ``openvino-int8``.
        path: The deployed file a runtime loads (the ``.xml`` of an OpenVINO model).
        size_bytes: The size on disk of every file the runtime loads (``files``).
        device: Where the model runs (``cpu`` or ``cuda``).
        notes: What a user should know about this form (a fallback taken, float kernels).
        files: Every file the deployed form needs (its size is ``size_bytes``).
        low_bit_weights: Whether the deployed file stores weights in 8 bits or fewer (int8
            kernels, ``MatMulNBits``, OpenVINO's compressed weights), so that low-bit weights
            are not said to run as float where they do not.
        int8_mode: The int8 mode that runs (``static`` or ``dynamic``), where int8 was asked;
            it differs from the asked mode when a runtime fell back, and the trial's label
            then says what ran.
    """

    run: Callable[[Inputs], torch.Tensor]
    kind: str
    path: str
    size_bytes: int
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    files: tuple[str, ...] = ()
    low_bit_weights: bool = False
    int8_mode: str | None = None

    def __post_init__(self) -> None:
        if not self.files:
            self.files = (self.path,)

    def synchronize(self) -> Callable[[], None] | None:
        """What the latency meter must call before reading the clock (CUDA is asynchronous)."""
        return torch.cuda.synchronize if self.device == "cuda" else None


def files_size(files: tuple[str | os.PathLike[str], ...]) -> int:
    """Bytes on disk of ``files`` together."""
    return sum(Path(f).stat().st_size for f in files)


@dataclass(frozen=True)
class DeployRequest:
    """What a runtime needs to deploy one model.

    Attributes:
        example: One batch of inputs, for tracing and export.
        int8: The configuration's ``int8`` method (mode and the settings this runtime reads),
            or ``None``.
        weights: The configuration's ``weights`` method, or ``None``: a runtime with low-bit
            weight-only kernels deploys weights of 8 bits or fewer on them.
        calibration: Calibration input batches (training split), for static int8.
        threads: Intra-op threads the runtime runs with.
        device: ``cpu`` or ``cuda``.
        timing_input: A batch of the target's size, where a runtime chooses between forms by
            timing them.
        attention: Whether the model has attention blocks (quantizers treat them apart).
    """

    example: Inputs
    int8: Any = None
    weights: Any = None
    calibration: list[Inputs] | None = None
    threads: int = 1
    device: str = "cpu"
    timing_input: Inputs | None = None
    attention: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be 1 or more, got {self.threads}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")


def step_failure(step: str, message: str, cause: BaseException | None = None) -> TrialFailure:
    """A trial failure blamed on the method ``step`` (``int8``, ``weights``, ``runtime``)."""
    detail = "" if cause is None else f": {reason(cause)}"
    return TrialFailure(f"{step} failed: {message}{detail}", method=step)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` has attention blocks (``nn.MultiheadAttention`` or a module whose
    class name says attention, as in Hugging Face models)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
        for m in model.modules()
    )


@dataclass(frozen=True)
class Runtime:
    """Base of the runtime dataclasses: declared settings and the deploy/load interface."""

    name: ClassVar[str] = ""
    FORMAT: ClassVar[str] = ""
    DEVICES: ClassVar[tuple[str, ...]] = ("cpu",)
    SEARCH: ClassVar[dict[str, Param]] = {}
    INT8_PARAMS: ClassVar[tuple[str, ...]] = ("mode",)
    SUFFIXES: ClassVar[tuple[str, ...]] = ()
    # The int8 mode a known-good start uses on models with attention: activation outliers
    # make plain static int8 lose accuracy (67 points of MiniLM's recall on ORT), dynamic
    # keeps it; a runtime whose static int8 handles them (SmoothQuant) says static.
    ATTENTION_INT8: ClassVar[str] = "dynamic"
    # Whether the deployed file keeps weights of 8 bits or fewer without int8 activations
    # (weight-only kernels, compressed weights); where not, such weights deploy as float.
    LOW_BIT_WEIGHTS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for key, param in self.SEARCH.items():
            value = getattr(self, key)
            if param.choices is not None and value not in param.choices:
                allowed = ", ".join(map(str, param.choices))
                raise ValueError(f"{self.name} {key} must be one of {allowed}, got {value!r}")

    @classmethod
    def available(cls) -> str | None:
        """``None`` when this runtime can run here, else why not and what to install."""
        return None

    @classmethod
    def offered(cls, param: str, device: str = "cpu") -> tuple[Any, ...] | None:
        """The choices of ``param`` this host offers (``None``: all that are declared)."""
        return None

    @classmethod
    def asks(cls, param: str, chosen: Mapping[str, Any], facts: Any = None) -> bool:
        """Whether a trial with the methods ``chosen`` on a model with the architecture
        ``facts`` uses ``param`` (else it is not asked)."""
        return True

    def params(self) -> dict[str, Any]:
        """The settings as plain values (their recipe form)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One short phrase, e.g. ``openvino bf16``."""
        changed = [
            str(getattr(self, k))
            for k, p in self.SEARCH.items()
            if getattr(self, k) != p.default and not isinstance(p.default, list | dict)
        ]
        return " ".join([self.name, *changed])

    def deploy(self, model: nn.Module, out_stem: Path, request: DeployRequest) -> Deployed:
        """Build the deployed form of ``model`` next to ``out_stem`` (the runtime adds its
        suffixes) and a callable that runs it.

        Raises:
            TrialFailure: A compression step could not be deployed (blamed on it).
        """
        raise NotImplementedError

    def load(
        self, path: str | os.PathLike[str], threads: int = 1
    ) -> Callable[[Inputs], torch.Tensor]:
        """A deployed file written by :meth:`deploy` as a callable on the model's inputs."""
        raise NotImplementedError
