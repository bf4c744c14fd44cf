"""The verbs that run trials: ``study run``, ``worker`` and ``demo``.

All three run the same loop (:func:`autocompress.workers.run_worker`) with the same budget
options: ``--n-trials N`` completes N more trials in this process, ``--total N`` runs until
the study as a whole has N completed trials (shared exactly by every worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from autocompress.cli._common import (
    StorageOpt,
    TrustedWorkloadOpt,
    _default_storage,
    _existing_storage,
    _resolve_space,
    _user_errors,
    err_console,
    interruptible,
)
from autocompress.cli._inspect import _print_front
from autocompress.cli._validate import check_budget, check_run_options
from autocompress.errors import AutocompressError
from autocompress.shipped import DEFAULT_SPACE

NTrialsOpt = Annotated[
    int | None, typer.Option(help="Complete this many more trials in this process.")
]
TotalOpt = Annotated[
    int | None,
    typer.Option(help="Run until the study has this many completed trials (shared by workers)."),
]
TimeoutOpt = Annotated[float | None, typer.Option(help="Start no trial after S seconds.")]
MLflowOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        metavar="URI",
        help="Also log each trial this process finishes as an MLflow run (experiment: the "
        "study's name) at this tracking URI: http://host:5000, sqlite:///mlflow.db. Needs "
        "pip install 'autocompress[tracking]'.",
    ),
]


def _trackers(uri: str | None, experiment: str) -> list[Any]:
    """The tracking callbacks ``--mlflow`` asks for, connected before any work."""
    if uri is None:
        return []
    from rich.markup import escape

    from autocompress.tracking import MLflowTracker

    tracker = MLflowTracker(
        uri,
        experiment,
        on_error=lambda line: err_console.print(
            f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True
        ),
    )
    err_console.print(
        f"logging trials to MLflow at {uri}, experiment {experiment!r}", highlight=False
    )
    return [tracker]


def _loop(
    study: Any,
    settings: Any,
    workload: Any,
    info: dict[str, Any],
    *,
    storage: str,
    n_trials: int | None,
    total: int | None,
    timeout: float | None,
    resume_command: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """Run trials with progress bars; Ctrl-C and SIGTERM record the trial in flight."""
    import optuna

    from autocompress.progress import RichReporter
    from autocompress.recipe import RecipeArtifacts
    from autocompress.study import STUDIES_DIR, artifact_dir, run_trials

    # Failed trials are reported with their reason; Optuna's log would add tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    done = 0
    if total is not None:
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if done >= total and n_trials is None:
            err_console.print(f"study {study.study_name!r} already has {done} completed trials")
    bar_total = n_trials if n_trials is not None else total
    # --total counts the study's completed trials: the bar starts where the study is.
    start = done if n_trials is None else 0
    try:
        with RichReporter(bar_total, err_console, info["task"]["metric"], start) as reporter:
            # Each feasible trial uploads its recipe as an Optuna artifact before it completes.
            return run_trials(
                study, settings, workload, info,
                n_trials=n_trials, total=total, timeout=timeout, reporter=reporter,
                wrap=lambda objective: RecipeArtifacts(
                    objective, workload.model, artifact_dir(STUDIES_DIR, study)
                ),
                callbacks=callbacks or [],
            )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print(
            "\ninterrupted: the trial in flight is recorded as failed (interrupted); all others "
            f"are kept. Resume with: {resume_command}",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


def _report_stop(result: Any, name: str) -> None:
    err_console.print(
        f"stopped ({result.stopped_because}): {result.completed} completed, {result.failed} "
        f"failed, {result.pruned} stopped early here; the study has {result.study_completed} "
        "completed"
    )
    if result.stopped_because in ("failures", "bound"):
        why = "in a row" if result.stopped_because == "failures" else "for this budget"
        raise AutocompressError(
            f"stopped after too many trials that did not complete {why}; see "
            f"`autocompress study status {name}` for their reasons"
        )


def _budget_option(max_accuracy_drop: float | None, max_metric_drop: float | None) -> float | None:
    import math

    if max_accuracy_drop is not None and max_metric_drop is not None:
        raise AutocompressError("give --max-accuracy-drop or --max-metric-drop, not both")
    for flag, value in (("--max-accuracy-drop", max_accuracy_drop),
                        ("--max-metric-drop", max_metric_drop)):  # fmt: skip
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise AutocompressError(f"{flag} {value}: use a finite number >= 0, e.g. 0.01")
    return max_metric_drop if max_metric_drop is not None else max_accuracy_drop


def study_run(
    study: Annotated[str, typer.Option("--study", help="Study name; an existing one is resumed.")],
    workload: Annotated[
        str | None,
        typer.Option(
            help="Built-in digits, mnist-mlp, mnist-lenet5, tiny-lm, minilm, or "
            "package.module:function, path/to/file.py:function (default: digits)."
        ),
    ] = None,
    space: Annotated[
        Path | None,
        typer.Option(help="Search-space YAML (default search_spaces/default.yaml)."),
    ] = None,
    storage: StorageOpt = "",
    n_trials: NTrialsOpt = None,
    total: TotalOpt = None,
    timeout: TimeoutOpt = None,
    sampler: Annotated[
        str | None, typer.Option(help="Optuna sampler: tpe (default), nsga2, random or gp.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the sampler, the baseline and fine-tuning.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Where the model runs: cpu-torch (default), cpu-onnxruntime, cpu-openvino "
            "(pip install 'autocompress[openvino]'), cuda-torch, cuda-onnxruntime."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads the model runs with on the target (default 1).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size latency is measured at (default 32).")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Classification budget: largest allowed accuracy drop (0.01 = 1 point)."),
    ] = None,
    max_metric_drop: Annotated[
        float | None,
        typer.Option(help="Budget in the metric's own units (accuracy lost, perplexity gained)."),
    ] = None,
    max_relative_drop: Annotated[
        float | None,
        typer.Option(help="Budget as a share of the baseline's metric (0.05: 5% worse)."),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help="Size objective: deployed (the runtime's file, default) or packed."),
    ] = None,
    max_latency_ms: Annotated[
        float | None,
        typer.Option(
            help="Production limit: trials slower than this (ms per batch) are never on the front."
        ),
    ] = None,
    max_size_kb: Annotated[
        float | None,
        typer.Option(help="Production limit on the size objective (KB)."),
    ] = None,
    max_memory_mb: Annotated[
        float | None,
        typer.Option(
            help="Production limit on the resident memory of the loaded, running "
            "deployed model (MB; measured per trial in a fresh process, Linux)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with a built-in workload's data (MNIST IDX files)."),
    ] = None,
    warm_start: Annotated[
        bool | None,
        typer.Option(
            help="On creation, enqueue one known-good start per family (int8; structured; "
            "unstructured + 4-bit) as the first trials (default on)."
        ),
    ] = None,
    early_stop: Annotated[
        bool | None,
        typer.Option(help="Stop hopeless trials after a fine-tuning epoch (default on)."),
    ] = None,
    cheap_first: Annotated[
        bool | None,
        typer.Option(
            help="Measure a fine-tuning trial without fine-tuning first; fine-tune only "
            "candidates that could still reach the front (default off: on mnist-lenet5 it cost "
            "a quarter of the trials per hour for the same hypervolume; BENCHMARKS.md §3)."
        ),
    ] = None,
    mlflow: MLflowOpt = None,
) -> None:
    """Create a study, or resume it, and run compression trials.

    Options left out on resume keep the study's values; an option that differs from the
    study's is refused, with every difference listed.

    Example:

        autocompress study run --study digits-1 --workload digits --n-trials 20
    """
    from autocompress.search_space import load_search_space
    from autocompress.settings import Target
    from autocompress.study import create_or_resume, open_storage

    with _user_errors(), interruptible():
        check_budget(n_trials, total, timeout)
        check_run_options(
            n_trials=n_trials, timeout=timeout, seed=seed, threads=threads, batch_size=batch_size
        )
        metric_drop = _budget_option(max_accuracy_drop, max_metric_drop)
        trackers = _trackers(mlflow, study)
        storage = storage or _default_storage()
        storage_obj = open_storage(storage, write=True)
        space_text = space_source = None
        exists = study in _names(storage_obj)
        if space is not None or not exists:
            # Validated before any work; on resume without --space the stored space is used.
            path = _resolve_space(space)
            space_text, space_source = load_search_space(path).text, str(space or DEFAULT_SPACE)
        target_parts = Target.given_parts(target, threads, batch_size)
        given = {
            "workload": workload if workload is not None else (None if exists else "digits"),
            "space_text": space_text,
            "space_source": space_source,
            "target": target_parts,
            "max_metric_drop": metric_drop,
            "max_relative_drop": max_relative_drop,
            "sampler": sampler,
            "seed": seed,
            "data_dir": str(data_dir) if data_dir else None,
            "warm_start": warm_start,
            "early_stop": early_stop,
            "cheap_first": cheap_first,
            "size": size,
            "max_latency_ms": max_latency_ms,
            "max_size_kb": max_size_kb,
            "max_memory_mb": max_memory_mb,
        }
        err_console.print(f"study [bold]{study}[/] on {storage}")
        the_study, settings, wl, info = create_or_resume(
            study,
            storage_obj,
            given,
            on_baseline=lambda: err_console.print("measuring the baseline (once per study)..."),
        )
        _print_baseline(info, settings)
        result = _loop(
            the_study, settings, wl, info,
            storage=storage, n_trials=n_trials, total=total, timeout=timeout,
            resume_command=f"autocompress study run --study {study} --storage {storage}"
            + _workload_flag(settings),
            callbacks=trackers,
        )  # fmt: skip
        _report_stop(result, study)
        _print_front(study, storage)


def _workload_flag(settings: Any) -> str:
    """`` --workload REF`` when resuming needs it (the workload is code), else nothing."""
    from autocompress.zoo import BUILTIN_WORKLOADS

    return "" if settings.workload in BUILTIN_WORKLOADS else f" --workload {settings.workload}"


def _names(storage: Any) -> set[str]:
    import optuna

    return set(optuna.get_all_study_names(storage))


def _print_baseline(info: dict[str, Any], settings: Any) -> None:
    from autocompress.record import (
        baseline_metric,
        budget_words,
        limit_words,
        limits,
        metric_name,
        noise_warning,
    )

    b, t = info["baseline"], settings.target
    err_console.print(
        f"baseline: {metric_name(info)} {baseline_metric(info)}, latency "
        f"{b['latency_ms']:.3f} ms "
        f"({t.name}, batch {t.batch_size}, {t.threads} thread(s)), deployed "
        f"{(b.get('deployed_bytes') or 0) / 1000:.1f} KB, packed "
        f"{(b.get('packed_bytes') or 0) / 1000:.1f} KB; budget: {budget_words(info)}"
        + (f"; limits: {limit_words(info)}" if limits(info) else ""),
        soft_wrap=True,
    )
    from autocompress.methods.runtime import not_offered

    noise = noise_warning(info)
    for line in [*not_offered(settings.space(), t.runtime, t.device), *([noise] if noise else [])]:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)


def worker(
    name: Annotated[str, typer.Argument(help="An existing study (made by `study run`).")],
    storage: StorageOpt = "",
    n_trials: NTrialsOpt = None,
    total: TotalOpt = None,
    timeout: TimeoutOpt = None,
    allow_other_hardware: Annotated[
        bool,
        typer.Option(
            "--allow-other-hardware",
            help="Record latencies even though this machine differs from the study's.",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with a built-in workload's data (MNIST IDX files)."),
    ] = None,
    mlflow: MLflowOpt = None,
    workload: TrustedWorkloadOpt = None,
) -> None:
    """Join an existing study and run its trials, with any number of other workers.

    Example:

        autocompress worker demo --storage postgresql://user@host/db --total 40
    """
    from autocompress.hardware import hardware_fingerprint, same_hardware
    from autocompress.record import study_info
    from autocompress.settings import StudySettings
    from autocompress.study import create_or_resume, load_study

    with _user_errors(), interruptible():
        check_budget(n_trials, total, timeout)
        check_run_options(n_trials=n_trials, timeout=timeout)
        trackers = _trackers(mlflow, name)
        storage = storage or _default_storage()
        storage_obj = _existing_storage(storage, write=True)
        info = study_info(load_study(name, storage_obj))
        settings = StudySettings.from_dict(info["settings"])
        mine = hardware_fingerprint(settings.target.device, settings.target.threads)
        if not same_hardware(mine, info["hardware"]):
            if not allow_other_hardware:
                theirs = info["hardware"]
                raise AutocompressError(
                    f"this machine ({mine['cpu']}, {mine['logical_cores']} cores) is not the one "
                    f"study {name!r} measured latency on ({theirs.get('cpu')}, "
                    f"{theirs.get('logical_cores')} cores): its latencies would not compare; "
                    "run the worker there, or pass --allow-other-hardware"
                )
            err_console.print("[yellow]warning:[/] other hardware than the study's (allowed)")
        given = {"data_dir": str(data_dir) if data_dir else None, "workload": workload}
        study, settings, wl, info = create_or_resume(name, storage_obj, given)
        err_console.print(f"worker on study [bold]{name}[/] ({storage})")
        budget = "".join(
            f" {flag} {v}" for flag, v in (("--n-trials", n_trials), ("--total", total)) if v
        )
        result = _loop(
            study, settings, wl, info,
            storage=storage, n_trials=n_trials, total=total, timeout=timeout,
            resume_command=f"autocompress worker {name} --storage {storage}{budget}"
            + _workload_flag(settings),
            callbacks=trackers,
        )  # fmt: skip
        _report_stop(result, name)


def demo(
    total: Annotated[
        int, typer.Option(help="Completed trials the demo study should have (tops up).")
    ] = 20,
    study: Annotated[str, typer.Option("--study", help="Study name.")] = "demo",
    storage: StorageOpt = "",
    threads: Annotated[int, typer.Option(help="Threads the model runs with.")] = 1,
    mlflow: MLflowOpt = None,
) -> None:
    """Run the default study: the digits CNN, the default space, until 20 trials, then its front.

    Example:

        autocompress demo
    """
    from autocompress.search_space import load_search_space
    from autocompress.study import create_or_resume, open_storage

    with _user_errors(), interruptible():
        check_budget(None, total, None)
        check_run_options(threads=threads)
        trackers = _trackers(mlflow, study)
        storage = storage or _default_storage()
        storage_obj = open_storage(storage, write=True)
        exists = study in _names(storage_obj)
        given: dict[str, Any] = {"target": {"threads": threads}}
        if not exists:
            given.update(
                workload="digits",
                space_text=load_search_space(_resolve_space(None)).text,
                space_source=str(DEFAULT_SPACE),
            )
        err_console.print(f"study [bold]{study}[/] on {storage}")
        the_study, settings, wl, info = create_or_resume(
            study,
            storage_obj,
            given,
            on_baseline=lambda: err_console.print("measuring the baseline (once per study)..."),
        )
        _print_baseline(info, settings)
        result = _loop(
            the_study, settings, wl, info,
            storage=storage, n_trials=None, total=total, timeout=None,
            resume_command=f"autocompress demo --study {study} --storage {storage}",
            callbacks=trackers,
        )  # fmt: skip
        _report_stop(result, study)
        _print_front(study, storage)
