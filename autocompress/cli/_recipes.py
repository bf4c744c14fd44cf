"""The recipe verbs: ``export`` a trial's recipe, ``apply`` one to rebuild its model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from autocompress.cli._common import (
    StorageOpt,
    TrustedWorkloadOpt,
    _existing_storage,
    _user_errors,
    console,
    err_console,
    shown,
)
from autocompress.errors import AutocompressError, RecipeError

MAX_KEY_BYTES = 65_536  # a secret is a few dozen bytes


def _read_key(path: Path, flag: str) -> bytes:
    from autocompress.safe_input import read_bytes

    # The bounded reader: /dev/zero would grow without end, a FIFO would block forever.
    key = read_bytes(path, f"the key of {flag}", RecipeError, MAX_KEY_BYTES)
    if len(key.strip()) < 16:
        raise RecipeError(f"{flag} {path}: the key is shorter than 16 bytes; use a longer secret")
    return key.strip()


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
    metric_limit: Annotated[
        float | None,
        typer.Option(
            help="Only front trials whose validation metric is at least this (at most, when "
            "lower is better, e.g. perplexity)."
        ),
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
        str | None, typer.Option(help="Pick the best metric (the default): accuracy or metric.")
    ] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(help="Sign the recipe with HMAC-SHA256 under the secret in this file."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory, if the baseline must be retrained.")
    ] = None,
    workload: TrustedWorkloadOpt = None,
) -> None:
    """Write the recipe of one trial: --trial N, or a rule over the feasible Pareto front.

    Example:

        autocompress export demo --min-accuracy 0.98 --minimize latency --out r.yaml
    """

    from autocompress.recipe import (
        Selection,
        build_recipe,
        export_warnings,
        save_recipe,
        select_trial,
    )
    from autocompress.record import metric_name, study_info
    from autocompress.safe_output import atomic_output, check_output_path
    from autocompress.study import check_baseline, load_study
    from autocompress.workload import load_workload, trusted_workload

    with _user_errors():
        check_output_path(out, "recipe", RecipeError)
        if minimize is not None and maximize is not None:
            raise AutocompressError("give --minimize or --maximize, not both")
        if minimize not in (None, "latency", "size"):
            raise AutocompressError(f"--minimize {minimize!r}: use latency or size")
        if maximize not in (None, "accuracy", "metric"):
            raise AutocompressError(f"--maximize {maximize!r}: use metric (or accuracy)")
        if min_accuracy is not None and metric_limit is not None:
            raise AutocompressError("give --min-accuracy or --metric-limit, not both")
        selection = Selection(
            trial=trial,
            metric_limit=metric_limit if metric_limit is not None else min_accuracy,
            max_latency_ms=max_latency_ms,
            max_size_kb=max_size_kb,
            optimize=minimize or "metric",
        )
        study = load_study(name, _existing_storage(storage))
        info = study_info(study)
        if min_accuracy is not None and metric_name(info) != "accuracy":
            raise AutocompressError(
                f"--min-accuracy: study {name!r} measures {metric_name(info)}; use --metric-limit"
            )
        chosen = select_trial(study, selection)
        settings = info["settings"]
        # The baseline (cached) is needed for its fingerprint and layer names: the study's own
        # baseline, never another one that happens to be cached.
        loaded = load_workload(
            trusted_workload(settings["workload"], workload, name),
            data_dir=data_dir or settings.get("data_dir"),
            seed=settings.get("seed", 0),
        )
        check_baseline(loaded, info, name)
        recipe = build_recipe(study, chosen, loaded.model)
        if sign_key is not None:
            recipe = recipe.signed(_read_key(sign_key, "--sign-key"))
        with atomic_output(out, "recipe", RecipeError) as tmp:
            save_recipe(recipe, tmp)
        value, latency, size = chosen.values
        console.print(
            f"trial {chosen.number} "
            f"({selection.describe(metric_name(info), info['task']['higher_is_better'])}): "
            f"{metric_name(info)} {value:.4f}, latency {latency:.3f} ms, size {size:.1f} KB "
            f"({info['size']}); {shown(recipe.source['summary'])}",
            highlight=False,
        )
        for warning in export_warnings(info, chosen, value):
            err_console.print(f"[yellow]warning:[/] trial {chosen.number}: {warning}")
        console.print(f"recipe written to {out}")


def _fmt(value: float | str | None, key: str) -> str:
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return f"{int(value):,}"
    if isinstance(value, str):
        return value
    return f"{float(value):.4f}"


def apply_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (from `autocompress export`).")],
    workload: Annotated[
        str | None,
        typer.Option(
            help="Workload to apply to. Built-in workloads load by name; a recipe never "
            "imports code, so a package.module:function workload must be named here."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: RECIPE-NAME-model).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Directory with a built-in workload's data.")
    ] = None,
    verify_key: Annotated[
        Path | None,
        typer.Option(help="Refuse the recipe unless it is signed with the secret in this file."),
    ] = None,
) -> None:
    """Rebuild a recipe's compressed model, export it, re-measure it beside the recipe's numbers.

    Writes model.acpk (packed), model.pt (TorchScript) and model.onnx where the model allows.

    Example:

        autocompress apply r.yaml --out deploy/
    """
    from autocompress.apply import export_deployables, rebuild, remeasure
    from autocompress.recipe import load_recipe
    from autocompress.safe_input import read_bytes
    from autocompress.safe_output import staged_folder
    from autocompress.workload import load_workload
    from autocompress.zoo import BUILTIN_WORKLOADS

    with _user_errors():
        r = load_recipe(recipe)
        if verify_key is not None:
            r.verify(_read_key(verify_key, "--verify-key"))
        ref = workload or r.workload
        if workload is None and r.workload not in BUILTIN_WORKLOADS:
            raise RecipeError(
                f"the recipe names workload {shown(r.workload)!r}; a recipe never imports code: "
                f"pass --workload {shown(r.workload)} to load it (only if you trust that module)"
            )
        out_dir = out or Path(f"{recipe.stem}-model")
        if out_dir.exists() and not out_dir.is_dir():
            raise AutocompressError(f"--out {out_dir} is a file; give a folder")
        wl = load_workload(ref, data_dir=data_dir, seed=r.baseline_seed)
        err_console.print(
            f"applying {shown(recipe)} ({shown(r.source.get('summary', ''))}) to {wl.name}..."
        )
        # Written into a fresh folder, then renamed into --out whole: a symlink planted in
        # --out is replaced, never followed, and a failure (a full disk) leaves nothing there.
        with staged_folder(out_dir, "the model", RecipeError) as stage:
            rebuilt = rebuild(wl, r, stage / "model.acpk")
            (stage / "recipe.yaml").write_bytes(read_bytes(recipe, "recipe", RecipeError))
            measured = remeasure(wl, rebuilt.compressed, r, stage)
            exports = export_deployables(wl, rebuilt.compressed, r, stage, measured=measured)

        def final(text: object) -> str:  # where the staged files now are
            return shown(str(text).replace(str(stage), str(out_dir)), 2000)

        for note in rebuilt.warnings:
            err_console.print(f"[yellow]warning:[/] {shown(note)}", soft_wrap=True)
        deployed = measured.pop("deployed")
        files = measured.pop("deployed_files")
        table = Table("metric", "recipe", "re-measured", "difference", title=f"{recipe.name}")
        for key in measured:
            want, got = r.metrics.get(key), measured[key]
            if isinstance(got, str):
                same = "same" if want == got else "differs"
                table.add_row(shown(key), shown(_fmt(want, key)), shown(got), same)
                continue
            diff = "-" if want is None else f"{float(got) - float(want):+.4f}"
            if key.endswith("_bytes") and want is not None:
                diff = f"{int(got) - int(want):+,}"
            table.add_row(shown(key), _fmt(want, key), _fmt(got, key), diff)
        console.print(table)
        console.print(f"packed model: {final(rebuilt.compressed.artifact_path)} "
                      f"({measured['packed_bytes']:,} bytes)")  # fmt: skip
        named = " + ".join(files) if len(files) > 1 else deployed
        console.print(f"measured on {shown(r.target.get('runtime', 'torch'))}: {final(named)} "
                      f"({measured['deployed_bytes']:,} bytes)")  # fmt: skip
        for fmt, where in exports.items():
            console.print(f"{fmt}: {final(where)}")
        console.print(
            "load the packed model with autocompress.pipeline.load_compressed(PATH, baseline, "
            "example_input, task); a deployed file (.pt, .onnx, .xml) with "
            "autocompress.deploy.load_deployed(PATH)",
            highlight=False,
        )
