"""The ``autocompress`` command line: thin verbs over the study, workload and space modules."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autocompress import __version__
from autocompress.errors import AutocompressError
from autocompress.search_space import load_search_space

app = typer.Typer(
    help="Find the best way to compress a PyTorch model for your hardware (an Optuna study).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
study_app = typer.Typer(help="Start, resume and inspect compression studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")

# Tables stay readable when the output is a file or a pipe, not a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
_state = {"debug": False}

DEFAULT_SPACE = Path("search_spaces") / "default.yaml"
_REPO_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the study database: a SQLite file (default, under studies/) "
        "or postgresql://user@host/db for many workers on many machines.",
    ),
]


def _default_storage() -> str:
    from autocompress.study import DEFAULT_STORAGE

    return DEFAULT_STORAGE


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a user's mistake into one line on stderr and exit code 2 (``--debug``: traceback)."""
    try:
        yield
    except AutocompressError as e:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


def _resolve_space(path: Path | None) -> Path:
    if path is None:
        path = DEFAULT_SPACE
    if not path.exists() and not path.is_absolute() and (_REPO_SPACES / path.name).exists():
        return _REPO_SPACES / path.name
    return path


def _quiet_libraries() -> None:
    """Our progress bars and tables replace Optuna's per-trial log lines and API notices."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """autocompress: one joint, multi-objective search over pruning, quantization,
    distillation and fine-tuning, with accuracy, latency and size measured on the target."""
    _state["debug"] = debug
    _quiet_libraries()
    if version:
        console.print(f"autocompress {__version__}")
        raise typer.Exit()


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


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@study_app.command("run")
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


@study_app.command("list")
def study_list(storage: StorageOpt = "") -> None:
    """List the studies in a storage with their trial counts.

    Example: autocompress study list --storage sqlite:///studies/autocompress.db
    """
    import optuna

    from autocompress.study import open_storage

    with _user_errors():
        storage_obj = open_storage(storage or _default_storage())
        table = Table("study", "trials", "complete", "workload", "created")
        for name in optuna.get_all_study_names(storage_obj):
            s = optuna.load_study(study_name=name, storage=storage_obj)
            trials = s.get_trials(deepcopy=False)
            info = s.user_attrs.get("autocompress", {})
            table.add_row(
                name,
                str(len(trials)),
                str(sum(t.state.name == "COMPLETE" for t in trials)),
                info.get("settings", {}).get("workload", "?"),
                info.get("created", "?"),
            )
        console.print(table)


@study_app.command("status")
def study_status(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
) -> None:
    """Trials by state, best feasible values and time spent.

    Example: autocompress study status demo
    """
    from autocompress.study import STRUCTURED_FAILURES_LIMIT, load_study, study_info, summarize

    with _user_errors():
        study = load_study(name, storage or _default_storage())
        s = summarize(study)
        info = study_info(study)
        console.print(
            f"study [bold]{name}[/]: workload {info['settings']['workload']}, "
            f"{s['n_trials']} trials, {s['seconds']:.0f} s of trial time"
        )
        console.print("by state: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))
        console.print(
            f"feasible (within the accuracy budget): {s['n_feasible']}, "
            f"Pareto front: {s['front_size']}"
        )
        if s["best"]:
            b = s["best"]
            console.print(
                f"best feasible: accuracy {b['accuracy']:.4f}, latency "
                f"{b['latency_ms']:.3f} ms, size {b['size_kb']:.1f} KB"
            )
        for number, reason in s["failed"]:
            console.print(f"trial {number} failed: {reason}", highlight=False, soft_wrap=True)
        for number, reason in s["stopped"]:
            console.print(f"trial {number} {reason}", highlight=False, soft_wrap=True)
        if s["structured_failures"] >= STRUCTURED_FAILURES_LIMIT:
            console.print("structured pruning is no longer offered: it failed on this model")


def _print_front(name: str, storage: str) -> None:
    from autocompress.study import (
        FRONT_COLUMNS,
        feasible_front,
        front_rows,
        load_study,
        study_info,
    )

    study = load_study(name, storage)
    info = study_info(study)
    base = info["baseline"]
    drop = info["settings"]["max_accuracy_drop"]
    table = Table(*FRONT_COLUMNS, title=f"{name}: feasible Pareto front (accuracy drop <= {drop})")
    front = feasible_front(study)
    for k, row in enumerate(front_rows(base, front)):
        table.add_row(*row, style="dim" if k == 0 else None)
    console.print(table)
    if not front:
        console.print("no trial within the accuracy budget yet")


@app.command()
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


@app.command()
def pareto(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
) -> None:
    """Print the feasible Pareto front (accuracy, latency, size) with the baseline for reference.

    Example: autocompress pareto demo
    """
    with _user_errors():
        _print_front(name, storage or _default_storage())


@app.command()
def dashboard(
    name: Annotated[
        str | None, typer.Argument(help="Study to open (default: the list of all studies).")
    ] = None,
    storage: StorageOpt = "",
    host: Annotated[
        str, typer.Option(help="Address to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
) -> None:
    """Browse a study in optuna-dashboard: Pareto front, trial notes, recipe artifacts.

    Infeasible trials (over the accuracy budget) are greyed out on its Pareto front and
    marked in each trial's note and ``feasible`` attribute.

    Example: autocompress dashboard demo --port 8080
    """
    from autocompress.dashboard import dashboard_app, make_dashboard_server, study_url
    from autocompress.study import STUDIES_DIR, load_study, open_storage

    with _user_errors():
        storage_obj = open_storage(storage or _default_storage())
        study = load_study(name, storage_obj) if name else None
        app_ = dashboard_app(storage_obj, STUDIES_DIR, name)
        try:
            server = make_dashboard_server(app_, host, port)
        except OSError as e:
            raise AutocompressError(
                f"cannot listen on {host}:{port} ({e.strerror}); try another --port"
            ) from None
        url = study_url(host, server.server_port, study)
        console.print(f"optuna-dashboard at [bold]{url}[/] (Ctrl-C to stop)", soft_wrap=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("dashboard stopped")
        finally:
            server.server_close()


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: NAME-report.html or .png).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="html (self-contained, opens offline) or png (one image)."),
    ] = "html",
) -> None:
    """Write a static report: Pareto front projections, hypervolume over trials, importances.

    Example: autocompress report demo --out report.html
    """
    from autocompress.report import FORMATS, write_report
    from autocompress.study import load_study

    with _user_errors():
        if fmt not in FORMATS:
            raise AutocompressError(f"--format {fmt!r}: use html or png")
        study = load_study(name, storage or _default_storage())
        path = out or Path(f"{name}-report.{fmt}")
        data = write_report(study, path, fmt)
        final = data.hypervolume[-1][2] if data.hypervolume else 0.0
        console.print(
            f"wrote {path}: {len(data.trials)} trials, front {len(data.front)}, "
            f"hypervolume {final:.4f} of the reference box",
            soft_wrap=True,
        )


@app.command()
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


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    out: Annotated[Path, typer.Option("--out", help="Recipe file to write (YAML).")],
    storage: StorageOpt = "",
    trial: Annotated[
        int | None, typer.Option("--trial", help="Export this trial (any COMPLETE one).")
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="Only front trials with validation accuracy >= this.")
    ] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(help="Only front trials with latency <= this (ms).")
    ] = None,
    max_size_kb: Annotated[
        float | None, typer.Option(help="Only front trials with size <= this (KB).")
    ] = None,
    minimize: Annotated[
        str | None, typer.Option(help="Pick the trial with the least latency or size.")
    ] = None,
    maximize: Annotated[
        str | None, typer.Option(help="Pick the most accurate trial (the default).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory, if the baseline must be retrained.")
    ] = None,
) -> None:
    """Write the recipe of one trial: --trial N, or a rule over the feasible Pareto front.

    Example: autocompress export demo --min-accuracy 0.98 --minimize latency --out r.yaml
    """
    from autocompress.recipe import Selection, build_recipe, save_recipe, select_trial
    from autocompress.study import load_study, study_info
    from autocompress.workload import load_workload

    with _user_errors():
        if minimize is not None and maximize is not None:
            raise AutocompressError("give --minimize or --maximize, not both")
        if minimize not in (None, "latency", "size"):
            raise AutocompressError(f"--minimize {minimize!r}: use latency or size")
        if maximize not in (None, "accuracy"):
            raise AutocompressError(f"--maximize {maximize!r}: use accuracy")
        selection = Selection(
            trial=trial,
            min_accuracy=min_accuracy,
            max_latency_ms=max_latency_ms,
            max_size_kb=max_size_kb,
            optimize=minimize or "accuracy",
        )
        study = load_study(name, storage or _default_storage())
        chosen = select_trial(study, selection)
        settings = study_info(study)["settings"]
        # The baseline (cached) is needed for its fingerprint and layer names.
        workload = load_workload(
            settings["workload"],
            data_dir=data_dir or settings.get("data_dir"),
            seed=settings["seed"],
        )
        recipe = build_recipe(study, chosen, workload.model)
        save_recipe(recipe, out)
        m = recipe.metrics
        console.print(
            f"trial {chosen.number} ({selection.describe()}): accuracy "
            f"{m['validation_accuracy']:.4f}, latency {m['latency_ms']:.3f} ms, size "
            f"{m['size_kb']:.1f} KB; {recipe.source['summary']}"
        )
        console.print(f"recipe written to {out}")


def _fmt(value: object, key: str) -> str:
    if value is None:
        return "-"
    if key == "size_bytes":
        return f"{int(value):,}"
    return f"{float(value):.4f}"


@app.command("apply")
def apply_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (from `autocompress export`).")],
    workload: Annotated[
        str | None, typer.Option(help="Workload to apply to (default: the recipe's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: RECIPE-NAME-model).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Directory with MNIST IDX files (MNIST workloads).")
    ] = None,
) -> None:
    """Rebuild a recipe's compressed model, export it, re-measure it beside the recipe's numbers.

    Writes model.acpk (packed), model.pt (TorchScript) and model.onnx where the model allows.

    Example: autocompress apply r.yaml --out deploy/
    """
    import shutil

    from autocompress.apply import export_deployables, rebuild, remeasure
    from autocompress.recipe import load_recipe
    from autocompress.workload import load_workload

    with _user_errors():
        r = load_recipe(recipe)
        out_dir = out or Path(f"{recipe.stem}-model")
        wl = load_workload(workload or r.workload, data_dir=data_dir, seed=r.baseline_seed)
        err_console.print(f"applying {recipe} ({r.source.get('summary', '')}) to {wl.name}...")
        rebuilt = rebuild(wl, r, out_dir / "model.acpk")
        for note in rebuilt.warnings:
            err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
        exports = export_deployables(wl, rebuilt.compressed, r.config, out_dir)
        if recipe.resolve() != (out_dir / "recipe.yaml").resolve():
            shutil.copyfile(recipe, out_dir / "recipe.yaml")
        measured = remeasure(wl, rebuilt.compressed, r, out_dir)
        deployed = measured.pop("deployed")
        table = Table("metric", "recipe", "re-measured", "difference", title=f"{recipe.name}")
        for key in measured:
            want, got = r.metrics.get(key), measured[key]
            diff = "-" if want is None else f"{float(got) - float(want):+.4f}"
            if key == "size_bytes" and want is not None:
                diff = f"{int(got) - int(want):+,}"
            table.add_row(key, _fmt(want, key), _fmt(got, key), diff)
        console.print(table)
        if rebuilt.pruning != "none":
            console.print(f"structured pruning reproduced by: {rebuilt.pruning}")
        console.print(f"packed model: {rebuilt.compressed.artifact_path}")
        console.print(f"measured on {r.target.get('runtime', 'torch')}: {deployed}")
        for fmt, where in exports.items():
            console.print(f"{fmt}: {where}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
