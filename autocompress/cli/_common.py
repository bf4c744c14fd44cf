"""What every command shares: consoles, the --storage option, one-line user errors, root options."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from autocompress import __version__
from autocompress.errors import AutocompressError
from autocompress.faults import machine_fault
from autocompress.shipped import resolve_space


# Tables stay readable when the output is a file or a pipe, not a terminal. No automatic
# highlighting: its patterns take time that grows faster than the text (a 40 KB word: a minute),
# and text from recipes and databases is printed.
def _width(stream: object) -> int | None:
    """The terminal's width (rich reads it, or ``COLUMNS`` when set); 160 for a pipe or file."""
    isatty = getattr(stream, "isatty", lambda: False)
    return None if isatty() or os.environ.get("COLUMNS", "").isdigit() else 160


console = Console(width=_width(sys.stdout), highlight=False)
err_console = Console(stderr=True, width=_width(sys.stderr), highlight=False)
SHOWN_CHARS = 300  # of any text that comes from a file or a database


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """Text from a file or a study database, safe to print: one line, at most ``limit``
    characters, its ``[...]`` printed as written (never read as markup: parsing markup also
    takes time that grows faster than the text)."""
    flat = " ".join(str(text).split())
    return escape(flat if len(flat) <= limit else flat[: limit - 3] + "...")


_state = {"debug": False, "interrupted": False}
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


# The workload of an existing study whose workload is code (worker, export, resume).
TrustedWorkloadOpt = Annotated[
    str | None,
    typer.Option(
        "--workload",
        help="The study's workload, when it is package.module:function: a study's "
        "database never decides what is imported, so code must be named here.",
    ),
]

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


def _existing_storage(storage: str, write: bool = False) -> Any:
    """The storage of a study database that must exist: a mistyped path is an error, never a
    new empty database. ``write``: also check that it can be written (a worker's)."""
    from autocompress.storage import open_storage

    return open_storage(storage or _default_storage(), create=False, write=write)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a user's mistake into one line on stderr and exit code 2 (``--debug``: traceback)."""
    try:
        yield
    except AutocompressError as e:
        if _state["debug"]:
            raise
        # Escaped and cut: a message may hold brackets (pip install 'autocompress[openvino]').
        err_console.print(f"[red]error:[/] {shown(e, 2000)}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except Exception as e:
        # A full disk, a read-only folder, a damaged database: the machine's fault, named.
        fault = machine_fault(e)
        if fault is None or _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {shown(fault, 2000)}", soft_wrap=True)
        raise typer.Exit(2) from None


def _resolve_space(path: Path | None) -> Path:
    return resolve_space(path)


def _quiet_libraries() -> None:
    """Our progress bars and tables replace Optuna's per-trial log lines and API notices."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"autocompress {__version__}")
        raise typer.Exit()


def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """autocompress: one joint, multi-objective search over pruning, quantization,
    distillation and fine-tuning, with the metric, latency and size measured on the target."""
    _state["debug"] = debug
    _quiet_libraries()


def _raise_interrupt(signum: int, frame: object) -> None:
    """Turn the first SIGINT or SIGTERM into ``KeyboardInterrupt``; ignore every later one.

    While the first is handled, Optuna records the trial in flight as failed and the process
    ends. A second Ctrl-C there would cut that short (the trial stays RUNNING until another
    worker's grace period) or land in a finalizer ("Exception ignored ... KeyboardInterrupt").
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _state["interrupted"] = True
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """While the command runs, SIGINT and SIGTERM raise ``KeyboardInterrupt`` (once), and an
    interrupt outside a trial ends the command with one line and exit code 130.

    Installed also for SIGINT because a command started in the background inherits it
    ignored. The previous handlers come back afterwards, unless the block was interrupted:
    then later signals stay ignored until the process exits.
    """
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in _INTERRUPTS}
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("\ninterrupted; every trial already recorded is kept")
        raise typer.Exit(130) from None
    finally:
        if not _state["interrupted"]:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
