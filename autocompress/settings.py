"""What a study searches and where its model runs: the target and the study's stored settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from autocompress.deploy import RUNTIMES, onnxruntime_available
from autocompress.errors import AutocompressError
from autocompress.search_space import SearchSpace, parse_search_space_text

SAMPLERS = ("tpe", "nsga2", "random", "gp")
TARGETS = ("cpu-torch", "cpu-onnxruntime", "cuda-torch", "cuda-onnxruntime")


@dataclass(frozen=True)
class Target:
    """Where and how the compressed model will run.

    Attributes:
        device: ``cpu`` or ``cuda``.
        threads: Intra-op threads the model runs with.
        batch_size: The batch latency is measured at.
        runtime: ``torch`` (TorchScript / FX int8) or ``onnxruntime``.
    """

    device: str = "cpu"
    threads: int = 1
    batch_size: int = 32
    runtime: str = "torch"

    @classmethod
    def parse(cls, name: str, threads: int = 1, batch_size: int = 32) -> Target:
        """``cpu-torch``, ``cpu-onnxruntime``, ``cuda-torch`` or ``cuda-onnxruntime``."""
        if name not in TARGETS:
            raise AutocompressError(f"--target {name!r}: use one of {', '.join(TARGETS)}")
        device, runtime = name.split("-", 1)
        return cls(device=device, threads=threads, batch_size=batch_size, runtime=runtime)

    @property
    def name(self) -> str:
        """The target's short name, e.g. ``cpu-onnxruntime``."""
        return f"{self.device}-{self.runtime}"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise AutocompressError(f"runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.runtime == "onnxruntime" and not onnxruntime_available():
            raise AutocompressError(
                "--target *-onnxruntime needs onnxruntime: pip install onnxruntime"
            )
        if self.device not in ("cpu", "cuda"):
            raise AutocompressError(f"--device {self.device!r}: use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise AutocompressError("--device cuda: no CUDA GPU is visible; use --device cpu")
        if self.threads < 1:
            raise AutocompressError(f"--threads {self.threads}: use 1 or more")
        if self.batch_size < 1:
            raise AutocompressError(f"--batch-size {self.batch_size}: use 1 or more")


@dataclass(frozen=True)
class StudySettings:
    """What a study searches and how; stored with the study so a resume uses the same."""

    workload: str = "digits"
    space_text: str = ""
    space_source: str = "search_spaces/default.yaml"
    target: Target = field(default_factory=Target)
    max_accuracy_drop: float = 0.01
    sampler: str = "tpe"
    seed: int = 0
    data_dir: str | None = None
    early_stop: bool = True
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise AutocompressError(f"--sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise AutocompressError(
                f"--max-accuracy-drop {self.max_accuracy_drop}: use a fraction in [0, 1], e.g. 0.01"
            )

    def space(self) -> SearchSpace:
        """The validated search space."""
        return parse_search_space_text(self.space_text, self.space_source)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, stored with the study."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySettings:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "target": Target(**d["target"])})
