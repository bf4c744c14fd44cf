"""The verbs that run trials: ``study run``, ``worker`` and ``demo``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from autocompress.cli._common import (
    DEFAULT_SPACE,
    StorageOpt,
    _default_storage,
    _raise_interrupt,
    _resolve_space,
    _user_errors,
    err_console,
)
from autocompress.cli._inspect import _print_front
from autocompress.errors import AutocompressError
from autocompress.search_space import load_search_space


def _run_trials(
    study_name: str,
    storage: str,
    *,
    workload: str,
    space: Path | None,
    n_trials: int | None,
    timeout: float | None,
    sampler: str,
    seed: int,
    device: str,
    threads: int,
    batch_size: int,
    max_accuracy_drop: float,
    data_dir: Path | None,
    until_total: bool = False,
    target: str | None = None,
    warm_start: bool = True,
) -> None:
    from autocompress.progress import RichReporter
    from autocompress.study import StudySettings, Target, create_or_resume, open_storage, run_study

    storage_obj = open_storage(storage)
    space_text, space_source = "", str(space or DEFAULT_SPACE)
    if space is not None or not _exists(study_name, storage_obj):
        # Validated before any work; on resume without --space the stored space is used.
        space_text = load_search_space(_resolve_space(space)).text
    settings = StudySettings(
        workload=workload,
        space_text=space_text,
        space_source=space_source,
        target=Target.parse(target, threads, batch_size)
        if target
        else Target(device=device, threads=threads, batch_size=batch_size),
        max_accuracy_drop=max_accuracy_drop,
        sampler=sampler,
        seed=seed,
        data_dir=str(data_dir) if data_dir else None,
        warm_start=warm_start,
    )
    err_console.print(f"study [bold]{study_name}[/] on {storage}")
    study, settings, wl, baseline = create_or_resume(
        study_name,
        storage_obj,
        settings,
        on_baseline=lambda: err_console.print("measuring the baseline (once per study)..."),
    )
    err_console.print(
        f"baseline: accuracy {baseline['accuracy']:.4f}, latency {baseline['latency_ms']:.3f} ms "
        f"({settings.target.name}, batch {settings.target.batch_size}, "
        f"{settings.target.threads} thread(s)), "
        f"size {baseline['size_kb']:.1f} KB; budget: accuracy drop <= {settings.max_accuracy_drop}"
    )
    if until_total and n_trials is not None:
        from optuna.trial import TrialState

        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        n_trials = max(0, n_trials - done)
        if n_trials == 0:
            err_console.print(f"study {study_name!r} already has {done} completed trials")
    import optuna

    # Failed trials are reported by the reporter with their reason; Optuna's log would add
    # the traceback of every failed (or interrupted) trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # Also when started in the background, where the shell leaves SIGINT ignored.
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        with RichReporter(n_trials, err_console) as reporter:
            run_study(
                study,
                settings,
                wl,
                baseline,
                n_trials=n_trials,
                timeout=timeout,
                reporter=reporter,
            )
    except KeyboardInterrupt:
        err_console.print(
            f"\ninterrupted: the trial in flight is recorded as failed (interrupted); all others "
            f"are kept. Resume with: autocompress study run --study {study_name} "
            f"--storage {storage}"
        )
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    _print_front(study_name, storage)


def _exists(name: str, storage: object) -> bool:
    import optuna

    return name in optuna.get_all_study_names(storage)


def study_run(
    study: Annotated[str, typer.Option("--study", help="Study name; an existing one is resumed.")],
    workload: Annotated[
        str,
        typer.Option(help="Built-in digits, mnist-mlp, mnist-lenet5, or package.module:function."),
    ] = "digits",
    space: Annotated[
        Path | None,
        typer.Option(
            help="Search-space YAML (default search_spaces/default.yaml; resume: the stored one)",
        ),
    ] = None,
    storage: StorageOpt = "",
    n_trials: Annotated[int | None, typer.Option(help="Trials to run in this process.")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    sampler: Annotated[str, typer.Option(help="Optuna sampler: tpe, nsga2, random or gp.")] = "tpe",
    seed: Annotated[
        int, typer.Option(help="Seed of the sampler, the baseline and fine-tuning.")
    ] = 0,
    device: Annotated[str, typer.Option(help="Target device: cpu or cuda.")] = "cpu",
    target: Annotated[
        str | None,
        typer.Option(
            help="Target runtime: cpu-torch (default), cpu-onnxruntime, cuda-torch, "
            "cuda-onnxruntime; overrides --device."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="Threads the model runs with on the target.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size latency is measured at.")] = 32,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            help="Accuracy budget: largest allowed drop vs the baseline (0.01 = 1 point)."
        ),
    ] = 0.01,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with MNIST IDX files (or AUTOCOMPRESS_MNIST_DIR)."),
    ] = None,
    warm_start: Annotated[
        bool,
        typer.Option(
            help="On creation, enqueue one known-good start per family (int8; structured; "
            "unstructured + 4-bit) as the first trials."
        ),
    ] = True,
) -> None:
    """Create a study, or resume it, and run compression trials.

    Example: autocompress study run --study digits-1 --workload digits --n-trials 20
    """
    with _user_errors():
        if n_trials is None and timeout is None:
            raise AutocompressError("give --n-trials N or --timeout S (or both)")
        _run_trials(
            study,
            storage or _default_storage(),
            workload=workload,
            space=space,
            n_trials=n_trials,
            timeout=timeout,
            sampler=sampler,
            seed=seed,
            device=device,
            threads=threads,
            batch_size=batch_size,
            max_accuracy_drop=max_accuracy_drop,
            data_dir=data_dir,
            target=target,
            warm_start=warm_start,
        )


def worker(
    name: Annotated[str, typer.Argument(help="An existing study (made by `study run`).")],
    storage: StorageOpt = "",
    n_trials: Annotated[
        int | None,
        typer.Option(
            help="Stop when the study as a whole has N completed trials (shared by all workers)."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    allow_other_hardware: Annotated[
        bool,
        typer.Option(
            "--allow-other-hardware",
            help="Record latencies even though this machine differs from the study's.",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Directory with MNIST IDX files (or AUTOCOMPRESS_MNIST_DIR)."),
    ] = None,
) -> None:
    """Join an existing study and run its trials, with any number of other workers.

    Example: autocompress worker demo --storage postgresql://user@host/db --n-trials 40
    """
    from autocompress.hardware import hardware_fingerprint, same_hardware
    from autocompress.progress import RichReporter
    from autocompress.study import STUDIES_DIR, StudySettings, load_study, study_info
    from autocompress.workers import run_worker
    from autocompress.workload import load_workload

    with _user_errors():
        if n_trials is None and timeout is None:
            raise AutocompressError("give --n-trials N or --timeout S (or both)")
        if n_trials is not None and n_trials < 1:
            raise AutocompressError(f"--n-trials {n_trials}: use 1 or more")
        storage = storage or _default_storage()
        study = load_study(name, storage)
        info = study_info(study)
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
        wl = load_workload(
            settings.workload,
            data_dir=data_dir or settings.data_dir,
            seed=settings.seed,
            cache_dir=STUDIES_DIR / "baselines",
        )
        from autocompress.study import prepare_objective

        err_console.print(f"worker on study [bold]{name}[/] ({storage})")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
        try:
            with RichReporter(n_trials, err_console) as reporter:
                objective = prepare_objective(
                    study, settings, wl, info["baseline"], STUDIES_DIR, reporter
                )
                result = run_worker(
                    study,
                    objective,
                    n_trials=n_trials,
                    timeout=timeout,
                    callbacks=[lambda s, t: reporter.trial_finished(t)],
                )
        except KeyboardInterrupt:
            budget = f" --n-trials {n_trials}" if n_trials is not None else ""
            err_console.print(
                f"\ninterrupted: the trial in flight is recorded as failed (interrupted); all "
                f"others are kept. Resume with: autocompress worker {name} --storage {storage}"
                f"{budget}"
            )
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        err_console.print(
            f"worker done ({result.stopped_because}): {result.completed} completed, "
            f"{result.failed} failed here; the study has {result.study_completed} completed"
        )
        if result.stopped_because == "failures":
            raise AutocompressError(
                f"stopped after {result.failed} failed trials in a row; see "
                f"`autocompress study status {name}` for their reasons"
            )


def demo(
    n_trials: Annotated[
        int, typer.Option(help="Completed trials the demo study should have.")
    ] = 20,
    study: Annotated[str, typer.Option("--study", help="Study name.")] = "demo",
    storage: StorageOpt = "",
    threads: Annotated[int, typer.Option(help="Threads the model runs with.")] = 1,
) -> None:
    """Run the default study: the digits CNN, the default space, ~20 trials, then its front.

    Example: autocompress demo
    """
    with _user_errors():
        _run_trials(
            study,
            storage or _default_storage(),
            workload="digits",
            space=None,
            n_trials=n_trials,
            timeout=None,
            sampler="tpe",
            seed=0,
            device="cpu",
            threads=threads,
            batch_size=32,
            max_accuracy_drop=0.01,
            data_dir=None,
            until_total=True,
        )
