"""The objective: compress, fine-tune, quantize and measure one trial, and record it.

Latency: each trial times its deployed model interleaved with the baseline's (A B A B ...), and
the objective is ``ratio x baseline latency recorded at creation``: machine drift cancels out of
the ratio, so trials measured hours apart, or by different workers, stay comparable. The raw
median is recorded beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from autocompress.dashboard import record_constraint, save_trial_note
from autocompress.data import predict_logits
from autocompress.deploy import Deployed
from autocompress.errors import TrialFailure
from autocompress.latency import LatencySettings
from autocompress.measure import deploy_for_target, measure_trial
from autocompress.pipeline import CompressionConfig, compress
from autocompress.settings import StudySettings, Target
from autocompress.steps.prune import output_layers, prunable_layers
from autocompress.steps.quantize import int8_supported, weight_bit_plan
from autocompress.workers import structured_failures
from autocompress.workload import Workload

EARLY_STOP_MARGINS = (0.10, 0.03)  # after the first epoch, after later ones
STRUCTURED_FAILURES_LIMIT = 2  # structured-pruning failures after which it is no longer offered
TRIAL_LATENCY = LatencySettings(min_block_seconds=0.025, min_blocks=5, max_blocks=30, max_cv=0.1)


def _int8_on(target: Target) -> bool:
    """Whether the target has real int8 kernels: ORT's QDQ on CPU, or PyTorch's x86 ones."""
    if target.runtime == "onnxruntime":
        return target.device == "cpu"
    return target.device == "cpu" and int8_supported()


class Objective:
    """Compress, fine-tune, quantize and measure one trial; record everything on it.

    Work done once per process, not per trial: loading the data, the baseline, the teacher's
    logits on the training split (for distillation).
    """

    def __init__(
        self,
        workload: Workload,
        settings: StudySettings,
        baseline: dict[str, Any],
        artifact_dir: Path,
        reporter: Any | None = None,
    ) -> None:
        self.workload = workload
        self.settings = settings
        self.space = settings.space()
        self.baseline = baseline
        self.artifact_dir = artifact_dir
        self.reporter = reporter
        self._teacher_logits: torch.Tensor | None = None
        self._baseline_deployed: Deployed | None = None
        self.latency = replace(TRIAL_LATENCY, threads=settings.target.threads)
        kept_whole = output_layers(workload.model, workload.example_input)
        self.layers = [name for name, _ in prunable_layers(workload.model)]
        self.prunable = [n for n, m in prunable_layers(workload.model) if m not in kept_whole]

    @property
    def teacher_logits(self) -> torch.Tensor:
        """The baseline's logits on the training split, computed on first use."""
        if self._teacher_logits is None:
            self._teacher_logits = predict_logits(self.workload.model, self.workload.train.x)
        return self._teacher_logits

    @property
    def baseline_deployed(self) -> Deployed:
        """The baseline in its deployed form on the target, built once per process."""
        if self._baseline_deployed is None:
            self._baseline_deployed = deploy_for_target(
                self.workload,
                self.workload.model,
                self.artifact_dir / "baseline",
                self.settings.target,
            )
        return self._baseline_deployed

    def _stage(self, name: str) -> None:
        if self.reporter is not None:
            self.reporter.stage(name)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        space = self.space
        if structured_failures(trial.study) >= STRUCTURED_FAILURES_LIMIT:
            # torch-pruning cannot handle this model: stop spending trials on it.
            space = space.without_choice("pruning.method", "structured")
            if space is not self.space:
                trial.set_user_attr("note", "structured pruning disabled: failed on this model")
        config = space.suggest(
            trial,
            int8_activations_supported=_int8_on(self.settings.target),
            seed=self.settings.seed + trial.number,
            layers=self.layers,
            prunable=self.prunable,
        )
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("summary", config.describe())
        if self.reporter is not None:
            self.reporter.trial_started(trial.number, config)
        try:
            return self._run(trial, config)
        except TrialFailure as e:
            trial.set_user_attr("fail_reason", str(e))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except (RuntimeError, ValueError, MemoryError) as e:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
                reason = f"out of memory: {reason}"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailure(reason) from e

    def _stop_if_hopeless(self, trial: optuna.Trial, epoch: int, model: torch.nn.Module) -> None:
        """End a trial whose validation accuracy cannot plausibly reach the budget.

        Multi-objective studies cannot use Optuna's pruners (``trial.report`` raises), so the
        check is ours: after the first epoch the model as fine-tuning sees it (float, or
        rounded to its grid under quantization-aware fine-tuning) must be within
        ``EARLY_STOP_MARGINS[0]`` of the lowest feasible accuracy, and within
        ``EARLY_STOP_MARGINS[1]`` at later epochs. The trial ends PRUNED with its reason.
        """
        floor = self.baseline["accuracy"] - self.settings.max_accuracy_drop
        margin = EARLY_STOP_MARGINS[0] if epoch == 1 else EARLY_STOP_MARGINS[1]
        accuracy = self.workload.evaluate(model, "val")
        if accuracy < floor - margin:
            reason = (
                f"stopped early after epoch {epoch}: validation accuracy {accuracy:.4f} is more "
                f"than {margin:.2f} below the lowest feasible accuracy {floor:.4f}"
            )
            trial.set_user_attr("partial_accuracy", accuracy)
            trial.set_user_attr("stopped_reason", reason)
            raise optuna.TrialPruned(reason)

    def _run(self, trial: optuna.Trial, config: CompressionConfig) -> tuple[float, float, float]:
        wl, target = self.workload, self.settings.target
        started = time.perf_counter()
        epochs = config.finetune.epochs

        def on_epoch(epoch: int, loss: float, model: torch.nn.Module) -> None:
            if self.reporter is not None:
                self.reporter.epoch(epoch, epochs, loss)
            if self.settings.early_stop and epoch < epochs:
                self._stop_if_hopeless(trial, epoch, model)

        compressed = compress(
            wl,
            config,
            self.artifact_dir / f"trial-{trial.number}.acpk",
            teacher_logits=self.teacher_logits if config.distill else None,
            on_stage=self._stage,
            on_epoch=on_epoch,
        )
        self._stage("measure")
        deployed, measured = measure_trial(
            wl,
            compressed,
            config,
            target,
            self.baseline_deployed,
            self.artifact_dir / f"trial-{trial.number}",
            self.latency,
        )
        accuracy, test_accuracy, lat = (
            measured["accuracy"],
            measured["test_accuracy"],
            measured["latency"],
        )
        latency_ms = lat.ratio_to_reference * self.baseline["latency_ms"]
        size_kb = compressed.size_bytes / 1000
        drop = self.baseline["accuracy"] - accuracy
        record_constraint(trial, "accuracy_drop", drop - self.settings.max_accuracy_drop)
        report = compressed.report
        attrs = {
            "test_accuracy": test_accuracy,
            "accuracy_drop": drop,
            "latency_ratio": lat.ratio_to_reference,
            "latency_measured_ms": lat.median_ms,
            "latency_p90_ms": lat.p90_ms,
            "latency_cv": lat.cv,
            "latency_stable": lat.stable,
            "latency_contended": lat.contended,
            "size_bytes": compressed.size_bytes,
            "deployed_kind": deployed.kind,
            "deployed_bytes": deployed.size_bytes,
            "compression_ratio": self.baseline["size_bytes"] / compressed.size_bytes,
            "params": report["params"],
            "macs": report["macs"],
            "sparsity": report["sparsity"],
            "effective_bits": report["effective_bits"],
            "channels": report["channels"],
            "weight_bits": weight_bit_plan(compressed.model, config.quantize),
            "notes": report["notes"],
            "artifact": compressed.artifact_path,
            "seconds": time.perf_counter() - started,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if report.get("pruning_history"):
            trial.set_user_attr("pruning_history", report["pruning_history"])
        if not math.isfinite(accuracy):
            raise TrialFailure("validation accuracy is not finite")
        values = (accuracy, latency_ms, size_kb)
        save_trial_note(trial, values, self.baseline, self.settings.max_accuracy_drop, wl.model)
        return values
