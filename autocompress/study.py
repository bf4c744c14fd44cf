"""The Optuna study: atomic creation with its baseline, resume, running trials, summaries.

Objectives, in order: the workload's metric on the validation split (its direction is the
task's), latency (ms of one batch of the deployed form on the target), size (KB of the
deployed file, or of the packed artifact). The budget on the metric is a hard constraint
(``trial.set_constraint``). The baseline is measured once, when the study is created, and
stored with it; every process uses the stored record. So is the sensitivity profile of a space
with per-layer allocation (:mod:`autocompress.sensitivity`), measured once on training data.
The trial itself is run by :class:`autocompress.objective.Objective`, the trials by
:func:`autocompress.workers.run_worker`, and the record is read through
:mod:`autocompress.record`.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from autocompress import __version__
from autocompress.architecture import model_facts
from autocompress.errors import AutocompressError, StorageError, WorkloadError, reason
from autocompress.faults import machine_fault
from autocompress.hardware import hardware_fingerprint
from autocompress.latency import measure_latency
from autocompress.measure import (
    deploy_for_target,
    eager_latency_ms,
    evaluate_with_noise,
    resident_memory_bytes,
    timing_input,
)
from autocompress.objective import (
    TRIAL_LATENCY,
    Objective,
    method_failures,
    unavailable_methods,
    withdrawn_methods,
)
from autocompress.pipeline import save_baseline_artifact
from autocompress.record import (
    ATTR,
    SENSITIVITY,
    directions,
    feasible_front,
    higher_is_better,
    is_feasible,
    objective_bytes,
    objective_names,
    study_info,
)
from autocompress.runtimes import RUNTIMES
from autocompress.sensitivity import profile_for
from autocompress.settings import LIMIT_FLAGS, SAMPLERS, TARGETS, StudySettings, Target
from autocompress.storage import DEFAULT_STORAGE, STUDIES_DIR, open_storage
from autocompress.trial_notes import save_study_note
from autocompress.workers import (
    WorkerResult,
    budget_lock,
    failure_reasons,
    grace_period,
    lost_trials,
    run_worker,
)
from autocompress.workload import (
    LoadedWorkload,
    finite,
    load_workload,
    state_sha256,
    trusted_workload,
)

__all__ = [
    "DEFAULT_STORAGE",
    "SAMPLERS",
    "STUDIES_DIR",
    "TARGETS",
    "StudySettings",
    "Target",
    "artifact_dir",
    "check_baseline",
    "create_or_resume",
    "load_study",
    "make_sampler",
    "startup_trials",
    "measure_baseline",
    "open_storage",
    "prepare_objective",
    "run_trials",
    "summarize",
    "validate_study_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_study_name(name: str) -> str:
    """A study name that is safe as a folder name.

    Raises:
        AutocompressError: Empty, too long, or with characters other than letters, digits,
            ``.``, ``_`` and ``-`` (or starting with one of the last three).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise AutocompressError(
            f"study name {shown!r} is not allowed: use 1 to 128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return name


RANDOM_STARTUP = 8  # random trials before TPE or GP model the results, without warm starts
RANDOM_AFTER_WARM_STARTS = 2  # random trials after the warm starts, before modelling


def startup_trials(n_warm_starts: int) -> int:
    """How many trials a model-based sampler takes before it models the results.

    Without warm starts, ``RANDOM_STARTUP`` random trials. Warm starts are informed startup
    points, so with them the model takes over after ``RANDOM_AFTER_WARM_STARTS`` random trials
    beyond them: a short study (the 8 trials of a first look) then spends its last trials near
    the best start instead of sampling blindly until its end.
    """
    if n_warm_starts <= 0:
        return RANDOM_STARTUP
    return min(RANDOM_STARTUP, n_warm_starts + RANDOM_AFTER_WARM_STARTS)


def make_sampler(name: str, seed: int, n_warm_starts: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers by short name; ``n_warm_starts`` shortens the random startup."""
    with warnings.catch_warnings():
        # multivariate/group TPE and GPSampler are marked experimental; they are what we use.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(name, seed, startup_trials(n_warm_starts))


def _sampler(name: str, seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=n_startup
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    return optuna.samplers.RandomSampler(seed=seed)


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
        known = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise StorageError(
            f"no study named {shown!r} in this storage (studies there: {known}); "
            "start one with `autocompress study run --study NAME`"
        ) from None
    study_info(study)
    return study


def artifact_dir(studies_dir: Path, study: optuna.Study) -> Path:
    """Where a study's files live: ``<studies>/<name>-<uid>``, keyed by the study's own id
    (so the same name in two storages never shares files)."""
    info = study_info(study)  # validated: a uid is 12 hex digits
    validate_study_name(study.study_name)  # the database names it too: never a path
    uid = info.get("uid")
    if uid:
        return Path(studies_dir) / f"{study.study_name}-{uid}"
    return Path(studies_dir) / study.study_name  # studies of earlier versions


def measure_baseline(
    workload: LoadedWorkload, target: Target, out_dir: Path, *, memory: bool = False
) -> dict[str, Any]:
    """Metric, latency and sizes of the uncompressed model, deployed and measured like a trial.

    Args:
        memory: Also measure the resident memory of the deployed form (when the study has a
            memory limit).

    Raises:
        WorkloadError: The baseline cannot be deployed or run on the target, or its metric is
            not finite, or its memory cannot be measured when asked.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    packed = save_baseline_artifact(workload.model, out_dir / "baseline.acpk")
    try:
        deployed = deploy_for_target(workload, workload.model, out_dir / "baseline", target)
        x = timing_input(workload, target.batch_size)
        settings = replace(TRIAL_LATENCY, threads=target.threads)
        lat = measure_latency(lambda: deployed.run(x), settings, synchronize=deployed.synchronize())
        value, value_se, value_items = evaluate_with_noise(workload, deployed, "val")
        test_value, test_se, test_items = evaluate_with_noise(workload, deployed, "test")
    except (KeyboardInterrupt, SystemExit, AutocompressError):
        raise
    except Exception as e:  # noqa: BLE001 - the user's model on the user's target
        if machine_fault(e) is not None:
            raise  # a full disk is not the model's fault
        others = [
            t for t in TARGETS
            if t.startswith(f"{target.device}-") and t != target.name
            and RUNTIMES[t.split("-", 1)[1]].available() is None
        ]  # fmt: skip
        raise WorkloadError(
            f"the baseline cannot be deployed or run on {target.name} ({reason(e, 200)}); "
            f"try --target {' or '.join(others) or 'cpu-torch'}"
        ) from None
    if not finite(value):
        raise WorkloadError(
            f"the baseline's validation {workload.task.metric_name} on {target.name} is {value}; "
            "check that the deployed model gives finite outputs"
        )
    extra: dict[str, Any] = {}
    if memory:
        resident = resident_memory_bytes(deployed.path, x, target.threads)
        if resident is None:
            raise WorkloadError(
                "--max-memory-mb: the resident memory of the deployed baseline cannot be "
                "measured here (it needs Linux's /proc and a probe process); leave it out"
            )
        extra["resident_memory_bytes"] = resident
    return {
        **extra,
        "metric": value,
        "test_metric": test_value,
        # bootstrap over items (autocompress.noise); None where the task cannot say
        "metric_se": value_se,
        "metric_items": value_items,
        "test_metric_se": test_se,
        "test_metric_items": test_items,
        "latency_ms": lat.median_ms,
        "latency_p90_ms": lat.p90_ms,
        "latency_cv": lat.cv,
        "latency_stable": lat.stable,
        "latency_eager_ms": eager_latency_ms(workload.model, x, settings),
        "deployed_kind": deployed.kind,
        "deployed_bytes": deployed.size_bytes,
        "packed_bytes": packed,
        "params": sum(p.numel() for p in workload.model.parameters()),
        "weights_sha256": state_sha256(workload.model.state_dict()),
    }


# Options a resume compares with the stored ones; data_dir is where this machine keeps data.
_COMPARED = ("workload", "space_text", "target", "max_metric_drop", "max_relative_drop",
             "sampler", "seed", "early_stop", "cheap_first", "warm_start", "size",
             *LIMIT_FLAGS)  # fmt: skip
_FLAGS = {"space_text": "--space", "max_metric_drop": "--max-metric-drop",
          "max_relative_drop": "--max-relative-drop", "early_stop": "--early-stop",
          "cheap_first": "--cheap-first", "warm_start": "--warm-start",
          **LIMIT_FLAGS}  # fmt: skip


def _differences(given: Mapping[str, Any], stored: StudySettings) -> list[str]:
    out = []
    for key in _COMPARED:
        if key not in given or given[key] is None:
            continue
        want, have = given[key], getattr(stored, key)
        if key == "target":
            for part in ("runtime", "device", "threads", "batch_size"):
                if part in want and want[part] != getattr(have, part):
                    flag = (
                        "--target"
                        if part in ("runtime", "device")
                        else f"--{part.replace('_', '-')}"
                    )
                    shown = have.name if part in ("runtime", "device") else getattr(have, part)
                    out.append(f"{flag} (study: {shown})")
            continue
        if want != have:
            flag = _FLAGS.get(key, f"--{key.replace('_', '-')}")
            shown = stored.space_source if key == "space_text" else have
            out.append(f"{flag} (study: {shown})")
    return sorted(set(out))


def _settings_from(given: Mapping[str, Any]) -> StudySettings:
    names = {f.name for f in fields(StudySettings)}
    values = {k: v for k, v in given.items() if k in names and v is not None and k != "target"}
    target = dict(given.get("target") or {})
    return StudySettings(**values, target=Target(**target))


def _same_metric(workload: LoadedWorkload, info: dict[str, Any], name: str) -> None:
    """A resumed study's workload must still measure the study's metric."""
    measured = info["task"].get("metric")
    if measured and measured != workload.task.metric_name:
        raise WorkloadError(
            f"study {name!r} measured {measured}, but workload {workload.name!r} now measures "
            f"{workload.task.metric_name} (its evaluation changed): its trials would not "
            "compare with the stored baseline; use another --study"
        )


def check_baseline(workload: LoadedWorkload, info: dict[str, Any], name: str) -> None:
    stored = info["baseline"].get("weights_sha256")
    if stored and stored != state_sha256(workload.model.state_dict()):
        raise WorkloadError(
            f"the baseline of workload {workload.name!r} is not the one study {name!r} was "
            f"created with (weights sha256 {stored[:12]}...): a cached baseline may be corrupt "
            "or the data changed; delete studies/baselines/ to retrain it, or use another --study"
        )


def create_or_resume(
    name: str,
    storage: optuna.storages.RDBStorage,
    given: Mapping[str, Any] | StudySettings,
    *,
    studies_dir: Path = STUDIES_DIR,
    on_baseline: Callable[[], None] | None = None,
    workload: LoadedWorkload | None = None,
) -> tuple[optuna.Study, StudySettings, LoadedWorkload, dict[str, Any]]:
    """Create the study (measuring the baseline once), or resume it with its stored settings.

    Creation is all-or-nothing, under the same database lock as the trial budget: processes
    started together on a new study create it once, and all of them use the stored baseline.

    Args:
        name: The study's name.
        storage: Its storage.
        given: The settings the user gave (a mapping of :class:`StudySettings` fields; a
            missing or ``None`` value means "not given": the default on creation, the stored
            value on resume), or whole settings.
        studies_dir: Where studies keep their files.
        on_baseline: Called before the baseline is measured.
        workload: The workload already loaded (it must be the one the settings name).

    Returns:
        The study, the settings in force (the stored ones on resume), the loaded workload and
        the study's record (:func:`autocompress.record.study_info`).

    Raises:
        AutocompressError: A given option differs from the study's (all are listed), the
            baseline does not match the stored one, or the name is not allowed.
    """
    if isinstance(given, StudySettings):
        given = {f.name: getattr(given, f.name) for f in fields(StudySettings)} | {
            "target": vars(given.target)
        }
    with budget_lock(storage, name):
        existing = set(optuna.get_all_study_names(storage))
        if name in existing:
            study = optuna.load_study(study_name=name, storage=storage)
            if ATTR not in study.user_attrs and not study.get_trials(deepcopy=False):
                # A creation killed before its record was written: nothing to keep.
                optuna.delete_study(study_name=name, storage=storage)
                existing.discard(name)
        if name in existing:
            study = load_study(name, storage)
            info = study_info(study)
            stored = StudySettings.from_dict(info["settings"])
            diffs = _differences(given, stored)
            if diffs:
                raise AutocompressError(
                    f"study {name!r} was created with other settings: {'; '.join(diffs)}; "
                    "resume without those options, or use another --study for a new search"
                )
            # The thread count changes float sums: a baseline trained here must match the
            # stored one.
            torch.set_num_threads(stored.target.threads)
            if workload is None:
                workload = load_workload(
                    trusted_workload(stored.workload, given.get("workload"), name),
                    data_dir=given.get("data_dir") or stored.data_dir,
                    seed=stored.seed,
                    cache_dir=studies_dir / "baselines",
                )
            _same_metric(workload, info, name)
            check_baseline(workload, info, name)
            if SENSITIVITY not in info:
                # A study created before profiles existed: measured once, here, under the lock.
                profile = profile_for(stored.space(), workload)
                if profile is not None:
                    study.set_user_attr(ATTR, {**study.user_attrs[ATTR], SENSITIVITY: profile})
                    info = study_info(study)
            return study, stored, workload, info
        validate_study_name(name)
        settings = _settings_from(given)
        space = settings.space()  # validate before any work
        torch.set_num_threads(settings.target.threads)
        if workload is None:
            workload = load_workload(
                settings.workload,
                data_dir=settings.data_dir,
                seed=settings.seed,
                cache_dir=studies_dir / "baselines",
            )
        facts = model_facts(workload.model, workload.example_input)
        unavailable_methods(space, facts, settings.target)  # something must apply: checked now
        budget = settings.budget(workload.task.name)
        loose = workload.task.never_binds(budget["absolute"], budget["relative"])
        if loose is not None:
            raise AutocompressError(loose)
        if on_baseline is not None:
            on_baseline()
        uid = uuid.uuid4().hex[:12]
        out_dir = Path(studies_dir) / f"{name}-{uid}"
        baseline = measure_baseline(
            workload, settings.target, out_dir, memory=settings.max_memory_mb is not None
        )
        task = workload.task
        size = objective_bytes(
            settings.size, packed=baseline["packed_bytes"], deployed=baseline["deployed_bytes"]
        )
        baseline["size_kb"] = size / 1000
        profile = profile_for(space, workload)  # once per study, on training data
        info = {
            "version": __version__,
            "uid": uid,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.to_dict(),
            "task": {
                "name": task.name,
                "metric": task.metric_name,
                "higher_is_better": task.higher_is_better,
            },  # fmt: skip
            "budget": settings.budget(task.name),
            "size": settings.size,
            "baseline": baseline,
            "hardware": hardware_fingerprint(settings.target.device, settings.target.threads),
            "workload_info": workload.info,
        }
        if profile is not None:
            info[SENSITIVITY] = profile
        study = optuna.create_study(
            study_name=name, storage=storage, directions=directions(task.higher_is_better)
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(objective_names(info))
            if settings.warm_start:
                for params in space.warm_starts(facts, settings.target.runtime, settings.size):
                    study.enqueue_trial(params, user_attrs={"warm_start": True})
            study.set_user_attr(ATTR, info)  # a study without it is a failed creation
            save_study_note(study)  # the settings in words, in optuna-dashboard
        except BaseException:
            optuna.delete_study(study_name=name, storage=storage)
            raise
        return study, settings, workload, study_info(study)


def prepare_objective(
    study: optuna.Study,
    settings: StudySettings,
    workload: LoadedWorkload,
    info: dict[str, Any],
    studies_dir: Path = STUDIES_DIR,
    reporter: Any | None = None,
) -> Objective:
    """The objective this process runs trials with (``study run``, ``worker``, ``demo``).

    Also gives the study a fresh sampler (seeded past the trials already there: a sampler
    seeded as before would replay the same startup points on resume) and pins the threads.
    """
    trials = study.get_trials(deepcopy=False)
    n_warm = sum(1 for t in trials if t.user_attrs.get("warm_start"))
    study.sampler = make_sampler(settings.sampler, settings.seed + len(trials), n_warm)
    torch.set_num_threads(settings.target.threads)
    out_dir = artifact_dir(studies_dir, study)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Objective(workload, settings, info, out_dir, reporter)


def run_trials(
    study: optuna.Study,
    settings: StudySettings,
    workload: LoadedWorkload,
    info: dict[str, Any],
    *,
    n_trials: int | None = None,
    total: int | None = None,
    timeout: float | None = None,
    studies_dir: Path = STUDIES_DIR,
    reporter: Any | None = None,
    wrap: Callable[[Objective], Callable[[optuna.Trial], Any]] | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> WorkerResult:
    """Run trials of ``study`` in this process (the loop every verb uses; see
    :func:`autocompress.workers.run_worker` for the budget rules).

    Args:
        wrap: Wraps the objective (the CLI adds recipe artifacts this way).
        callbacks: Optuna callbacks ``(study, frozen_trial)``, called in order after each
            trial this process finishes (complete, failed or stopped), before the reporter's:
            e.g. :class:`autocompress.tracking.MLflowTracker`, or Optuna's own.
    """
    objective = prepare_objective(study, settings, workload, info, studies_dir, reporter)
    callbacks = list(callbacks)
    if reporter is not None:
        callbacks.append(lambda s, t: reporter.trial_finished(t))
    return run_worker(
        study,
        wrap(objective) if wrap is not None else objective,
        n_trials=n_trials,
        total=total,
        timeout=timeout,
        callbacks=callbacks,
    )


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Trials by state, best feasible values, time spent, failures and withdrawn methods."""
    info = study_info(study)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    feasible = [t for t in trials if is_feasible(t)]
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    best = {}
    if feasible:
        pick = max if higher_is_better(info) else min
        best = {
            "metric": pick(t.values[0] for t in feasible),
            "latency_ms": min(t.values[1] for t in feasible),
            "size_kb": min(t.values[2] for t in feasible),
        }
    stopped = [
        (t.number, t.user_attrs.get("stopped_reason", ""))
        for t in trials
        if t.state == TrialState.PRUNED
    ]
    lost = lost_trials(study)
    if lost:  # stored as RUNNING, but their workers are gone: say so, never "running"
        counts["RUNNING"] -= len(lost)
        counts["LOST"] = len(lost)
    return {
        "name": study.study_name,
        "lost": lost,
        "grace_period": grace_period(study),
        "counts": {k: v for k, v in counts.items() if v},
        "n_trials": len(trials),
        "n_feasible": len(feasible),
        "front_size": len(feasible_front(study)) if feasible else 0,
        "best": best,
        "seconds": seconds,
        "failed": list(failure_reasons(trials).items()),
        "stopped": stopped,
        "method_failures": method_failures(study),
        "withdrawn": withdrawn_methods(study),
    }
