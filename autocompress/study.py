"""The Optuna study: creation with its baseline, resume, running trials, the front, summaries.

Objectives, in order: maximize validation accuracy, minimize latency (ms of one batch of the
deployed form on the target), minimize size (KB of the packed artifact on disk). The accuracy
budget is a hard constraint (``trial.set_constraint``). The baseline is measured once, when the
study is created, and stored with it. The trial itself is run by
:class:`autocompress.objective.Objective`; the storage is opened by
:func:`autocompress.storage.open_storage`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autocompress import __version__
from autocompress.errors import AutocompressError, StorageError, TrialFailure
from autocompress.hardware import hardware_fingerprint
from autocompress.latency import measure_latency
from autocompress.measure import deploy_for_target, eager_latency_ms, evaluate
from autocompress.objective import (
    EARLY_STOP_MARGINS,
    STRUCTURED_FAILURES_LIMIT,
    TRIAL_LATENCY,
    Objective,
)
from autocompress.pipeline import save_baseline_artifact
from autocompress.settings import SAMPLERS, TARGETS, StudySettings, Target
from autocompress.storage import (
    DEFAULT_STORAGE,
    GRACE_ENV,
    HEARTBEAT_ENV,
    STUDIES_DIR,
    open_storage,
)
from autocompress.workers import failure_reasons, structured_failures
from autocompress.workload import Workload, load_workload

__all__ = [
    # Defined here.
    "ATTR",
    "DIRECTIONS",
    "FRONT_COLUMNS",
    "METRIC_NAMES",
    "create_or_resume",
    "feasible_front",
    "front_rows",
    "load_study",
    "make_sampler",
    "measure_baseline",
    "prepare_objective",
    "run_study",
    "study_info",
    "summarize",
    # Re-exported: they were defined here before the split, and callers import them from here.
    "DEFAULT_STORAGE",
    "EARLY_STOP_MARGINS",
    "GRACE_ENV",
    "HEARTBEAT_ENV",
    "SAMPLERS",
    "STRUCTURED_FAILURES_LIMIT",
    "STUDIES_DIR",
    "TARGETS",
    "TRIAL_LATENCY",
    "Objective",
    "StudySettings",
    "Target",
    "open_storage",
]

METRIC_NAMES = ["accuracy", "latency_ms", "size_kb"]
DIRECTIONS = ["maximize", "minimize", "minimize"]
ATTR = "autocompress"  # the study user attribute holding settings, baseline and hardware


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
