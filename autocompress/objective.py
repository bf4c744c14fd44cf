"""The objective: compress, fine-tune, quantize, deploy and measure one trial, and record it.

Latency: each trial times its deployed model interleaved with the baseline's (A B A B ...), and
the objective is ``ratio x baseline latency recorded at creation``: machine drift cancels out of
the ratio, so trials measured hours apart, or by different workers, stay comparable. The raw
median is recorded beside it.

A trial never takes the study down: whatever it raises (but an interrupt or an order to stop)
ends it FAILED with the exception's type and first line as its reason, and a method that has
failed :data:`FAILURES_BEFORE_WITHDRAWAL` times on this model is no longer offered.

A configuration that does not fine-tune and repeats a completed trial's exactly is not run
again (PRUNED, ``duplicate_of``); one that fine-tunes is first judged without fine-tuning
(:mod:`autocompress.fidelity`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autocompress.architecture import model_facts
from autocompress.corpus import CorpusTeacher, weights_sha256
from autocompress.data import Inputs, input_batches
from autocompress.deploy import Deployed
from autocompress.errors import AutocompressError, TrialFailure
from autocompress.errors import reason as failure_reason  # `reason` is a local name here
from autocompress.faults import machine_fault
from autocompress.fidelity import CheapResult, hopeless_reason
from autocompress.latency import LatencyResult, LatencySettings
from autocompress.measure import (
    deploy_for_target,
    measure_deployed,
    resident_memory_bytes,
    timing_input,
)
from autocompress.methods import METHODS
from autocompress.methods.structured import layer_widths
from autocompress.pipeline import CompressedModel, CompressionConfig, compress
from autocompress.record import (
    SENSITIVITY,
    allowed_worsening,
    budget_excess,
    limit_excess,
    metric_limit,
    objective_bytes,
    worsening,
)
from autocompress.settings import StudySettings, Target
from autocompress.students import StudentCache
from autocompress.training import TeacherOutputs
from autocompress.trial_notes import record_constraint, save_trial_note
from autocompress.workload import LoadedWorkload, finite

EARLY_STOP_MARGINS = (0.10, 0.03)  # x |baseline metric|: after the first epoch, after later ones
FAILURES_BEFORE_WITHDRAWAL = 2  # failures of one method after which it is no longer offered
CALIBRATION_ROWS = 256
TRIAL_LATENCY = LatencySettings(min_block_seconds=0.025, min_blocks=5, max_blocks=30, max_cv=0.1)


def _warm_imports() -> None:
    """Import once, before the first trial, what trials import lazily (optuna-dashboard for the
    notes, torch's compiler stack for the optimisers): seconds that belong to no trial."""
    import optuna_dashboard  # noqa: F401
    import torch._dynamo  # noqa: F401


def target_unavailable(target: Target) -> dict[str, str]:
    """Methods a target cannot run, with the reason."""
    from autocompress.deploy import int8_supported

    if target.device != "cpu":
        return {"int8": f"no int8 kernels are used on {target.device}"}
    if target.runtime == "torch" and not int8_supported():
        return {"int8": "this PyTorch build has no x86 int8 kernels"}
    return {}


def unavailable_methods(space: Any, facts: Any, target: Target) -> dict[str, str]:
    """The space's methods that cannot run on this model or target, with the reason.

    Raises:
        AutocompressError: None of the space's methods that change the model can run on it:
            every trial would be the uncompressed model (fine-tuned, at most).
    """
    unavailable = dict(target_unavailable(target))
    for name in space.methods:
        reason = METHODS[name].unavailable(facts)
        if reason:
            unavailable[name] = reason
    acting = [m for m in space.methods if METHODS[m].stage != "train"]
    if acting and all(m in unavailable for m in acting):
        why = "; ".join(f"{m}: {unavailable[m]}" for m in acting)
        raise AutocompressError(
            f"none of the search space's methods applies to this model ({why}): every trial "
            "would be the uncompressed model; add a method that applies, e.g. structured, "
            "unstructured, weights or int8"
        )
    return unavailable


def method_failures(study: optuna.Study) -> dict[str, int]:
    """Failed trials of ``study`` by the method that failed."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        method = t.user_attrs.get("failed_method")
        if method is None and str(t.user_attrs.get("fail_reason", "")).startswith(
            "structured pruning failed"
        ):
            method = "structured"  # recorded by earlier versions
        if method:
            counts[method] = counts.get(method, 0) + 1
    return counts


def withdrawn_methods(study: optuna.Study) -> dict[str, str]:
    """Methods no longer offered because they kept failing on this model."""
    return {
        name: f"failed {count} times on this model"
        for name, count in method_failures(study).items()
        if count >= FAILURES_BEFORE_WITHDRAWAL
    }


def deterministic_twin(study: optuna.Study, config: CompressionConfig) -> int | None:
    """A completed trial with exactly ``config``'s methods, when ``config`` does not fine-tune
    (so running it again would give the same model, metric and size, and only timing noise).
    Samplers do propose exact repeats (TPE on categorical choices); they are not run twice."""
    finetune = config.get("finetune")
    if getattr(finetune, "epochs", 0) > 0:
        return None
    methods = json.loads(json.dumps(config.to_dict()["methods"]))  # as the storage keeps it
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (t.user_attrs.get("config") or {}).get("methods") == methods:
            return t.number
    return None


class Objective:
    """Compress, fine-tune, quantize, deploy and measure one trial; record everything on it.

    Work done once per process, not per trial: the baseline's architecture facts, its
    deployed form, the teacher's outputs (for distillation) and calibration batches.
    """

    def __init__(
        self,
        workload: LoadedWorkload,
        settings: StudySettings,
        info: dict[str, Any],
        artifact_dir: Path,
        reporter: Any | None = None,
    ) -> None:
        self.workload = workload
        self.settings = settings
        self.info = info
        self.space = settings.space()
        self.artifact_dir = Path(artifact_dir)
        self.reporter = reporter
        self.facts = model_facts(workload.model, workload.example_input)
        self.latency = replace(TRIAL_LATENCY, threads=settings.target.threads)
        self.unavailable = unavailable_methods(self.space, self.facts, settings.target)
        _warm_imports()
        self._teacher: TeacherOutputs | None = None
        self._calibration: list[Inputs] | None = None
        self._baseline_deployed: Deployed | None = None
        self._widths: dict[str, int] | None = None
        self._students: StudentCache | None = None
        self._corpus_teacher: CorpusTeacher | None = None

    @property
    def students(self) -> StudentCache:
        """Recovered students of this study, kept so that trials differing only in
        quantization or runtime settings reuse them (:mod:`autocompress.students`)."""
        if self._students is None:
            data = self.workload.distill_data
            self._students = StudentCache(
                self.artifact_dir / "students",
                {
                    "baseline": weights_sha256(self.workload.model),
                    "distill_data": None if data is None else data.key,
                    "calibration_rows": CALIBRATION_ROWS,
                },
            )
        return self._students

    @property
    def corpus_teacher(self) -> CorpusTeacher | None:
        """The baseline's outputs on the workload's distillation data (filled as used)."""
        data = self.workload.distill_data
        if self._corpus_teacher is None and data is not None:
            self._corpus_teacher = CorpusTeacher(self.workload.model, data)
        return self._corpus_teacher

    @property
    def teacher(self) -> TeacherOutputs:
        """The baseline's outputs on the training split (cached when they fit)."""
        if self._teacher is None:
            self._teacher = TeacherOutputs(self.workload.model, self.workload.train)
        return self._teacher

    @property
    def calibration(self) -> list[Inputs]:
        """Calibration batches from the training split (int8)."""
        if self._calibration is None:
            self._calibration = input_batches(self.workload.train, CALIBRATION_ROWS)
        return self._calibration

    @property
    def baseline_deployed(self) -> Deployed:
        """The baseline in its deployed form on the target, built once per process."""
        if self._baseline_deployed is None:
            self._baseline_deployed = deploy_for_target(
                self.workload, self.workload.model, self.artifact_dir / "baseline",
                self.settings.target,
            )  # fmt: skip
        return self._baseline_deployed

    def _stage(self, name: str) -> None:
        if self.reporter is not None:
            self.reporter.stage(name)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        withdrawn = withdrawn_methods(trial.study)
        offered = [m for m in self.space.methods if m not in self.unavailable]
        gone = sorted(m for m in withdrawn if m in offered)
        if gone:
            trial.set_user_attr(
                "note", "no longer offered (kept failing on this model): " + ", ".join(gone)
            )
        config = self.space.suggest(
            trial,
            self.facts,
            seed=self.settings.seed + trial.number,
            unavailable={**self.unavailable, **withdrawn},
            runtime=self.settings.target.runtime,
            profile=self.info.get(SENSITIVITY),
        )
        reseeded = self.students.seed_for(config)
        if reseeded.seed != config.seed:
            trial.set_user_attr("student_seed", reseeded.seed)
            config = reseeded
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("summary", config.describe())
        twin = deterministic_twin(trial.study, config)
        if twin is not None:
            reason = (
                f"same configuration as trial {twin}, and without fine-tuning nothing in it is "
                "random: not run again"
            )
            trial.set_user_attr("duplicate_of", twin)
            trial.set_user_attr("stopped_reason", reason)
            raise optuna.TrialPruned(reason)
        if self.reporter is not None:
            self.reporter.trial_started(trial.number, config)
        try:
            return self._run(trial, config)
        except optuna.TrialPruned:
            raise
        except TrialFailure as e:
            self._record_failure(trial, str(e), e.method)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever a user's model raises
            if machine_fault(e) is not None:
                raise  # a full disk is not the trial's fault: the trial loop stops the run
            # SystemExit too: a model that calls exit() fails its trial, not the whole study.
            reason = failure_reason(e)
            if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
                reason = f"out of memory: {reason}"
            self._record_failure(trial, reason, getattr(e, "method", None))
            raise TrialFailure(reason) from e

    @staticmethod
    def _record_failure(trial: optuna.Trial, reason: str, method: str | None) -> None:
        trial.set_user_attr("fail_reason", reason[:2000])
        if method:
            trial.set_user_attr("failed_method", method)

    def _stop_if_hopeless(self, trial: optuna.Trial, epoch: int, model: torch.nn.Module) -> None:
        """End a trial whose validation metric cannot plausibly come back within the budget.

        Multi-objective studies cannot use Optuna's pruners (``trial.report`` raises), so the
        check is ours: after the first epoch the model as fine-tuning sees it must be within
        ``EARLY_STOP_MARGINS[0] x |baseline metric|`` of the worst feasible metric, and within
        ``EARLY_STOP_MARGINS[1] x |baseline metric|`` at later epochs. The trial ends PRUNED.
        """
        margin = EARLY_STOP_MARGINS[0] if epoch == 1 else EARLY_STOP_MARGINS[1]
        margin *= abs(float(self.info["baseline"]["metric"]))
        value = self.workload.evaluate(model, "val")
        allowed = allowed_worsening(self.info)
        worse = worsening(self.info, value)
        if not finite(value) or worse > allowed + margin:
            limit = metric_limit(self.info)
            reason = (
                f"stopped early after epoch {epoch}: validation {self.info['task']['metric']} "
                f"{value:.4f} is more than {margin:.4g} beyond the budget's limit {limit:.4f}"
            )
            trial.set_user_attr("partial_metric", value if finite(value) else None)
            trial.set_user_attr("stopped_reason", reason)
            raise optuna.TrialPruned(reason)

    def _compress_and_measure(
        self, config: CompressionConfig, stem: Path, *, test: bool, **compress_kw: Any
    ) -> _Measured:
        """The one path of both fidelities: compress (artifact ``stem.acpk``), deploy on the
        target (``stem``), then the validation metric (and test's when ``test``), latency
        against the baseline, and the size the study optimises."""
        wl, target = self.workload, self.settings.target
        compressed = compress(
            wl.model,
            config,
            stem.parent / f"{stem.name}.acpk",
            task=wl.task,
            train=wl.train,
            example_input=wl.example_input,
            facts=self.facts,
            calibration_rows=CALIBRATION_ROWS,
            on_stage=self._stage,
            **compress_kw,
        )
        self._stage("measure")
        int8 = config.get("int8")
        deployed = deploy_for_target(
            wl,
            compressed.model,
            stem,
            target,
            int8=int8,
            weights=config.get("weights"),
            calibration=self.calibration if int8 is not None else None,
            runtime=config.get("runtime"),
        )
        measured = measure_deployed(
            wl, deployed, target, self.baseline_deployed, self.latency, test=test
        )
        size = objective_bytes(
            self.info["size"], packed=compressed.size_bytes, deployed=deployed.size_bytes
        )
        return _Measured(
            compressed, deployed, measured["metric"], measured["test_metric"],
            measured["latency"], size,
        )  # fmt: skip

    def _cheap_first(self, trial: optuna.Trial, config: CompressionConfig) -> None:
        """Measure the candidate without fine-tuning; stop it (PRUNED, ``fidelity: cheap``)
        when fine-tuning could not bring it onto the front (:mod:`autocompress.fidelity`)."""
        started = time.perf_counter()
        self._stage("cheap")
        cheap_config = config.without("finetune", "distillation")
        with tempfile.TemporaryDirectory(dir=self.artifact_dir) as tmp:
            m = self._compress_and_measure(cheap_config, Path(tmp) / "cheap", test=False)
        value = m.value
        cheap = CheapResult(
            worsening=worsening(self.info, value) if finite(value) else math.inf,
            latency_ms=m.latency_ratio * float(self.info["baseline"]["latency_ms"]),
            size_kb=m.size_bytes / 1000,
        )
        trial.set_user_attr("cheap_metric", value if finite(value) else None)
        trial.set_user_attr("cheap_worsening", cheap.worsening if finite(value) else None)
        trial.set_user_attr("cheap_latency_ms", cheap.latency_ms)
        trial.set_user_attr("cheap_size_kb", cheap.size_kb)
        trial.set_user_attr("cheap_seconds", time.perf_counter() - started)
        reason = hopeless_reason(
            cheap,
            trial.study.get_trials(deepcopy=False),
            allowed_worsening(self.info),
            str(self.info["task"]["metric"]),
        )
        if reason is not None:
            trial.set_user_attr("fidelity", "cheap")
            trial.set_user_attr("partial_metric", value if finite(value) else None)
            trial.set_user_attr("stopped_reason", reason)
            raise optuna.TrialPruned(reason)

    def _run(self, trial: optuna.Trial, config: CompressionConfig) -> tuple[float, float, float]:
        wl, target = self.workload, self.settings.target
        started = time.perf_counter()
        finetune = config.get("finetune")
        epochs = getattr(finetune, "epochs", 0)

        if self.settings.cheap_first and epochs > 0:
            self._cheap_first(trial, config)

        def on_epoch(epoch: int, loss: float, model: torch.nn.Module) -> None:
            if self.reporter is not None:
                self.reporter.epoch(epoch, epochs, loss)
            if self.settings.early_stop and epoch < epochs:
                self._stop_if_hopeless(trial, epoch, model)

        m = self._compress_and_measure(
            config,
            self.artifact_dir / f"trial-{trial.number}",
            test=True,
            teacher_outputs=self.teacher if config.get("distillation") else None,
            on_epoch=on_epoch,
            distill_data=wl.distill_data,
            corpus_teacher=self.corpus_teacher if config.get("distillation") else None,
            students=self.students,
        )
        compressed, deployed = m.compressed, m.deployed
        trial.set_user_attr("summary", summary_of_what_ran(config, deployed))
        value, test_value, lat, size_bytes = m.value, m.test_value, m.latency, m.size_bytes
        if not finite(value):
            raise TrialFailure(
                f"the validation {self.info['task']['metric']} is {value} (the compressed model's "
                "outputs are NaN or infinite)"
            )
        latency_ms = m.latency_ratio * float(self.info["baseline"]["latency_ms"])
        worse = worsening(self.info, value)
        record_constraint(trial, "metric_budget", budget_excess(self.info, value))
        memory_mb = None
        if self.settings.max_memory_mb is not None:
            resident = resident_memory_bytes(
                deployed.path, timing_input(wl, target.batch_size), target.threads
            )
            if resident is None:
                raise TrialFailure(
                    "the resident memory of the deployed model could not be measured (the probe "
                    "process failed); --max-memory-mb needs it"
                )
            memory_mb = resident / 1e6
            trial.set_user_attr("resident_memory_bytes", resident)
        measured_limits = {"latency_ms": latency_ms, "size_kb": size_bytes / 1000}
        for key, excess in limit_excess(
            self.info, {**measured_limits, "memory_mb": memory_mb}
        ).items():
            record_constraint(trial, key, excess)
        report = compressed.report
        notes = list(report["notes"]) + list(deployed.notes) + _runtime_notes(config, deployed)
        attrs = {
            "test_metric": test_value if test_value is not None and finite(test_value) else None,
            "worsening": worse,
            "latency_ratio": lat.ratio_to_reference,
            "latency_measured_ms": lat.median_ms,
            "latency_p90_ms": lat.p90_ms,
            "latency_cv": lat.cv,
            "latency_stable": lat.stable,
            "latency_contended": lat.contended,
            "packed_bytes": compressed.size_bytes,
            "deployed_kind": deployed.kind,
            "deployed_bytes": deployed.size_bytes,
            "params": report["params"],
            "macs": report["macs"],
            "sparsity": report["sparsity"],
            "effective_bits": report["effective_bits"],
            "float32_bytes": report["float32_bytes"],
            "records": report["records"],
            "notes": notes,
            "artifact": compressed.artifact_path,
            "fidelity": "full",
            "student_reused": report["student_reused"],
            "seconds": time.perf_counter() - started,
        }
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        values = (value, latency_ms, size_bytes / 1000)
        if self._widths is None:
            self._widths = layer_widths(wl.model, self.facts.layers)
        save_trial_note(trial, values, self.info, self._widths)
        return values


def summary_of_what_ran(config: CompressionConfig, deployed: Deployed) -> str:
    """The configuration's summary, with the int8 mode that ran where the runtime fell back
    from the one asked (e.g. ``int8 dynamic rr (static fell back)``)."""
    int8: Any = config.get("int8")
    ran = deployed.int8_mode
    if int8 is None or ran is None or ran == int8.mode:
        return config.describe()
    label = f"{replace(int8, mode=ran).describe()} ({int8.mode} fell back)"
    return config.describe().replace(int8.describe(), label)


@dataclass(frozen=True)
class _Measured:
    """What :meth:`Objective._compress_and_measure` measured of one configuration."""

    compressed: CompressedModel
    deployed: Deployed
    value: float
    test_value: float | None
    latency: LatencyResult
    size_bytes: int

    @property
    def latency_ratio(self) -> float:
        """Latency as a ratio to the baseline's, timed interleaved (infinite if untimed)."""
        ratio = self.latency.ratio_to_reference
        return math.inf if ratio is None else ratio


def _runtime_notes(config: CompressionConfig, deployed: Deployed) -> list[str]:
    """What the deployed form does with low-bit weights."""
    weights = config.get("weights")
    if weights is None or config.get("int8") is not None:
        return []
    bits = getattr(weights, "bits", 32)
    if bits < 16 and not deployed.low_bit_weights:
        return [f"{bits}-bit weights run as float on {deployed.kind}: smaller artifact, not faster"]
    return []
