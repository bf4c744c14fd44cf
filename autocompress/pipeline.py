"""One trial's compression: prune -> fine-tune (with distillation) -> quantize -> packed artifact.

The order is fixed: pruning first so fine-tuning recovers from it, quantization last so the
stored k-bit weights are exactly the ones evaluated. Every trial starts from a fresh copy of
the baseline.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.artifact import load_packed, save_packed
from autocompress.steps.finetune import DistillConfig, FinetuneConfig, finetune
from autocompress.steps.prune import PruneConfig, finalize_pruning, prune_model, sparsity
from autocompress.steps.qat import fake_quantized_weights
from autocompress.steps.quantize import (
    QuantizeConfig,
    effective_bits,
    int8_from_ranges,
    quantize_weights_,
    to_int8,
    weight_bit_plan,
)
from autocompress.workload import Workload

ARTIFACT_KIND = "autocompress.packed-model"


@dataclass(frozen=True)
class CompressionConfig:
    """Everything one trial does to the baseline, in order."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig | None = None
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-ready form."""
        return {
            "prune": asdict(self.prune),
            "finetune": asdict(self.finetune),
            "distill": asdict(self.distill) if self.distill else None,
            "quantize": asdict(self.quantize),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressionConfig:
        """Inverse of :meth:`to_dict` (the step configs re-validate their values)."""
        return cls(
            prune=PruneConfig(**d["prune"]),
            finetune=FinetuneConfig(**d["finetune"]),
            distill=DistillConfig(**d["distill"]) if d.get("distill") else None,
            quantize=QuantizeConfig(**d["quantize"]),
            seed=int(d.get("seed", 0)),
        )

    def describe(self) -> str:
        """A short human summary, e.g. ``structured 50% | 4-bit w, int8 act | ft 2ep + KD``."""
        parts = []
        p, q, f = self.prune, self.quantize, self.finetune
        parts.append("no pruning" if p.method == "none" else f"{p.method} {p.amount:.0%}")
        bits = (
            "fp32"
            if q.weight_bits == 32
            else "fp16"
            if q.weight_bits == 16
            else (f"{q.weight_bits}-bit {q.granularity.replace('_', '-')}")
        )
        if q.weight_bits < 8 and not q.keep_edges_8bit and not q.layer_bits:
            bits += " all layers"
        parts.append(bits + (" + int8 act" if q.int8_activations else ""))
        if f.epochs:
            kd = (
                f" + KD T={self.distill.temperature:.1f} a={self.distill.alpha:.2f}"
                if (self.distill)
                else ""
            )
            qat = " QAT" if f.quant_aware and q.weight_bits < 32 else ""
            parts.append(f"ft {f.epochs}ep{qat} {f.optimizer} lr={f.lr:.1e} {f.schedule}{kd}")
        else:
            parts.append("no ft")
        return " | ".join(parts)


@dataclass
class CompressedModel:
    """The result of :func:`compress`.

    Attributes:
        model: The float model after pruning, fine-tuning and weight rounding.
        deployable: The form that is deployed and measured (int8 module or ``model``).
        artifact_path: The packed artifact on disk.
        size_bytes: Its size on disk.
        report: Facts for the trial's record (params, MACs, sparsity, effective bits, notes).
    """

    model: nn.Module
    deployable: nn.Module
    artifact_path: str
    size_bytes: int
    report: dict[str, Any]


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``example_input`` (torch-pruning's counter)."""
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs=example_input)
    return int(macs)


def save_baseline_artifact(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """The uncompressed model in the same packed format (fp32), for a like-for-like size."""
    return save_packed(path, model.state_dict(), weight_bits={}, metadata={"kind": ARTIFACT_KIND})


def compress(
    workload: Workload,
    config: CompressionConfig,
    artifact_path: str | os.PathLike[str],
    *,
    teacher_logits: torch.Tensor | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float, nn.Module], None] | None = None,
) -> CompressedModel:
    """Apply ``config`` to a fresh copy of the workload's baseline and write its artifact.

    Args:
        workload: Baseline and data.
        config: The trial's configuration.
        artifact_path: Where the packed model is written.
        teacher_logits: The baseline's logits on the training split (computed once, reused).
        on_stage: Called with the stage name as each stage starts.
        on_epoch: Called after each fine-tuning epoch with (epoch, mean loss, model); it may
            raise to stop a hopeless trial early.

    Raises:
        TrialFailure: A step could not be applied (untraceable model, NaN loss, ...).
    """
    stage = on_stage or (lambda _: None)
    example = workload.example_input
    torch.manual_seed(config.seed)
    model = copy.deepcopy(workload.model).eval()
    notes: list[str] = []

    stage("prune")
    prune_report = prune_model(model, config.prune, example)
    if config.prune.method == "unstructured" and config.prune.amount > 0:
        notes.append("unstructured sparsity: smaller artifact, no speed-up on dense kernels")

    stage("finetune")
    if config.distill is not None and teacher_logits is None:
        teacher_logits = torch.cat(
            [workload.model(xb) for xb, _ in workload.train.batches(512)]
        ).detach()
    plan = weight_bit_plan(model, config.quantize)
    quant_aware = config.finetune.quant_aware and config.finetune.epochs > 0
    with (
        fake_quantized_weights(model, plan, config.quantize.granularity)
        if quant_aware and any(bits < 32 for bits in plan.values())
        else contextlib.nullcontext()
    ):
        finetune(
            model,
            workload.train,
            config.finetune,
            distill=config.distill,
            teacher_logits=teacher_logits,
            seed=config.seed,
            on_epoch=None if on_epoch is None else lambda e, loss: on_epoch(e, loss, model),
        )
    finalize_pruning(model)
    model.eval()

    stage("quantize")
    quantize_weights_(model, plan, config.quantize.granularity)
    deployable: nn.Module = model
    ranges: dict[str, list[float]] = {}
    if config.quantize.int8_activations:
        calib = workload.train.x[: config.quantize.calibration_size]
        deployable, ranges = to_int8(model, example, calib, config.quantize.granularity)
    elif config.quantize.weight_bits < 32:
        notes.append(
            f"{config.quantize.weight_bits}-bit weights run as float32: smaller, not faster"
        )

    metadata = {
        "kind": ARTIFACT_KIND,
        "config": config.to_dict(),
        "int8_activation_ranges": ranges,
    }
    size = save_packed(
        artifact_path,
        model.state_dict(),
        weight_bits=plan,
        granularity=config.quantize.granularity,
        metadata=metadata,
    )
    report = {
        "params": sum(p.numel() for p in model.parameters()),
        "params_baseline": prune_report["params_before"],
        "macs": count_macs(model, example),
        "sparsity": sparsity(model),
        "effective_bits": effective_bits(model, plan),
        "channels": prune_report.get("channels"),
        "pruning_history": prune_report.get("history"),
        "notes": notes,
    }
    return CompressedModel(model, deployable, str(artifact_path), size, report)


def _resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give conv/linear/batch-norm layers the (pruned) shapes found in ``state``."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            module.out_channels = weight.shape[0]
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.LayerNorm):
            if isinstance(module, nn.LayerNorm):
                module.normalized_shape = tuple(weight.shape)
            else:
                module.num_features = weight.shape[0]
        for key, _ in module.named_parameters(recurse=False):
            if prefix + key in state:
                setattr(module, key, nn.Parameter(torch.empty_like(state[prefix + key])))
        for key, value in module.named_buffers(recurse=False):
            if prefix + key in state and value is not None:
                setattr(module, key, torch.empty_like(state[prefix + key]))


def load_compressed(
    path: str | os.PathLike[str], baseline: nn.Module, example_input: torch.Tensor
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the deployable model from a packed artifact and the baseline's architecture.

    Returns:
        The deployable module (int8 when the artifact has activation ranges) and the metadata.

    Raises:
        ValueError: The file is not a packed autocompress model or does not fit ``baseline``.
    """
    state, metadata = load_packed(path)
    if metadata.get("kind") != ARTIFACT_KIND:
        raise ValueError(f"{path} is not an autocompress packed model")
    model = copy.deepcopy(baseline).eval()
    _resize_to(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None
    ranges = metadata.get("int8_activation_ranges") or {}
    if ranges:
        granularity = metadata["config"]["quantize"]["granularity"]
        return int8_from_ranges(model, example_input, granularity, ranges), metadata
    return model, metadata
