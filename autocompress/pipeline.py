"""One trial's compression: the configured methods, stage by stage, then the packed artifact.

Stages run in a fixed order (:data:`autocompress.methods.STAGES`): pruning first so that
fine-tuning recovers from it, quantization last so that the stored k-bit weights are exactly
the ones evaluated; deploy-stage methods (int8) shape the deployed form
(:mod:`autocompress.deploy`). Every trial starts from a fresh copy of the baseline.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from optuna import TrialPruned
from torch import nn

from autocompress.architecture import ModelFacts, model_facts, parameter_inventory
from autocompress.artifact import load_packed, save_packed
from autocompress.attention import width_problems
from autocompress.data import Inputs, Split, call_model
from autocompress.errors import TrialFailure, reason
from autocompress.grid import QuantSpec, storage_bits
from autocompress.macs import count_macs
from autocompress.methods import METHODS, STAGES, Context, Method, ordered
from autocompress.methods.weights import implied_weights
from autocompress.reparam import bake
from autocompress.students import Student, StudentCache
from autocompress.tasks import Classification, Task

ARTIFACT_KIND = "autocompress.packed-model"
CONFIG_FORMAT = 2


@dataclass(frozen=True)
class CompressionConfig:
    """The methods one trial applies, by name, and the seed of every random choice.

    int8 activations imply 8-bit weights: when ``int8`` is given without ``weights``, an
    8-bit weight quantization is added, so that the configuration says what runs.
    """

    methods: Mapping[str, Method] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, method in self.methods.items():
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
            if not isinstance(method, METHODS[name]):
                raise ValueError(f"method {name!r} must be a {METHODS[name].__name__}")
        methods = dict(self.methods)
        if "int8" in methods:
            weights = implied_weights(self)
            if weights is not None and weights.bits > 8:
                raise ValueError("int8 activations need weights of 8 bits or fewer")
            methods["weights"] = weights  # type: ignore[assignment]
        object.__setattr__(self, "methods", {n: methods[n] for n in ordered(list(methods))})

    @classmethod
    def of(cls, seed: int = 0, **methods: Method) -> CompressionConfig:
        """A configuration from methods given by name, e.g.
        ``CompressionConfig.of(structured=StructuredPruning(0.5), weights=WeightQuantization(4))``.
        """
        return cls(methods, seed)

    def without(self, *names: str) -> CompressionConfig:
        """The same configuration without the methods ``names`` (same seed)."""
        return CompressionConfig(
            {n: m for n, m in self.methods.items() if n not in names}, self.seed
        )

    def get(self, name: str) -> Method | None:
        """The method ``name``, or ``None`` when this configuration does not apply it."""
        return self.methods.get(name)

    def stage(self, stage: str) -> list[tuple[str, Method]]:
        """The methods of one stage, in order."""
        return [(n, m) for n, m in self.methods.items() if m.stage == stage]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-ready form."""
        return {
            "format": CONFIG_FORMAT,
            "methods": {n: m.params() for n, m in self.methods.items()},
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: Another format, an unknown method or setting, or an invalid value.
        """
        if d.get("format") != CONFIG_FORMAT:
            raise ValueError(
                f"not a compression configuration of format {CONFIG_FORMAT} "
                f"(format {d.get('format')!r})"
            )
        methods = {}
        for name, params in dict(d.get("methods") or {}).items():
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
            try:
                methods[name] = METHODS[name].from_params(dict(params or {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"method {name}: {e}") from None
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        return cls(methods, seed)

    def describe(self) -> str:
        """A short human summary, e.g. ``structured 50% | 4-bit per-channel | ft 2ep ...``."""
        parts = [m.describe() for m in self.methods.values()]
        return " | ".join(parts) if parts else "uncompressed"


@dataclass
class CompressedModel:
    """The result of :func:`compress`.

    Attributes:
        model: The float model after pruning, fine-tuning and weight rounding.
        artifact_path: The packed artifact on disk.
        size_bytes: Its size on disk.
        report: Facts for the trial's record (params, MACs, sparsity, effective bits, notes,
            what each method decided).
    """

    model: nn.Module
    artifact_path: str
    size_bytes: int
    report: dict[str, Any]


def save_baseline_artifact(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """The uncompressed model in the same packed format (fp32), for a like-for-like size."""
    return save_packed(path, model.state_dict(), plan={}, metadata={"kind": ARTIFACT_KIND})


def sparsity(model: nn.Module) -> float:
    """Share of exactly-zero values over the conv, linear and attention weights the model has
    now (split layers' parts included, tied weights once)."""
    params = dict(model.named_parameters())
    total = zeros = 0
    for p in parameter_inventory(model):
        if p.role in ("weight", "attention"):
            w = params[p.name].detach()
            total += w.numel()
            zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def parameter_bits(model: nn.Module, plan: Mapping[str, QuantSpec]) -> dict[str, Any]:
    """Effective bits over every parameter the model has now (tied ones once) and what stays
    float32, by role.

    Quantized tensors (in ``plan``, by current name) count their codes and their float32
    scales; every other parameter counts 32 bits, whatever method made it.
    """
    params = dict(model.named_parameters())
    total_bits = total = 0
    kept: dict[str, int] = {}
    for p in parameter_inventory(model):
        t = params[p.name]
        spec = plan.get(p.name)
        total_bits += storage_bits(t.numel(), list(t.shape), spec)
        total += t.numel()
        if spec is None or spec.bits == 32:
            kept[p.role] = kept.get(p.role, 0) + 4 * t.numel()
    return {"effective_bits": total_bits / total if total else 32.0, "float32_bytes": kept}


def broken_reason(model: nn.Module, example_input: Inputs) -> str | None:
    """Why ``model`` no longer runs, or ``None`` when it does: the shape rules of its
    attention (:func:`autocompress.attention.width_problems`), then one forward pass of
    ``example_input`` in eval mode."""
    problems = width_problems(model)
    if problems:
        return "; ".join(problems)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_input)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - whatever stops the forward pass is the finding
        return f"its forward pass raises {reason(e)}"
    finally:
        model.train(was_training)
    return None


def _run_method(name: str, method: Method, model: nn.Module, ctx: Context) -> None:
    """Apply one method, then check that the model it leaves still runs.

    A method that raises, or that leaves a model breaking its attention's shape rules or
    failing its forward pass on the example input, fails the trial blamed on that method
    (``TrialFailure.method``): a broken model would otherwise surface in a later step (the
    fine-tuning's first batch), which would be counted, and withdrawn, in its place.
    """
    try:
        method.apply(model, ctx)
    except (TrialFailure, TrialPruned, KeyboardInterrupt, SystemExit):
        raise  # already a trial's outcome (a hopeless trial stopped early), or a stop
    except Exception as e:  # noqa: BLE001 - any failure of a method fails the trial, named
        what = f"{name} failed"
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            what = f"out of memory in {name}"
        raise TrialFailure(f"{what}: {reason(e)}", method=name) from e
    broken = broken_reason(model, ctx.example_input)
    if broken is not None:
        raise TrialFailure(f"{name} left a model that does not run: {broken}", method=name)


def _restore(student: nn.Module, stored: Student, ctx: Context) -> None:
    """Rebuild a stored recovered student in place: replay its pruning, load its weights."""
    replay = ctx.replay
    ctx.replay = stored.records
    try:
        for name, method in ctx.config.stage("prune"):
            if name in stored.records:
                _run_method(name, method, student, ctx)
    finally:
        ctx.replay = replay
    student.load_state_dict(stored.state)
    ctx.records = dict(stored.records)
    ctx.notes = [*stored.notes, "recovered student reused from an earlier trial (same pruning, "
                 "recovery and seed): no training run"]  # fmt: skip


def compress(
    model: nn.Module,
    config: CompressionConfig,
    artifact_path: str | os.PathLike[str],
    *,
    task: Task,
    train: Split | None,
    example_input: Inputs,
    facts: ModelFacts | None = None,
    teacher_outputs: Any = None,
    replay: Mapping[str, Any] | None = None,
    calibration_rows: int = 256,
    on_stage: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float, nn.Module], None] | None = None,
    distill_data: Any = None,
    corpus_teacher: Any = None,
    students: StudentCache | None = None,
) -> CompressedModel:
    """Apply ``config`` to a fresh copy of ``model`` and write its packed artifact.

    Args:
        model: The baseline (not modified).
        config: The trial's configuration.
        artifact_path: Where the packed model is written.
        task: The workload's task (losses for fine-tuning).
        train: The training split (fine-tuning, calibration).
        example_input: One batch of inputs.
        facts: The baseline's architecture facts (computed when not given).
        teacher_outputs: The teacher's outputs on the training split, for distillation
            (:class:`autocompress.training.TeacherOutputs`).
        replay: What each method decided in an earlier run, to reproduce it exactly.
        calibration_rows: Training examples used for calibration.
        on_stage: Called with the stage name as each stage starts.
        on_epoch: Called after each fine-tuning epoch with (epoch, mean loss, model); it may
            raise to stop a hopeless trial early.
        distill_data: Unlabeled inputs for distillation
            (:class:`~autocompress.corpus.DistillData`).
        corpus_teacher: The teacher's outputs on them
            (:class:`~autocompress.corpus.CorpusTeacher`), shared between trials.
        students: Where recovered students are kept: a stored one with this configuration's
            prune and train stages replaces running them (:mod:`autocompress.students`).

    Raises:
        TrialFailure: A method could not be applied (its name is in the message).
    """
    stage_hook = on_stage or (lambda _: None)
    facts = facts or model_facts(model, example_input)
    torch.manual_seed(config.seed)
    student = copy.deepcopy(model).eval()
    ctx = Context(
        task=task,
        example_input=example_input,
        train=train,
        facts=facts,
        config=config,
        teacher=model,
        calibration_rows=calibration_rows,
        replay=dict(replay or {}),
        seed=config.seed,
        on_epoch=on_epoch,
        teacher_outputs=teacher_outputs,
        distill_data=distill_data,
        corpus_teacher=corpus_teacher,
    )
    params_before = sum(p.numel() for p in student.parameters())
    stored = None if students is None else students.load(config)
    if stored is not None:
        _restore(student, stored, ctx)
    for stage in STAGES[:-1]:
        if stored is not None and stage in ("prune", "train"):
            continue
        stage_hook(stage)
        for name, method in config.stage(stage):
            _run_method(name, method, student, ctx)
        if stage == "train":
            bake(student)  # masks become zeros, quantization-aware roundings go
            if students is not None:
                students.save(config, Student(student.state_dict(), ctx.records, ctx.notes))
    student.eval()
    plan = {
        n: QuantSpec.from_list(s) for n, s in ctx.records.get("weights", {}).get("plan", {}).items()
    }
    metadata = {"kind": ARTIFACT_KIND, "config": config.to_dict(), "records": ctx.records}
    size = save_packed(
        artifact_path, student.state_dict(), plan=plan, scales=ctx.scales, metadata=metadata
    )
    bits = parameter_bits(student, plan)
    report = {
        "params": sum(p.numel() for p in student.parameters()),
        "params_baseline": params_before,
        "macs": count_macs(student, example_input),
        "sparsity": sparsity(student),
        "effective_bits": bits["effective_bits"],
        "float32_bytes": bits["float32_bytes"],
        "records": ctx.records,
        "notes": ctx.notes,
        "student_reused": stored is not None,
    }
    return CompressedModel(student, str(artifact_path), size, report)


def load_compressed(
    path: str | os.PathLike[str],
    baseline: nn.Module,
    example_input: Inputs,
    task: Task | None = None,
) -> tuple[nn.Module, CompressionConfig]:
    """Rebuild the compressed float model from a packed artifact and the baseline.

    The pruning the artifact records is replayed on a copy of the baseline (so every shape
    it produced, heads, depth, groups, is rebuilt), then the stored weights are loaded.

    Returns:
        The model and its configuration.

    Raises:
        ValueError: The file is not a packed autocompress model or does not fit ``baseline``.
    """
    state, metadata = load_packed(path)
    if metadata.get("kind") != ARTIFACT_KIND:
        raise ValueError(f"{path} is not an autocompress packed model")
    model = copy.deepcopy(baseline).eval()
    config = CompressionConfig.from_dict(metadata.get("config") or {"format": CONFIG_FORMAT})
    records = metadata.get("records") or {}
    if records:
        ctx = Context(
            task=task or Classification(),  # replaying the pruning reads no loss
            example_input=example_input,
            train=None,
            facts=model_facts(baseline, example_input),
            config=config,
            replay=records,
        )
        try:
            for name, method in config.stage("prune"):
                if name in records:
                    method.apply(model, ctx)
        except Exception as e:  # noqa: BLE001 - any mismatch means the file does not fit
            raise ValueError(f"{path} does not fit this model: {reason(e)}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None
    return model.eval(), config
