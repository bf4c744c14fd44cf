"""The Optuna study: storage, baseline, the objective, constraints and what each trial records.

Objectives, in order: maximize validation accuracy, minimize latency (ms of one batch of the
deployed form on the target), minimize size (KB of the packed artifact on disk). The accuracy
budget is a hard constraint (``trial.set_constraint``). The baseline is measured once, when the
study is created, and stored with it.

Latency: each trial times its deployed model interleaved with the baseline's (A B A B ...), and
the objective is ``ratio x baseline latency recorded at creation``: machine drift cancels out of
the ratio, so trials measured hours apart, or by different workers, stay comparable. The raw
median is recorded beside it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

from autocompress import __version__
from autocompress.dashboard import record_constraint, save_trial_note
from autocompress.data import predict_logits
from autocompress.deploy import RUNTIMES, Deployed, onnxruntime_available
from autocompress.errors import AutocompressError, StorageError, TrialFailure
from autocompress.hardware import hardware_fingerprint
from autocompress.latency import LatencySettings, measure_latency
from autocompress.measure import deploy_for_target, eager_latency_ms, evaluate, measure_trial
from autocompress.pipeline import CompressionConfig, compress, save_baseline_artifact
from autocompress.search_space import SearchSpace, parse_search_space_text
from autocompress.steps.prune import output_layers, prunable_layers
from autocompress.steps.quantize import int8_supported, weight_bit_plan
from autocompress.workers import failure_reasons, structured_failures
from autocompress.workload import Workload, load_workload

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = f"sqlite:///{STUDIES_DIR / 'autocompress.db'}"
METRIC_NAMES = ["accuracy", "latency_ms", "size_kb"]
DIRECTIONS = ["maximize", "minimize", "minimize"]
SAMPLERS = ("tpe", "nsga2", "random", "gp")
ATTR = "autocompress"  # the study user attribute holding settings, baseline and hardware
EARLY_STOP_MARGINS = (0.10, 0.03)  # after the first epoch, after later ones
HEARTBEAT_ENV = "AUTOCOMPRESS_HEARTBEAT_INTERVAL"  # seconds between a running trial's heartbeats
GRACE_ENV = "AUTOCOMPRESS_GRACE_PERIOD"  # seconds without a heartbeat before a trial is failed
STRUCTURED_FAILURES_LIMIT = 2  # structured-pruning failures after which it is no longer offered
TRIAL_LATENCY = LatencySettings(min_block_seconds=0.025, min_blocks=5, max_blocks=30, max_cv=0.1)


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


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AutocompressError(f"{name}={raw!r}: use a whole number of seconds") from None
    if value < 1:
        raise AutocompressError(f"{name}={raw!r}: use 1 second or more")
    return value


def open_storage(url: str = DEFAULT_STORAGE) -> optuna.storages.RDBStorage:
    """An RDB storage on ``url`` (SQLite file, PostgreSQL, MySQL), with heartbeats.

    A worker that dies mid-trial stops its heartbeat; the trial is then marked FAILED and
    retried once by another worker (Optuna's ``RetryHeartbeatStaleTrialCallback``). The
    heartbeat interval (30 s) and grace period (90 s) can be changed with the environment
    variables ``AUTOCOMPRESS_HEARTBEAT_INTERVAL`` and ``AUTOCOMPRESS_GRACE_PERIOD``.

    Raises:
        StorageError: The URL is malformed or the database cannot be reached.
    """
    heartbeat_interval = _env_seconds(HEARTBEAT_ENV, 30)
    grace_period = _env_seconds(GRACE_ENV, max(90, 3 * heartbeat_interval))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        # Several local processes share one file: wait for locks instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            # Heartbeats and retries are marked experimental; they are what we rely on.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1
                ),
            )
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise StorageError(
            f"storage URL {url!r} is not valid ({str(e).splitlines()[0]}); "
            "use e.g. sqlite:///studies/autocompress.db or postgresql://user@host/db"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", e) or e).strip().splitlines()[0]
        raise StorageError(f"cannot reach storage {url!r}: {reason}") from None
    except ImportError as e:
        driver = getattr(e.__cause__, "name", None) or e.name
        raise StorageError(
            f"storage {url!r} needs a database driver that is not installed ({driver}); "
            "pip install 'autocompress[postgres]' or 'autocompress[mysql]'"
        ) from None


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers by short name."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=8
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    return optuna.samplers.RandomSampler(seed=seed)


def study_info(study: optuna.Study) -> dict[str, Any]:
    """The settings, baseline and hardware stored with an autocompress study."""
    info = study.user_attrs.get(ATTR)
    if info is None:
        raise StorageError(f"study {study.study_name!r} was not created by autocompress")
    return info


def load_study(name: str, storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    """Load an existing autocompress study.

    Raises:
        StorageError: No study of that name exists there (the message lists those that do).
    """
    if isinstance(storage, str):
        storage = open_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        known = ", ".join(names) if names else "none"
        raise StorageError(
            f"no study named {name!r} in this storage (studies there: {known}); "
            "start one with `autocompress study run --study NAME`"
        ) from None
    study_info(study)
    return study


def measure_baseline(workload: Workload, target: Target, artifact_dir: Path) -> dict[str, Any]:
    """Accuracy, latency and size of the uncompressed model, deployed and measured like a trial."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    size = save_baseline_artifact(workload.model, artifact_dir / "baseline.acpk")
    deployed = deploy_for_target(workload, workload.model, artifact_dir / "baseline", target)
    x = workload.val.x[: target.batch_size].to(deployed.device)
    settings = replace(TRIAL_LATENCY, threads=target.threads)
    lat = measure_latency(lambda: deployed.run(x), settings, synchronize=deployed.synchronize())
    return {
        "accuracy": evaluate(workload, deployed, "val"),
        "test_accuracy": evaluate(workload, deployed, "test"),
        "latency_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
        "latency_cv": lat.cv,
        "latency_eager_ms": eager_latency_ms(workload.model, x.cpu(), settings),
        "deployed_kind": deployed.kind,
        "size_kb": size / 1000,
        "size_bytes": size,
        "params": sum(p.numel() for p in workload.model.parameters()),
    }


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


def create_or_resume(
    name: str,
    storage: optuna.storages.BaseStorage,
    settings: StudySettings,
    *,
    studies_dir: Path = STUDIES_DIR,
    on_baseline: Callable[[], None] | None = None,
    workload: Workload | None = None,
) -> tuple[optuna.Study, StudySettings, Workload, dict[str, Any]]:
    """Create the study (measuring the baseline once), or resume it with its stored settings.

    ``workload`` may be passed already loaded (it must be the one ``settings.workload`` names).

    Returns:
        The study, the settings in force (the stored ones on resume), the loaded workload and
        the baseline record.

    Raises:
        AutocompressError: On resume, the given workload differs from the study's.
    """
    existing = set(optuna.get_all_study_names(storage))
    if name in existing:
        study = load_study(name, storage)
        info = study_info(study)
        stored = StudySettings.from_dict(info["settings"])
        if settings.workload != stored.workload:
            raise AutocompressError(
                f"study {name!r} compresses workload {stored.workload!r}, not "
                f"{settings.workload!r}; use another --study name for a new search"
            )
        if settings.space_text and settings.space_text != stored.space_text:
            raise AutocompressError(
                f"study {name!r} was created with another search space ({stored.space_source}); "
                "resume without --space or use another --study name"
            )
        if workload is None:
            workload = load_workload(
                stored.workload,
                data_dir=settings.data_dir or stored.data_dir,
                seed=stored.seed,
                cache_dir=studies_dir / "baselines",
            )
        return study, stored, workload, info["baseline"]
    settings.space()  # validate before any work
    if workload is None:
        workload = load_workload(
            settings.workload,
            data_dir=settings.data_dir,
            seed=settings.seed,
            cache_dir=studies_dir / "baselines",
        )
    if on_baseline is not None:
        on_baseline()
    torch.set_num_threads(settings.target.threads)
    baseline = measure_baseline(workload, settings.target, studies_dir / name)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=DIRECTIONS, load_if_exists=True
    )
    if ATTR not in study.user_attrs:
        if settings.warm_start:
            # Enqueued once, at creation, by the creating process; workers pop WAITING trials
            # under their budget lock, so two never take the same one.
            for params in settings.space().warm_starts():
                study.enqueue_trial(params, user_attrs={"warm_start": True})
        study.set_metric_names(METRIC_NAMES)
        study.set_user_attr(
            ATTR,
            {
                "version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "settings": settings.to_dict(),
                "baseline": baseline,
                "hardware": hardware_fingerprint(settings.target.device, settings.target.threads),
            },
        )
    info = study_info(study)
    return study, StudySettings.from_dict(info["settings"]), workload, info["baseline"]


def prepare_objective(
    study: optuna.Study,
    settings: StudySettings,
    workload: Workload,
    baseline: dict[str, Any],
    studies_dir: Path = STUDIES_DIR,
    reporter: Any | None = None,
) -> Callable[[optuna.Trial], tuple[float, float, float]]:
    """The objective this process runs trials with (``study run`` and ``worker`` alike).

    Also gives the study a fresh sampler (seeded past the trials already there: a sampler
    seeded as before would replay the same startup points on resume) and pins the threads.
    """
    n_done = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings.sampler, settings.seed + n_done)
    torch.set_num_threads(settings.target.threads)
    artifact_dir = studies_dir / study.study_name
    artifact_dir.mkdir(parents=True, exist_ok=True)
    objective = Objective(workload, settings, baseline, artifact_dir, reporter)
    from autocompress.recipe import RecipeArtifacts  # here: recipe imports this module

    # Each feasible trial uploads its recipe as an Optuna artifact before it completes.
    return RecipeArtifacts(objective, workload.model, artifact_dir)


def run_study(
    study: optuna.Study,
    settings: StudySettings,
    workload: Workload,
    baseline: dict[str, Any],
    *,
    n_trials: int | None,
    timeout: float | None = None,
    studies_dir: Path = STUDIES_DIR,
    reporter: Any | None = None,
    callbacks: list[Callable] | None = None,
) -> None:
    """Run trials in this process; failed trials are recorded with their reason and skipped."""
    objective = prepare_objective(study, settings, workload, baseline, studies_dir, reporter)
    all_callbacks = list(callbacks or [])
    if reporter is not None:
        all_callbacks.append(lambda s, t: reporter.trial_finished(t))
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=timeout,
        catch=(TrialFailure,),
        callbacks=all_callbacks,
        gc_after_trial=True,
    )


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of completed trials that meet the accuracy budget, most accurate first."""
    front = [
        t
        for t in study.best_trials
        if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())
    ]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1], t.values[2]))


FRONT_COLUMNS = (
    "trial",
    "accuracy",
    "test acc",
    "latency ms",
    "speed-up",
    "size KB",
    "smaller",
    "config",
)


def front_rows(baseline: dict[str, Any], front: list[optuna.trial.FrozenTrial]) -> list[list[str]]:
    """The front as table rows (``FRONT_COLUMNS``), the baseline first for reference."""
    rows = [
        [
            "baseline",
            f"{baseline['accuracy']:.4f}",
            f"{baseline['test_accuracy']:.4f}",
            f"{baseline['latency_ms']:.3f}",
            "1.00x",
            f"{baseline['size_kb']:.1f}",
            "1.0x",
            "uncompressed fp32",
        ]
    ]
    for t in front:
        acc, lat, size = t.values
        rows.append(
            [
                str(t.number),
                f"{acc:.4f}",
                f"{t.user_attrs.get('test_accuracy', float('nan')):.4f}",
                f"{lat:.3f}",
                f"{baseline['latency_ms'] / lat:.2f}x",
                f"{size:.1f}",
                f"{baseline['size_kb'] / size:.1f}x",
                t.user_attrs.get("summary", ""),
            ]
        )
    return rows


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Trials by state, best feasible values and time spent."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in done if all(v <= 0 for v in t.constraints.values())]
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    best = {}
    if feasible:
        best = {
            "accuracy": max(t.values[0] for t in feasible),
            "latency_ms": min(t.values[1] for t in feasible),
            "size_kb": min(t.values[2] for t in feasible),
        }
    failed = list(failure_reasons(trials).items())
    stopped = [
        (t.number, t.user_attrs.get("stopped_reason", ""))
        for t in trials
        if t.state == TrialState.PRUNED
    ]
    return {
        "name": study.study_name,
        "counts": {k: v for k, v in counts.items() if v},
        "n_trials": len(trials),
        "n_feasible": len(feasible),
        "front_size": len(feasible_front(study)) if feasible else 0,
        "best": best,
        "seconds": seconds,
        "failed": failed,
        "stopped": stopped,
        "structured_failures": structured_failures(study),
    }
