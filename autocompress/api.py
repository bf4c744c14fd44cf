"""The Python API: create or resume a study, run trials, read the front, export and apply.

The same storage, settings, budgets, limits and validation as the CLI, which calls the same
functions underneath; a study made here is resumed, exported and applied by the CLI and the
other way round.

Example:
    >>> import autocompress as ac  # doctest: +SKIP
    >>> study = ac.create_study("d1", workload="digits", max_metric_drop=0.01)  # doctest: +SKIP
    >>> study.run(n_trials=8)  # doctest: +SKIP
    >>> best = study.front()[0]  # doctest: +SKIP
    >>> study.export("best.yaml", trial=best.number)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autocompress.errors import AutocompressError, WorkloadError
from autocompress.record import feasible_front, flags, front_rows, recorded_bytes, study_info
from autocompress.workload import PYTHON_OBJECT, Workload

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class FrontTrial:
    """One trial of the feasible Pareto front, as a record.

    Attributes:
        number: The Optuna trial number (``export(trial=...)``).
        metric: The validation metric (the one searched).
        test_metric: The test metric (reported, never searched); ``None`` when not finite.
        latency_ms: Latency of one batch of the deployed form on the target.
        size_kb: The size objective (deployed file or packed artifact, as the study says).
        speedup: Baseline latency over this trial's.
        smaller: Baseline size over this trial's (same kind of size).
        summary: What ran, in words (the label ``pareto`` prints).
        flags: What a reader should know about the figures (``test over budget``...).
        params: The sampled parameters.
    """

    number: int
    metric: float
    test_metric: float | None
    latency_ms: float
    size_kb: float
    speedup: float
    smaller: float
    summary: str
    flags: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


def _front_record(info: dict[str, Any], trial: FrozenTrial) -> FrontTrial:
    value, latency, size_kb = trial.values
    base = info["baseline"]
    base_size = recorded_bytes(base, info["size"])
    test = trial.user_attrs.get("test_metric")
    return FrontTrial(
        number=trial.number,
        metric=float(value),
        test_metric=float(test) if isinstance(test, int | float) and math.isfinite(test) else None,
        latency_ms=float(latency),
        size_kb=float(size_kb),
        speedup=float(base["latency_ms"]) / latency if latency > 0 else math.nan,
        smaller=float(base_size) / 1000 / size_kb if base_size and size_kb > 0 else math.nan,
        summary=str(trial.user_attrs.get("summary", "")),
        flags=tuple(flags(info, trial)),
        params=dict(trial.params),
    )


def _reference(workload: Any) -> str:
    """The reference a study records for ``workload``.

    A string is used as given; a module-level function as ``module:function`` (the CLI finds it
    from the same folder or among installed packages); anything else as :data:`PYTHON_OBJECT`.
    """
    if isinstance(workload, str):
        return workload
    if callable(workload) and not isinstance(workload, Workload):
        module = getattr(workload, "__module__", None)
        qualname = getattr(workload, "__qualname__", "")
        if module and module != "__main__" and qualname.isidentifier():
            return f"{module}:{qualname}"
    return PYTHON_OBJECT


def _loaded(workload: Any, *, data_dir: str | None, seed: int, cache_dir: Path) -> Any:
    from autocompress.workload import load_workload, prepare

    if isinstance(workload, str):
        return load_workload(workload, data_dir=data_dir, seed=seed, cache_dir=cache_dir)
    if isinstance(workload, Workload):
        return prepare(workload, cache_dir=cache_dir, seed=seed)
    if callable(workload):
        made = workload()
        if not isinstance(made, Workload):
            raise WorkloadError(
                f"workload function {getattr(workload, '__name__', workload)!r} returned a "
                f"{type(made).__name__}; return an autocompress.workload.Workload"
            )
        return prepare(made, cache_dir=cache_dir, seed=seed)
    raise WorkloadError(
        f"workload is a {type(workload).__name__}; give a built-in name, a 'module:function' "
        "reference, a function returning a Workload, or a Workload"
    )


class Study:
    """An autocompress study in its storage (see :func:`create_study`, :func:`load_study`).

    Attributes:
        name: The study's name.
        storage: The storage URL.
        optuna: The underlying :class:`optuna.Study` (read it; run trials through :meth:`run`).
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: str,
        studies_dir: Path,
        workload: Any = None,
        data_dir: str | None = None,
    ) -> None:
        self.optuna = study
        self.name = study.study_name
        self.storage = storage
        self._studies_dir = studies_dir
        self._workload = workload  # loaded (LoadedWorkload) or what the user gave
        self._data_dir = data_dir

    def __repr__(self) -> str:
        return f"Study({self.name!r}, storage={self.storage!r})"

    @property
    def info(self) -> dict[str, Any]:
        """The study's record: settings, baseline, task, budget, hardware."""
        return study_info(self.optuna)

    def _loaded_workload(self) -> Any:
        from autocompress.settings import StudySettings
        from autocompress.workload import LoadedWorkload

        if isinstance(self._workload, LoadedWorkload):
            return self._workload
        settings = StudySettings.from_dict(self.info["settings"])
        given = self._workload if self._workload is not None else settings.workload
        if given == PYTHON_OBJECT:
            raise WorkloadError(
                f"study {self.name!r} was created from a Workload object, which its record "
                "cannot rebuild: pass it again, autocompress.load_study(name, workload=obj)"
            )
        self._workload = _loaded(
            given,
            data_dir=self._data_dir or settings.data_dir,
            seed=settings.seed,
            cache_dir=self._studies_dir / "baselines",
        )
        return self._workload

    def run(
        self,
        n_trials: int | None = None,
        *,
        total: int | None = None,
        timeout: float | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Any:
        """Run trials in this process, as ``autocompress study run`` does.

        Args:
            n_trials: Complete this many more trials.
            total: Run until the study has this many completed trials (shared by workers).
            timeout: Start no trial after this many seconds.
            callbacks: Optuna callbacks ``(study, frozen_trial)``, called after each trial
                (tracking, notifications).

        Returns:
            A :class:`autocompress.workers.WorkerResult`: completed, failed and stopped counts
            and why the loop stopped.
        """
        from autocompress.cli._validate import check_budget
        from autocompress.recipe import RecipeArtifacts
        from autocompress.storage import open_storage
        from autocompress.study import artifact_dir, create_or_resume, run_trials

        check_budget(n_trials, total, timeout)
        workload = self._loaded_workload()
        study, settings, workload, info = create_or_resume(
            self.name,
            open_storage(self.storage, create=False, write=True),
            {},
            studies_dir=self._studies_dir,
            workload=workload,
        )
        return run_trials(
            study, settings, workload, info,
            n_trials=n_trials, total=total, timeout=timeout, studies_dir=self._studies_dir,
            callbacks=list(callbacks),
            wrap=lambda objective: RecipeArtifacts(
                objective, workload.model, artifact_dir(self._studies_dir, study)
            ),
        )  # fmt: skip

    def front(self) -> list[FrontTrial]:
        """The feasible Pareto front, best metric first (what ``autocompress pareto`` prints)."""
        info = self.info
        return [_front_record(info, t) for t in feasible_front(self.optuna)]

    def front_table(self) -> list[dict[str, str]]:
        """The front as ``pareto`` prints it, the baseline first: one dict per row."""
        from autocompress.record import front_columns

        info = self.info
        columns = front_columns(info)
        return [
            dict(zip(columns, row, strict=True))
            for row in front_rows(info, feasible_front(self.optuna))
        ]

    def status(self) -> dict[str, Any]:
        """Trials by state, best feasible values, failures with reasons (``study status``)."""
        from autocompress.study import summarize

        return summarize(self.optuna)

    def export(
        self,
        out: str | os.PathLike[str],
        *,
        trial: int | None = None,
        metric_limit: float | None = None,
        max_latency_ms: float | None = None,
        max_size_kb: float | None = None,
        minimize: str | None = None,
        sign_key: bytes | None = None,
    ) -> Any:
        """Write the recipe of one trial, as ``autocompress export`` does.

        Args:
            out: The recipe file (YAML).
            trial: This trial; otherwise a rule over the feasible front:
            metric_limit: Front trials whose metric is at least this (at most when lower is
                better).
            max_latency_ms: Front trials with latency at most this.
            max_size_kb: Front trials with size at most this.
            minimize: ``latency`` or ``size`` (default: the best metric).
            sign_key: Sign the recipe with HMAC-SHA256 under this secret.

        Returns:
            The :class:`autocompress.recipe.Recipe` written.
        """
        from autocompress.errors import RecipeError
        from autocompress.recipe import Selection, build_recipe, save_recipe, select_trial
        from autocompress.safe_output import atomic_output, check_output_path

        if minimize not in (None, "latency", "size"):
            raise AutocompressError(f"minimize={minimize!r}: use 'latency' or 'size'")
        check_output_path(Path(out), "recipe", RecipeError)
        selection = Selection(
            trial=trial,
            metric_limit=metric_limit,
            max_latency_ms=max_latency_ms,
            max_size_kb=max_size_kb,
            optimize=minimize or "metric",
        )
        chosen = select_trial(self.optuna, selection)
        recipe = build_recipe(self.optuna, chosen, self._loaded_workload().model)
        if sign_key is not None:
            recipe = recipe.signed(sign_key)
        with atomic_output(Path(out), "recipe", RecipeError) as tmp:
            save_recipe(recipe, tmp)
        return recipe


def _storage_url(storage: str | None) -> str:
    from autocompress.study import DEFAULT_STORAGE

    return storage or DEFAULT_STORAGE


def create_study(
    name: str,
    workload: str | Workload | Callable[[], Workload] = "digits",
    *,
    storage: str | None = None,
    space: str | os.PathLike[str] | None = None,
    target: str | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    max_metric_drop: float | None = None,
    max_relative_drop: float | None = None,
    max_latency_ms: float | None = None,
    max_size_kb: float | None = None,
    max_memory_mb: float | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    size: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    warm_start: bool | None = None,
    early_stop: bool | None = None,
    cheap_first: bool | None = None,
    studies_dir: str | os.PathLike[str] = "studies",
) -> Study:
    """Create a study (measuring its baseline once), or resume the one of that name.

    The arguments are ``autocompress study run``'s options, with its defaults (``cpu-torch``,
    1 thread, batch 32, tpe, seed 0, deployed size, warm starts and early stop on). As in the
    CLI, an argument left out (``None``) keeps the study's value on resume, and one that differs
    from the study's is refused with every difference listed.

    Args:
        name: The study's name.
        workload: A built-in name (``digits``, ``tiny-lm``, ``minilm``...), a reference
            (``package.module:function``, ``path/to/file.py:function``), a module-level
            function returning a :class:`~autocompress.workload.Workload` (recorded as its
            ``module:function``, so the CLI can resume the study), or a ``Workload`` object
            (recorded as :data:`PYTHON_OBJECT`: only Python can resume such a study, by
            passing the object again).
        storage: SQLAlchemy URL (default ``sqlite:///studies/autocompress.db``).
        space: Search-space YAML (default ``search_spaces/default.yaml``).
        target: ``cpu-torch``, ``cpu-onnxruntime``, ``cpu-openvino``, ``cuda-torch``...
        threads: Threads the model runs with on the target.
        batch_size: The batch latency is measured at.
        max_metric_drop: Budget in the metric's units (give this or ``max_relative_drop``).
        max_relative_drop: Budget as a share of the baseline's metric.
        max_latency_ms: Production limit on latency: a constraint, like the budget.
        max_size_kb: Production limit on the size objective.
        max_memory_mb: Production limit on the deployed model's resident memory.
        sampler: ``tpe``, ``nsga2``, ``random`` or ``gp``.
        seed: Seed of the sampler, the baseline and fine-tuning.
        size: The size objective: ``deployed`` or ``packed``.
        data_dir: Where a built-in workload's data is.
        warm_start: Enqueue the known-good starts on creation.
        early_stop: Stop hopeless trials after a fine-tuning epoch.
        cheap_first: Measure fine-tuning trials without fine-tuning first.
        studies_dir: Where studies keep their files (and baselines their cache).

    Raises:
        AutocompressError: Any invalid argument, as a one-line message.
    """
    from autocompress.cli._validate import check_run_options
    from autocompress.search_space import load_search_space
    from autocompress.settings import Target
    from autocompress.shipped import resolve_space
    from autocompress.study import create_or_resume, open_storage

    check_run_options(seed=seed, threads=threads, batch_size=batch_size)
    url = _storage_url(storage)
    storage_obj = open_storage(url, write=True)
    exists = name in optuna.get_all_study_names(storage_obj)
    reference = _reference(workload)
    target_parts = Target.given_parts(target, threads, batch_size)
    given: dict[str, Any] = {
        "workload": reference,
        "target": target_parts,
        "max_metric_drop": max_metric_drop,
        "max_relative_drop": max_relative_drop,
        "max_latency_ms": max_latency_ms,
        "max_size_kb": max_size_kb,
        "max_memory_mb": max_memory_mb,
        "sampler": sampler,
        "seed": seed,
        "size": size,
        "data_dir": str(data_dir) if data_dir else None,
        "warm_start": warm_start,
        "early_stop": early_stop,
        "cheap_first": cheap_first,
    }
    if space is not None or not exists:
        path = resolve_space(Path(space) if space is not None else None)
        given.update(space_text=load_search_space(path).text, space_source=str(space or path))
    root = Path(studies_dir)
    loaded = None
    if not exists or not isinstance(workload, str):
        if seed is None:  # the baseline trains with the study's seed (0 for a new study)
            seed = 0
            if exists:
                stored = study_info(optuna.load_study(study_name=name, storage=storage_obj))
                seed = int(stored["settings"].get("seed", 0))
        loaded = _loaded(
            workload, data_dir=given["data_dir"], seed=seed, cache_dir=root / "baselines"
        )
    study, _settings, loaded, _info = create_or_resume(
        name, storage_obj, given, studies_dir=root, workload=loaded
    )
    return Study(study, url, root, workload=loaded, data_dir=given["data_dir"])


def load_study(
    name: str,
    storage: str | None = None,
    *,
    workload: str | Workload | Callable[[], Workload] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    studies_dir: str | os.PathLike[str] = "studies",
) -> Study:
    """An existing study, to read, run or export from.

    Args:
        name: The study's name.
        storage: Its storage URL (default ``sqlite:///studies/autocompress.db``); a missing
            database is an error, never a new one.
        workload: Needed to run or export from a study whose workload is not built in: the
            same reference, function or object it was created with.
        data_dir: Where a built-in workload's data is.
        studies_dir: Where studies keep their files.

    Raises:
        StorageError: No such study or database.
    """
    from autocompress.storage import open_storage
    from autocompress.study import load_study as load

    url = _storage_url(storage)
    study = load(name, open_storage(url, create=False))
    return Study(
        study,
        url,
        Path(studies_dir),
        workload=workload,
        data_dir=str(data_dir) if data_dir else None,
    )


__all__ = ["PYTHON_OBJECT", "FrontTrial", "Study", "create_study", "load_study"]
