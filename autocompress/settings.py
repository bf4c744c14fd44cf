"""What a study searches and where its model runs: the target and the study's stored settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import torch

from autocompress.errors import AutocompressError
from autocompress.record import MAX_BATCH_SIZE
from autocompress.runtimes import RUNTIMES, Runtime, targets
from autocompress.search_space import SearchSpace, parse_search_space_text

SAMPLERS = ("tpe", "nsga2", "random", "gp")
# Production limits: constraints of the study beside the metric budget, by setting and flag.
LIMIT_FLAGS = {
    "max_latency_ms": "--max-latency-ms",
    "max_size_kb": "--max-size-kb",
    "max_memory_mb": "--max-memory-mb",
}
TARGETS = targets()


@dataclass(frozen=True)
class Target:
    """Where and how the compressed model will run.

    Attributes:
        device: ``cpu`` or ``cuda``.
        threads: Intra-op threads the model runs with.
        batch_size: The batch latency is measured at.
        runtime: A name in :data:`~autocompress.runtimes.RUNTIMES`: ``torch`` (TorchScript,
            FX int8, bf16), ``onnxruntime`` or ``openvino``.
    """

    device: str = "cpu"
    threads: int = 1
    batch_size: int = 32
    runtime: str = "torch"

    @classmethod
    def parse(cls, name: str, threads: int = 1, batch_size: int = 32) -> Target:
        """A name of :data:`TARGETS`: ``cpu-torch``, ``cpu-onnxruntime``, ``cpu-openvino``..."""
        if name not in TARGETS:
            raise AutocompressError(f"--target {name!r}: use one of {', '.join(TARGETS)}")
        device, runtime = name.split("-", 1)
        return cls(device=device, threads=threads, batch_size=batch_size, runtime=runtime)

    @classmethod
    def given_parts(
        cls, name: str | None, threads: int | None, batch_size: int | None
    ) -> dict[str, Any]:
        """The target parts a user gave (``None``: not given), for a create-or-resume: device
        and runtime from ``name``, threads and batch size as given."""
        parts: dict[str, Any] = {}
        if name is not None:
            parsed = cls.parse(name, threads or 1, batch_size or 32)
            parts.update(device=parsed.device, runtime=parsed.runtime)
        if threads is not None:
            parts["threads"] = threads
        if batch_size is not None:
            parts["batch_size"] = batch_size
        return parts

    def runtime_unit(self, settings: Any = None) -> Runtime:
        """The runtime with a trial's settings (its ``runtime`` method), or its defaults."""
        if settings is None:
            return RUNTIMES[self.runtime]()
        return cast(Runtime, settings.build())

    @property
    def name(self) -> str:
        """The target's short name, e.g. ``cpu-onnxruntime``."""
        return f"{self.device}-{self.runtime}"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise AutocompressError(f"runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        missing = RUNTIMES[self.runtime].available()
        if missing is not None:
            raise AutocompressError(f"--target {self.name} {missing}")
        if self.device not in ("cpu", "cuda"):
            raise AutocompressError(f"--device {self.device!r}: use cpu or cuda")
        if self.device not in RUNTIMES[self.runtime].DEVICES:
            cpu = [t for t in TARGETS if t.startswith("cpu-")]
            raise AutocompressError(
                f"--target {self.name}: the {self.runtime} runtime runs on the CPU only; "
                f"use one of {', '.join(cpu)}"
            )
        if self.device == "cuda" and not torch.cuda.is_available():
            raise AutocompressError(
                f"--target {self.name}: this machine has no CUDA GPU that PyTorch can see; "
                "use a CPU target: " + ", ".join(t for t in TARGETS if t.startswith("cpu-"))
            )
        if self.threads < 1:
            raise AutocompressError(f"--threads {self.threads}: use 1 or more")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise AutocompressError(f"--batch-size {self.batch_size}: use 1 to {MAX_BATCH_SIZE}")


@dataclass(frozen=True)
class StudySettings:
    """What a study searches and how; stored with the study so a resume uses the same.

    Attributes:
        workload: Built-in name or ``package.module:function``.
        space_text: The search space's YAML.
        space_source: Where it came from.
        target: Runtime, device, threads, batch size.
        max_metric_drop: The budget in the metric's own units (a worsening: accuracy lost,
            perplexity gained). ``None`` with ``max_relative_drop`` unset means the task's
            default: 0.01 for classification, 5% relative otherwise.
        max_relative_drop: The budget as a share of the baseline's metric (0.05: 5% worse).
        sampler: Optuna sampler's short name.
        seed: Seed of the sampler, the baseline and fine-tuning.
        data_dir: Where a built-in workload's data is.
        early_stop: Stop hopeless trials after a fine-tuning epoch.
        cheap_first: Measure a fine-tuning trial without fine-tuning first and fine-tune it
            only if it could still reach the front (see :mod:`autocompress.fidelity`).
        warm_start: Enqueue the known-good starts when the study is created.
        size: The size objective: the ``deployed`` file the runtime loads, or the ``packed``
            artifact.
        max_latency_ms: A production limit on the latency (ms per batch on the target): a
            constraint of the study like the metric budget.
        max_size_kb: A limit on the size objective (KB).
        max_memory_mb: A limit on the resident memory (MB) the deployed model takes once loaded
            and run, measured per trial in a fresh process (Linux ``/proc``).
    """

    workload: str = "digits"
    space_text: str = ""
    space_source: str = "search_spaces/default.yaml"
    target: Target = field(default_factory=Target)
    max_metric_drop: float | None = None
    max_relative_drop: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    data_dir: str | None = None
    early_stop: bool = True
    cheap_first: bool = False
    warm_start: bool = True
    size: str = "deployed"
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise AutocompressError(f"--sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.max_metric_drop is not None and self.max_relative_drop is not None:
            raise AutocompressError(
                "give --max-metric-drop (or --max-accuracy-drop) or --max-relative-drop, not both"
            )
        if self.max_metric_drop is not None and not (
            isinstance(self.max_metric_drop, int | float) and 0.0 <= self.max_metric_drop < math.inf
        ):
            raise AutocompressError(
                f"--max-metric-drop {self.max_metric_drop}: use a finite number >= 0, e.g. 0.01"
            )
        if self.max_relative_drop is not None and not (
            isinstance(self.max_relative_drop, int | float) and 0.0 <= self.max_relative_drop <= 10
        ):
            raise AutocompressError(
                f"--max-relative-drop {self.max_relative_drop}: use a fraction >= 0, e.g. 0.05"
            )
        for key, value in self.limits().items():
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and 0 < value < math.inf
            ):
                flag = LIMIT_FLAGS[key]
                raise AutocompressError(f"{flag} {value}: use a positive number, e.g. {flag} 10")
        if self.size not in ("deployed", "packed"):
            raise AutocompressError(f"--size {self.size!r}: use deployed or packed")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**32
        ):
            raise AutocompressError(f"--seed {self.seed}: use a whole number in [0, 2**32)")

    def budget(self, task_name: str) -> dict[str, float | None]:
        """The budget stored with the study: ``{"absolute": x}`` or ``{"relative": r}``."""
        if self.max_relative_drop is not None:
            return {"absolute": None, "relative": self.max_relative_drop}
        if self.max_metric_drop is not None:
            return {"absolute": self.max_metric_drop, "relative": None}
        if task_name == "classification":
            return {"absolute": 0.01, "relative": None}
        return {"absolute": None, "relative": 0.05}

    def limits(self) -> dict[str, float]:
        """The production limits that are set: ``{"max_latency_ms": 5.0, ...}``."""
        return {k: v for k in LIMIT_FLAGS if (v := getattr(self, k)) is not None}

    def space(self) -> SearchSpace:
        """The validated search space."""
        return parse_search_space_text(self.space_text, self.space_source)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, stored with the study."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySettings:
        """Inverse of :meth:`to_dict` (settings of earlier versions are read too)."""
        d = dict(d)
        if "max_accuracy_drop" in d:
            d.setdefault("max_metric_drop", d.pop("max_accuracy_drop"))
            d.setdefault("size", "packed")  # earlier studies optimised the packed size
        raw = d.get("target")
        target: dict[str, Any] = raw if isinstance(raw, dict) else {}
        parts: tuple[tuple[dict[str, Any], type], ...] = ((d, cls), (target, Target))
        for part, known in parts:
            unknown = sorted(set(part) - {f.name for f in fields(known)})
            if unknown:
                where = "settings" if known is cls else "settings.target"
                raise AutocompressError(
                    f"the study's {where} have a field this autocompress does not know "
                    f"({str(unknown[0])[:40]!r}): the study was made by a newer version, or its "
                    "database was edited; upgrade autocompress, or start a new --study"
                )
        return cls(**{**d, "target": Target(**target)})
