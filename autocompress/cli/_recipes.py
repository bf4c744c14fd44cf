"""The recipe verbs: ``export`` a trial's recipe, ``apply`` one to rebuild its model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from autocompress.cli._common import (
    StorageOpt,
    _default_storage,
    _user_errors,
    console,
    err_console,
)
from autocompress.errors import AutocompressError


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
