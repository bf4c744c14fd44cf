"""The ``autocompress`` command line: thin verbs over the study, workload and space modules.

Each verb lives in the module for its concept (``_run``, ``_inspect``, ``_recipes``) and is
registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

import signal
import sys

import typer

from autocompress.cli._common import _main, err_console
from autocompress.cli._inspect import (
    dashboard,
    pareto,
    report,
    sensitivity,
    study_list,
    study_status,
)
from autocompress.cli._recipes import apply_command, export
from autocompress.cli._run import demo, study_run, worker

__all__ = ["app", "main"]

app = typer.Typer(
    help="Find the best way to compress a PyTorch model for your hardware (an Optuna study).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
study_app = typer.Typer(help="Start, resume and inspect compression studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.callback()(_main)
study_app.command("run")(study_run)
study_app.command("list")(study_list)
study_app.command("status")(study_status)
app.command()(worker)
app.command()(pareto)
app.command()(dashboard)
app.command()(report)
app.command()(sensitivity)
app.command()(demo)
app.command()(export)
app.command("apply")(apply_command)


def main() -> None:
    """Console-script entry point."""
    # A command started with `&` from a script inherits SIGINT ignored: Ctrl-C and kill -INT
    # would not stop it. Every verb stops on SIGINT (exit 130), in the background too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
