"""Numbers and addresses from the command line, checked before anything is opened or written.

Typer checks types only: ``--n-trials 0``, ``--timeout nan`` or ``--threads 64`` on a 2-core
machine would otherwise create a study (and measure its baseline) and then fail, or run
nothing, or measure latencies on threads that fight over cores.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re

from autocompress.errors import AutocompressError

MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take a 32-bit seed
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_run_options(
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
) -> None:
    """Refuse impossible values of the options that run trials (None: not given).

    Raises:
        AutocompressError: One line naming the option, the value and what to use.
    """
    if n_trials is not None and n_trials < 1:
        raise AutocompressError(f"--n-trials {n_trials}: use 1 or more")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise AutocompressError(f"--timeout {timeout}: use a positive number of seconds")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise AutocompressError(f"--seed {seed}: use a whole number from 0 to {MAX_SEED}")
    if threads is not None:
        cores = os.cpu_count() or 1
        if not 1 <= threads <= cores:
            raise AutocompressError(
                f"--threads {threads}: this machine has {cores} cores; use 1 to {cores}"
            )
    from autocompress.record import MAX_BATCH_SIZE  # imports Optuna: not at CLI start

    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise AutocompressError(f"--batch-size {batch_size}: use 1 to {MAX_BATCH_SIZE}")


def check_budget(n_trials: int | None, total: int | None, timeout: float | None) -> None:
    """Refuse a run with no trial budget, or an impossible one.

    Raises:
        AutocompressError: One line naming the option and what to use.
    """
    if n_trials is None and total is None and timeout is None:
        raise AutocompressError("give --n-trials N, --total N or --timeout S")
    for flag, value in (("--n-trials", n_trials), ("--total", total)):
        if value is not None and value < 1:
            raise AutocompressError(f"{flag} {value}: use 1 or more")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise AutocompressError(f"--timeout {timeout}: use a positive number of seconds")


def check_listen(host: str, port: int) -> None:
    """Refuse a port outside 0..65535 and a host that is neither an IP address nor a name.

    Raises:
        AutocompressError: One line naming the option and what to use.
    """
    if not 0 <= port <= 65535:
        raise AutocompressError(f"--port {port}: use 0 to 65535 (0 picks a free port)")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AutocompressError(
            f"--host {host!r} is not an IP address or host name; use e.g. 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        )
