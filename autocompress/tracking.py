"""Experiment tracking: every trial a process finishes becomes one MLflow run (``--mlflow URI``).

The experiment is named after the study; each run is named ``trial N`` and holds the trial's
sampled parameters (params), its three objectives under their names and the other figures it
measured (metrics), and its state, feasibility, constraint, flags, failure or stop reason and
the paths of its files (tags). The feasible trial's recipe is uploaded as the run's artifact.

Optuna's own ``MLflowCallback`` (optuna-integration) is deprecated since 4.9 (callbacks move to
OptunaHub), sets MLflow's process-wide tracking URI and experiment, and tags a run with every
user attribute as it is; this callback uses an ``MlflowClient`` of its own and says what a
reader needs. It needs only ``mlflow-skinny`` (``pip install 'autocompress[tracking]'``).
Any Optuna callback ``(study, frozen_trial)`` can be passed the same way
(``run_trials(..., callbacks=[...])``).
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import AutocompressError, reason
from autocompress.record import flags, is_feasible, metric_name, objective_names, study_info

INSTALL = "pip install 'autocompress[tracking]'"
# MLflow's run status for each finished Optuna state: a stopped trial was ended on purpose.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.FAIL: "FAILED",
              TrialState.PRUNED: "KILLED"}  # fmt: skip
# Figures a trial records beside its objectives, logged as metrics when they are numbers.
EXTRA_METRICS = ("test_metric", "worsening", "latency_p90_ms", "latency_cv", "latency_ratio",
                 "packed_bytes", "deployed_bytes", "params", "macs", "sparsity",
                 "effective_bits", "partial_metric", "seconds")  # fmt: skip
# Short user attributes that say what happened, logged as tags when present.
TEXT_TAGS = ("fail_reason", "failed_method", "stopped_reason", "fidelity", "summary",
             "duplicate_of", "warm_start", "deployed_kind", "note")  # fmt: skip
MAX_TAG = 5000  # MLflow keeps tag values to 8000 characters in recent versions, 5000 in older
_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


@dataclass(frozen=True)
class TrialLog:
    """What one trial logs: MLflow params, metrics and tags, all checked for MLflow's limits.

    Attributes:
        params: The sampled parameters, as strings.
        metrics: Objective values under their names, then the other figures measured.
        tags: State, feasibility, flags, reasons and file paths, as strings.
        recipe: The trial's recipe file, when it has one (uploaded as an artifact).
    """

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    recipe: Path | None = None

    def __post_init__(self) -> None:
        for kind, keys in (("param", self.params), ("metric", self.metrics),
                           ("tag", self.tags)):  # fmt: skip
            bad = [k for k in keys if _KEY.search(k) or not k]
            if bad:
                raise ValueError(f"{kind} names MLflow refuses: {bad}")
        if any(not math.isfinite(v) for v in self.metrics.values()):
            raise ValueError(f"metrics must be finite: {self.metrics}")


def _key(name: str) -> str:
    """``name`` with the characters MLflow refuses in a key replaced by ``_``."""
    return _KEY.sub("_", name) or "_"


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 3] + "..."


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def trial_files(study_dir: Path | None, number: int) -> tuple[list[Path], Path | None]:
    """The files a trial left in its study's folder (packed artifact, deployed files) and its
    recipe (``recipes/trial-N.yaml``, written for trials within the budget), as absolute paths."""
    if study_dir is None:
        return [], None
    folder = Path(os.path.abspath(study_dir))
    files = sorted(p for p in folder.glob(f"trial-{number}.*") if p.is_file())
    recipe = folder / "recipes" / f"trial-{number}.yaml"
    return files, recipe if recipe.is_file() else None


def trial_log(
    study_name: str, info: Mapping[str, Any], trial: FrozenTrial, study_dir: Path | None = None
) -> TrialLog:
    """What MLflow gets for a finished ``trial`` of study ``study_name`` with record ``info``
    (files and recipe found in ``study_dir``)."""
    info = dict(info)
    attrs = trial.user_attrs
    params = {_key(k): _text(v) for k, v in trial.params.items()}
    metrics: dict[str, float] = {}
    if trial.values is not None:
        for name, value in zip(objective_names(info), trial.values, strict=True):
            if math.isfinite(value):
                metrics[_key(name)] = float(value)
    for key in EXTRA_METRICS:
        value = _number(attrs.get(key))
        if value is not None:
            name = f"test_{metric_name(info)}" if key == "test_metric" else key
            metrics[_key(name)] = value
    for name, value in trial.constraints.items():
        if math.isfinite(value):
            metrics[_key(f"constraint.{name}")] = float(value)
    tags = {
        "optuna.study": study_name,
        "optuna.trial_number": str(trial.number),
        "state": trial.state.name,
        "feasible": "true" if is_feasible(trial) else "false",
    }
    trial_flags = flags(info, trial)
    if trial_flags:
        tags["flags"] = ", ".join(trial_flags)
    for key in TEXT_TAGS:
        if attrs.get(key) not in (None, ""):
            tags[key] = _text(attrs[key])
    if trial.state == TrialState.FAIL and "fail_reason" not in tags:
        tags["fail_reason"] = "no reason recorded (the worker was lost, or it was interrupted)"
    files, recipe = trial_files(study_dir, trial.number)
    if files:
        tags["artifact.files"] = _text(", ".join(str(p) for p in files))
    if attrs.get("artifact"):
        tags["artifact.packed"] = _text(os.path.abspath(str(attrs["artifact"])))
    if recipe is not None:
        tags["artifact.recipe"] = str(recipe)
    if study_dir is not None:
        tags["artifact.study_dir"] = os.path.abspath(study_dir)
    return TrialLog(params, metrics, tags, recipe)


def _ms(when: Any) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


class MLflowTracker:
    """An Optuna callback ``(study, frozen_trial)``: logs each finished trial as an MLflow run.

    The experiment (named after the study unless ``experiment`` is given) is found or created
    when the tracker is made, so a wrong URI is refused before any trial runs. A trial that
    cannot be logged later (the server went away) is reported through ``on_error`` and the
    study goes on: the study's own database holds every figure.

    Example:
        >>> tracker = MLflowTracker("sqlite:///mlflow.db", "digits-1")  # doctest: +SKIP
        >>> run_trials(study, settings, workload, info, n_trials=20,
        ...            callbacks=[tracker])  # doctest: +SKIP

    Args:
        uri: An MLflow tracking URI: ``http://host:5000``, ``sqlite:///mlflow.db``,
            ``file:///path/mlruns`` (MLflow 3.7+ asks ``MLFLOW_ALLOW_FILE_STORE=true`` for it).
        experiment: The experiment's name (default: the study's).
        studies_dir: Where studies keep their files (default ``studies``): the trial's files and
            recipe are found there.
        on_error: Told, in one line, about a trial that could not be logged (default: a
            warning).

    Raises:
        AutocompressError: MLflow is not installed, or the URI cannot be used.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        studies_dir: Path | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise AutocompressError(
                f"--mlflow {uri}: MLflow is not installed; install it with {INSTALL}"
            ) from None
        self.uri = uri
        self.experiment = experiment
        self.studies_dir = studies_dir
        self.on_error = on_error or _warn
        self._lock = threading.Lock()
        self._described = False
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment_id(experiment)
        except Exception as e:  # noqa: BLE001 - any store or connection error, said in one line
            raise AutocompressError(
                f"--mlflow {uri}: cannot open experiment {experiment!r} ({reason(e)}); "
                "check the URI (http://host:port, sqlite:///mlflow.db, or a file store with "
                "MLFLOW_ALLOW_FILE_STORE=true)"
            ) from None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:
            found = self.client.get_experiment_by_name(name)  # another worker made it first
            if found is None:
                raise
            return str(found.experiment_id)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            try:
                self.log(study, trial)
            except Exception as e:  # noqa: BLE001 - tracking never ends a study
                self.on_error(f"trial {trial.number} was not logged to MLflow ({reason(e)})")

    def log(self, study: optuna.Study, trial: FrozenTrial) -> str:
        """Log ``trial`` as a new run; returns the run's id."""
        from mlflow.entities import Metric, Param, RunTag

        info = study_info(study)
        if not self._described:
            self._describe(info)
        record = trial_log(study.study_name, info, trial, self._study_dir(study))
        run = self.client.create_run(
            self.experiment_id,
            start_time=_ms(trial.datetime_start),
            run_name=f"trial {trial.number}",
        )
        run_id = str(run.info.run_id)
        when = _ms(trial.datetime_complete) or 0
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, when, 0) for k, v in record.metrics.items()],
            params=[Param(k, v) for k, v in record.params.items()],
            tags=[RunTag(k, v) for k, v in record.tags.items()],
        )
        if record.recipe is not None:
            self.client.log_artifact(run_id, str(record.recipe), "recipe")
        self.client.set_terminated(
            run_id, RUN_STATUS.get(trial.state, "FINISHED"), end_time=_ms(trial.datetime_complete)
        )
        return run_id

    def _study_dir(self, study: optuna.Study) -> Path | None:
        from autocompress.storage import STUDIES_DIR
        from autocompress.study import artifact_dir

        return artifact_dir(self.studies_dir or STUDIES_DIR, study)

    def _describe(self, info: dict[str, Any]) -> None:
        """The study's settings and baseline as experiment tags, once per process."""
        from autocompress.record import settings_rows

        tags = {f"autocompress.{_key(k)}": _text(v) for k, v in settings_rows(info)}
        base = info["baseline"]
        for key in ("metric", "test_metric", "latency_ms", "deployed_bytes", "packed_bytes"):
            if base.get(key) is not None:
                tags[f"autocompress.baseline.{key}"] = str(base[key])
        tags["autocompress.objectives"] = ", ".join(objective_names(info))
        for key, value in tags.items():
            self.client.set_experiment_tag(self.experiment_id, key, value)
        self._described = True


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=2)


__all__ = ["INSTALL", "MLflowTracker", "TrialLog", "trial_files", "trial_log"]
