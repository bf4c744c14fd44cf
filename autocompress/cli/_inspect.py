"""The read-only verbs: ``study list``, ``study status``, ``pareto``, ``dashboard``, ``report``,
``sensitivity``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Column, Table

from autocompress.cli._common import (
    StorageOpt,
    _default_storage,
    _existing_storage,
    _user_errors,
    console,
    err_console,
    shown,
)
from autocompress.cli._validate import check_listen
from autocompress.errors import AutocompressError


def study_list(storage: StorageOpt = "") -> None:
    """List the studies in a storage with their trial counts.

    Example:

        autocompress study list --storage sqlite:///studies/autocompress.db
    """
    import optuna

    with _user_errors():
        storage_obj = _existing_storage(storage)
        names = optuna.get_all_study_names(storage_obj)
        if not names:
            console.print(
                "no studies in this storage yet; start one with "
                "`autocompress study run --study NAME --n-trials 20`"
            )
            return
        table = Table("study", "trials", "complete", "workload", "created")
        for name in names:
            s = optuna.load_study(study_name=name, storage=storage_obj)
            trials = s.get_trials(deepcopy=False)
            raw = s.user_attrs.get("autocompress")
            info: dict[str, Any] = raw if isinstance(raw, dict) else {}
            raw = info.get("settings")
            settings: dict[str, Any] = raw if isinstance(raw, dict) else {}
            table.add_row(
                shown(name),
                str(len(trials)),
                str(sum(t.state.name == "COMPLETE" for t in trials)),
                shown(settings.get("workload", "?")),
                shown(info.get("created", "?")),
            )
        console.print(table)


def study_status(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
) -> None:
    """Trials by state, best feasible values and time spent.

    Example:

        autocompress study status demo
    """
    from autocompress.hardware import hardware_fingerprint, same_hardware
    from autocompress.record import (
        baseline_words,
        budget_words,
        metric_name,
        noise_warning,
        settings_rows,
        study_info,
    )
    from autocompress.study import load_study, summarize

    with _user_errors():
        study = load_study(name, _existing_storage(storage))
        s = summarize(study)
        info = study_info(study)
        console.print(
            f"study [bold]{name}[/]: workload {info['settings']['workload']}, "
            f"{s['n_trials']} trials, {s['seconds']:.0f} s of trial time",
            highlight=False,
        )
        # Ratios hold for a host: where and with what the latencies were measured.
        rows = dict(settings_rows(info))
        for key in ("target", "instruction sets", "software"):
            if key in rows:
                console.print(f"{key}: {rows[key]}", highlight=False, soft_wrap=True)
        hw = info.get("hardware") or {}
        here = hardware_fingerprint(str(hw.get("device", "cpu")), int(hw.get("threads", 1) or 1))
        if hw and not same_hardware(here, hw):
            console.print(
                f"[yellow]note:[/] this machine ({here['cpu']}) is not the one the study "
                "measured on: its latencies are that machine's",
                highlight=False,
                soft_wrap=True,
            )
        console.print(
            "by state: "
            + (", ".join(f"{k} {v}" for k, v in s["counts"].items()) or "no trials yet")
        )
        console.print(f"baseline: {baseline_words(info)}", highlight=False, soft_wrap=True)
        console.print(
            f"feasible (within the budget, {budget_words(info)}): {s['n_feasible']}, "
            f"Pareto front: {s['front_size']}"
        )
        warning = noise_warning(info)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        if s["best"]:
            b = s["best"]
            console.print(
                f"best feasible: {metric_name(info)} {b['metric']:.4f}, latency "
                f"{b['latency_ms']:.3f} ms, size {b['size_kb']:.1f} KB ({info['size']})"
            )
        for number in s["lost"]:
            console.print(
                f"trial {number} lost: stored as RUNNING, but its worker has sent no heartbeat "
                f"for over {s['grace_period']} s (killed or crashed); the next worker marks it "
                "failed and runs it again",
                soft_wrap=True,
            )
        for number, reason in s["failed"]:
            console.print(f"trial {number} failed: {shown(reason, 2000)}", soft_wrap=True)
        for number, reason in s["stopped"]:
            console.print(f"trial {number} {shown(reason, 2000)}", soft_wrap=True)
        for method, why in s["withdrawn"].items():
            console.print(f"{method} is no longer offered: it {why}", highlight=False)


def _print_front(name: str, storage: str) -> None:
    from autocompress.record import (
        FIGURES,
        budget_words,
        feasible_front,
        front_columns,
        front_legend,
        front_rows,
        study_info,
    )
    from autocompress.study import load_study

    study = load_study(name, _existing_storage(storage))
    info = study_info(study)
    front = feasible_front(study)
    rows = front_rows(info, front)
    # Figures only, never cut: each column is at least as wide as its widest figure and its
    # header's longest word (up to 10 letters; a longer metric name folds), and a narrow
    # terminal wraps the headers. Each trial's configuration and flags follow on their own
    # wrapped lines.
    columns = [
        Column(
            c,
            min_width=max(*(len(r[i]) for r in rows), *(min(len(w), 10) for w in c.split())),
            overflow="fold",
        )
        for i, c in enumerate(front_columns(info)[:FIGURES])
    ]
    table = Table(
        *columns,
        title=f"{name}: feasible Pareto front ({budget_words(info)}; size objective: "
        f"{info['size']})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for k, row in enumerate(rows):
        table.add_row(*row[:FIGURES], style="dim" if k == 0 else None)
    console.print(table)
    for k, row in enumerate(rows):
        flags = f" [{row[FIGURES]}]" if row[FIGURES] else ""
        label = f"trial {row[0]}" if k else row[0]
        console.print(f"{label}: {row[FIGURES + 1]}{flags}", highlight=False, markup=False)
    if not front:
        console.print("no trial within the budget yet")
    console.print()
    for line in front_legend(info):
        console.print(line, highlight=False, style="dim")


def pareto(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
) -> None:
    """Print the feasible Pareto front (metric, latency, size) with the baseline for reference.

    Example:

        autocompress pareto demo
    """
    with _user_errors():
        _print_front(name, storage or _default_storage())


def dashboard(
    name: Annotated[
        str | None, typer.Argument(help="Study to open (default: the list of all studies).")
    ] = None,
    storage: StorageOpt = "",
    host: Annotated[
        str, typer.Option(help="Address to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    allow_edits: Annotated[
        bool,
        typer.Option(
            "--allow-edits",
            help="Let the dashboard change studies (delete, rename, notes, tell trials); "
            "read-only by default.",
        ),
    ] = False,
) -> None:
    """Browse a study in optuna-dashboard: Pareto front, trial notes, recipe artifacts.

    Infeasible trials (over the metric budget) are greyed out on its Pareto front and
    marked in each trial's note and ``feasible`` attribute.

    Example:

        autocompress dashboard demo --port 8080
    """
    from autocompress.dashboard import dashboard_app, make_dashboard_server, study_url
    from autocompress.study import STUDIES_DIR, artifact_dir, load_study

    with _user_errors():
        check_listen(host, port)
        storage_obj = _existing_storage(storage, write=allow_edits)
        study = load_study(name, storage_obj) if name else None
        home = artifact_dir(STUDIES_DIR, study) if study is not None else None
        app_ = dashboard_app(storage_obj, STUDIES_DIR, home, allow_edits=allow_edits)
        try:
            server = make_dashboard_server(app_, host, port)
        except OSError as e:
            raise AutocompressError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); try another --port, or "
                "--host with an address of this machine"
            ) from None
        url = study_url(host, server.server_port, study)
        mode = "edits allowed" if allow_edits else "read-only; --allow-edits to change studies"
        console.print(
            f"optuna-dashboard at [bold]{url}[/] ({mode}; Ctrl-C to stop)", soft_wrap=True
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("dashboard stopped")
        finally:
            server.server_close()


def report(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: NAME-report.html or .png).")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="html (self-contained, opens offline) or png (one image); default: from the "
            "--out extension, else html.",
        ),
    ] = None,
) -> None:
    """Write a static report: Pareto front projections, hypervolume over trials, importances.

    Example:

        autocompress report demo --out report.html
    """
    from autocompress.report import FORMATS, write_report
    from autocompress.safe_output import atomic_output, check_output_path
    from autocompress.study import load_study

    with _user_errors():
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        if fmt is None:
            fmt = suffix if suffix in FORMATS else "html"
        if fmt not in FORMATS:
            raise AutocompressError(f"--format {fmt!r}: use html or png")
        if suffix in FORMATS and suffix != fmt:
            raise AutocompressError(
                f"--out {out} ends in .{suffix} but --format is {fmt}: give a matching name, or "
                "leave --format out to take it from the name"
            )
        path = out or Path(f"{name}-report.{fmt}")
        check_output_path(path, "report", AutocompressError)
        study = load_study(name, _existing_storage(storage))
        with atomic_output(path, "report", AutocompressError) as tmp:
            data = write_report(study, tmp, fmt)
        final = data.hypervolume[-1][2] if data.hypervolume else 0.0
        console.print(
            f"wrote {path}: {len(data.trials)} trials, front {len(data.front)}, "
            f"hypervolume {final:.4f} of the reference box",
            soft_wrap=True,
        )


def sensitivity(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = "",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="text (tables), csv (one row per layer and setting) or json (the stored "
            "profile as it is).",
        ),
    ] = "text",
    sort: Annotated[
        str,
        typer.Option(
            help="sensitivity (most sensitive first: largest loss increase in the row) or "
            "model (the network's order)."
        ),
    ] = "sensitivity",
) -> None:
    """Print the study's per-layer sensitivity profile: loss increase per bit-width and ratio.

    A study without a profile (its space allocates nothing per layer by sensitivity) says so
    in one line and exits 0; with --format csv or json the output is then a header alone or
    null.

    Example:

        autocompress sensitivity per-layer-1 --format csv
    """
    from autocompress.record import study_info
    from autocompress.sensitivity_view import SORTS, study_profile
    from autocompress.study import load_study

    with _user_errors():
        if fmt not in ("text", "csv", "json"):
            raise AutocompressError(f"--format {fmt!r}: use text, csv or json")
        if sort not in SORTS:
            raise AutocompressError(f"--sort {sort!r}: use sensitivity or model")
        info = study_info(load_study(name, _existing_storage(storage)))
        profile = study_profile(info)
        if fmt == "json":
            import json

            print(json.dumps(profile, indent=2))
        elif fmt == "csv":
            _print_profile_csv(profile, sort)
        else:
            _print_profile_tables(name, info, profile, sort)
        if profile is None and fmt != "text":
            from autocompress.sensitivity_view import NO_PROFILE_HINT

            err_console.print(
                f"study {name!r} has no sensitivity profile: {NO_PROFILE_HINT}",
                highlight=False,
                soft_wrap=True,
            )


PROFILE_CSV = ("section", "method", "name", "params", "setting", "loss_increase")


def _print_profile_csv(profile: dict[str, Any] | None, sort: str) -> None:
    import csv
    import sys

    from autocompress.sensitivity_view import profile_sections

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(PROFILE_CSV)
    for section in profile_sections(profile or {}):
        for row in section.sorted_rows(sort):
            for setting, value in zip(section.settings, row.increases, strict=True):
                params = "" if row.params is None else row.params
                shown = "" if value is None else repr(value)
                out.writerow((section.key, section.method, row.name, params, setting, shown))


def _print_profile_tables(
    name: str, info: dict[str, Any], profile: dict[str, Any] | None, sort: str
) -> None:
    from autocompress.sensitivity_view import (
        NO_PROFILE_HINT,
        format_increase,
        format_params,
        legend,
        profile_sections,
    )

    if profile is None:
        console.print(
            f"study {name!r} has no sensitivity profile: {NO_PROFILE_HINT}",
            highlight=False,
            soft_wrap=True,
        )
        return
    order = "most sensitive first" if sort == "sensitivity" else "in the model's order"
    for section in profile_sections(profile):
        table = Table(
            section.noun,
            "params",
            *section.headers,
            title=f"{name}: {section.method} ({section.what}; {order})",
        )
        for row in section.sorted_rows(sort):
            table.add_row(row.name, format_params(row.params), *map(format_increase, row.increases))
        console.print(table)
    console.print(legend(info, profile), highlight=False, soft_wrap=True)
