"""The study database: an Optuna RDB storage on a URL, with heartbeats for lost workers."""

from __future__ import annotations

import fcntl
import os
import random
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from autocompress.errors import AutocompressError, StorageError
from autocompress.storage_checks import (
    check_sqlite_writable,
    prepare_sqlite_file,
    schema_error,
    sqlite_error,
    sqlite_lock_file,
    sqlite_path,
)

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = f"sqlite:///{STUDIES_DIR / 'autocompress.db'}"
HEARTBEAT_ENV = "AUTOCOMPRESS_HEARTBEAT_INTERVAL"  # seconds between a running trial's heartbeats
GRACE_ENV = "AUTOCOMPRESS_GRACE_PERIOD"  # seconds without a heartbeat before a trial is failed


def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AutocompressError(f"{name}={raw!r}: use a whole number of seconds") from None
    if value < 1:
        raise AutocompressError(f"{name}={raw!r}: use 1 second or more")
    return value


@contextmanager
def _creation_lock(path: Path | None) -> Iterator[None]:
    """Hold the database's lock file while Optuna makes its tables: processes started
    together on a fresh SQLite file otherwise race to create them (``table alembic_version
    already exists``) and all but one fail."""
    if path is None:
        yield
        return
    fd = sqlite_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


CREATION_TRIES = 8  # processes started together on a fresh server database


def _rdb_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; on a fresh PostgreSQL or MySQL database, processes started together
    race to create its tables and types (5 of 6 failed with ``duplicate key value violates
    unique constraint "pg_type_typname_nsp_index"``): the losers try again once the winner has
    made them. (SQLite files are serialised by their lock file instead.)"""
    for attempt in range(CREATION_TRIES):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            if sqlite_path(url) is not None or attempt == CREATION_TRIES - 1:
                raise
            text = str(getattr(e, "orig", e)).lower()
            if "duplicate" not in text and "already exists" not in text:
                raise
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def open_storage(
    url: str = DEFAULT_STORAGE, create: bool = True, write: bool = True
) -> optuna.storages.RDBStorage:
    """An RDB storage on ``url`` (SQLite file, PostgreSQL, MySQL), with heartbeats.

    A worker that dies mid-trial stops its heartbeat; the trial is then marked FAILED and
    retried once by another worker (Optuna's ``RetryHeartbeatStaleTrialCallback``). The
    heartbeat interval (30 s) and grace period (90 s) can be changed with the environment
    variables ``AUTOCOMPRESS_HEARTBEAT_INTERVAL`` and ``AUTOCOMPRESS_GRACE_PERIOD``.

    Args:
        url: SQLAlchemy URL of the database. In-memory SQLite is refused: trials record from
            other threads and everything is lost when the process ends.
        create: Create a missing SQLite file and its folders. Verbs that only read a study
            or join one pass False, so a mistyped path is an error, not a new empty database.
        write: Check before any work that an SQLite database can be written (False for the
            verbs that only read).

    Raises:
        StorageError: The URL is malformed or in memory, the database cannot be reached, is
            missing (``create=False``), is not a database, is read-only (``write=True``) or
            was written by another Optuna schema.
    """
    heartbeat_interval = _env_seconds(HEARTBEAT_ENV, 30)
    grace_period = _env_seconds(GRACE_ENV, max(90, 3 * heartbeat_interval))
    if grace_period < 2 * heartbeat_interval:
        # A live worker beats every interval: a shorter grace fails its running trials.
        raise AutocompressError(
            f"{GRACE_ENV}={grace_period} is shorter than two heartbeats ({HEARTBEAT_ENV}="
            f"{heartbeat_interval}): live trials would be failed as lost; use at least "
            f"{2 * heartbeat_interval} (3 heartbeats or more is safer)"
        )
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        prepare_sqlite_file(path, create)
        # Several local processes share one file: wait for locks instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs["pool_pre_ping"] = True
    where = f"study database {path}" if path is not None else f"storage {url!r}"
    try:
        with _creation_lock(path if write else None), warnings.catch_warnings():
            # Heartbeats and retries are marked experimental; they are what we rely on.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _rdb_storage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1
                ),
            )
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise StorageError(
            f"storage URL {url!r} is not valid ({str(e).splitlines()[0]}); "
            "use e.g. sqlite:///studies/autocompress.db or postgresql://user@host/db"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        if path is not None:
            raise sqlite_error(path, e) from None
        reason = str(getattr(e, "orig", e) or e).strip().splitlines()[0]
        raise StorageError(f"cannot reach storage {url!r}: {reason}") from None
    except ImportError as e:
        driver = getattr(e.__cause__, "name", None) or e.name
        raise StorageError(
            f"storage {url!r} needs a database driver that is not installed ({driver}); "
            "pip install -e '.[postgres]' or -e '.[mysql]' in the autocompress checkout"
        ) from None
    except RuntimeError as e:  # Optuna's schema check
        mapped = schema_error(where, url, e)
        if mapped is None:
            raise
        raise mapped from None
    if path is not None and write:
        check_sqlite_writable(storage, path)
    return storage
