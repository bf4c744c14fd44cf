"""What every command shares: consoles, the --storage option, one-line user errors, root options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autocompress import __version__
from autocompress.errors import AutocompressError

# Tables stay readable when the output is a file or a pipe, not a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
_state = {"debug": False}

DEFAULT_SPACE = Path("search_spaces") / "default.yaml"
_REPO_SPACES = Path(__file__).resolve().parent.parent.parent / "search_spaces"

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


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
