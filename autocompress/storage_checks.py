"""What can be wrong with a study database before Optuna reads it, in one line each.

An SQLite URL names a file: in memory (lost at exit), missing (a mistyped path would silently
become a new empty database), not a database, read-only. Optuna itself refuses a database
whose schema another Optuna version wrote, with a paragraph; :func:`schema_error` says it in
one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import optuna
import sqlalchemy
import sqlalchemy.exc

from autocompress.errors import StorageError
from autocompress.safe_input import non_file_kind

SQLITE_HEADER = b"SQLite format 3\x00"

IN_MEMORY = "in-memory storage loses the study when the process ends; use sqlite:///studies/NAME.db"


def sqlite_path(url: str) -> Path | None:
    """The file an SQLite URL names; None for another database (or a URL SQLAlchemy rejects).

    Raises:
        StorageError: The URL is in-memory SQLite (``sqlite://``, ``sqlite:///:memory:``).
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None  # open_storage reports it
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    memory = parsed.query.get("mode") == "memory"
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        database = unquote(urlparse(database).path)  # file:/a/b.db, file:///a/b.db
    if memory or database in ("", ":memory:") or database.startswith(":memory:"):
        raise StorageError(f"storage {url!r}: {IN_MEMORY}")
    return Path(database)


def prepare_sqlite_file(path: Path, create: bool) -> None:
    """Refuse a missing file unless ``create`` (then make its folders); refuse a folder.

    Raises:
        StorageError: Missing with ``create=False``, a directory, or folders not creatable.
    """
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a study database; check --storage")
    if path.exists():
        _check_database_file(path, create)
        return
    if not create:
        raise StorageError(
            f"no study database at {path}; check --storage (`autocompress study run` creates one)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot create the folder of study database {path}: {e.strerror or e}; check --storage"
        ) from None


def _check_database_file(path: Path, create: bool) -> None:
    """Refuse what SQLite would block on (a FIFO) or turn into a database: a verb that only
    reads (``create=False``) must never make an empty or foreign file a study database.

    Raises:
        StorageError: Not a regular file; or, for a reading verb, empty or not SQLite.
    """
    kind = non_file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise StorageError(f"{path} is {kind}, not a study database; check --storage")
    if create:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise StorageError(
            f"cannot read study database {path}: {e.strerror or e}; check --storage"
        ) from None
    if not head:
        raise StorageError(
            f"{path} is empty, not a study database; check --storage (`autocompress study run` "
            "creates one)"
        )
    if head != SQLITE_HEADER:
        raise StorageError(
            f"{path} is not an SQLite database (file is not a database); check --storage, or "
            "restore the file from a backup"
        )


def sqlite_lock_file(path: Path) -> int:
    """Open (creating) the lock file beside a study database; its file descriptor.

    Raises:
        StorageError: The lock file is a directory, a FIFO or anything but a regular file
            (checked without blocking: opening a FIFO to write would wait for a reader).
    """
    lock = Path(f"{path}.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)
    except OSError as e:
        try:
            kind = non_file_kind(os.stat(lock).st_mode)
        except OSError:
            kind = None
        why = f"it is {kind}" if kind else (e.strerror or str(e))
        raise StorageError(
            f"cannot use the lock file {lock} of the study database: {why}; remove it (it is "
            "recreated) or fix its permissions"
        ) from None
    kind = non_file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise StorageError(
            f"cannot use the lock file {lock} of the study database: it is {kind}; remove it "
            "(it is recreated)"
        )
    return fd


def sqlite_error(path: Path, error: sqlalchemy.exc.SQLAlchemyError) -> StorageError:
    """One line for what SQLite raised on opening ``path``."""
    reason = _reason(error)
    if "file is not a database" in reason:
        return StorageError(
            f"{path} is not an SQLite database ({reason}); check --storage, or restore the "
            "file from a backup"
        )
    if "readonly" in reason or "read-only" in reason:
        return _read_only(path, reason)
    return StorageError(f"cannot open study database {path}: {reason}; check --storage")


def check_sqlite_writable(storage: optuna.storages.RDBStorage, path: Path) -> None:
    """Write to the database and roll back, so a read-only one fails now, not mid-study.

    A read-only file (permissions, ``chattr +i``, a read-only mount, ``?mode=ro``) opens and
    reads fine; only the first write would fail, inside Optuna, as a traceback.

    Raises:
        StorageError: The database, or the folder its journal goes to, cannot be written.
    """
    try:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                conn.exec_driver_sql("UPDATE version_info SET library_version = library_version")
            finally:
                conn.exec_driver_sql("ROLLBACK")
    except sqlalchemy.exc.OperationalError as e:
        reason = _reason(e)
        if "readonly" in reason or "unable to open" in reason:
            raise _read_only(path, reason) from None
        raise StorageError(f"cannot write study database {path}: {reason}") from None


def _read_only(path: Path, reason: str) -> StorageError:
    return StorageError(
        f"study database {path} is read-only ({reason}); make it and its folder writable, "
        "or copy it and pass --storage sqlite:///COPY.db"
    )


def schema_error(where: str, url: str, error: RuntimeError) -> StorageError | None:
    """One line for Optuna's schema-version refusal; None for any other RuntimeError."""
    text = str(error)
    if "no longer compatible with the table schema" not in text:
        return None
    found = re.search(r"set up by optuna ([^)\s]+)", text)
    other = found.group(1) if found else "another version"
    if "pip install -U optuna" in text:
        return StorageError(
            f"{where} was written by a newer Optuna ({other}) than this one "
            f"({optuna.__version__}); upgrade: pip install -U optuna"
        )
    return StorageError(
        f"{where} was written by an older Optuna ({other}); back it up, then upgrade it: "
        f"optuna storage upgrade --storage {url}"
    )


def _reason(error: sqlalchemy.exc.SQLAlchemyError) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
