"""Faults of the machine, not of the trial or of the user's input: a full disk, a read-only
or failing file system, a damaged study database. One rule says which errors they are
(:func:`machine_fault`), so every verb and the trial loop name the real cause in one line
instead of a traceback, and no trial is blamed for the disk.
"""

from __future__ import annotations

import errno

from autocompress.errors import AutocompressError

_FREE = "free space, then run it again"
_OS = {
    errno.ENOSPC: ("no space left on the device", _FREE),
    errno.EDQUOT: ("the disk quota is exceeded", _FREE),
    errno.EROFS: ("the file system is read-only", "run from a folder you can write"),
    errno.EIO: ("the disk failed to read or write (I/O error)", "check the disk"),
    errno.EACCES: ("permission denied", "run from a folder you can write, or fix permissions"),
    errno.EPERM: ("operation not permitted", "run from a folder you can write"),
}
_RESTORE = "restore it from a backup, or use another --storage"
# What SQLite says (through SQLAlchemy) when the disk or the file is at fault.
_DATABASE = {
    "database or disk is full": ("no space left for the study database", _FREE),
    "disk i/o error": ("the disk failed while using the study database (I/O error)", _RESTORE),
    "database disk image is malformed": ("the study database is damaged (malformed)", _RESTORE),
    "file is not a database": ("the study database file is not a database", _RESTORE),
    "attempt to write a readonly database": (
        "the study database is read-only",
        "make it and its folder writable",
    ),
    "unable to open database file": ("the study database cannot be opened", "check --storage"),
}
# PyTorch's file writer reports a failed write this way.
_TORCH_WRITE = ("file write failed", "PytorchStreamWriter failed")


class MachineFault(AutocompressError):
    """The disk, the file system or the study database failed; the message names which."""


def machine_fault(error: BaseException) -> str | None:
    """The machine's fault behind ``error``, in words (with the file, where known), or
    ``None`` when ``error`` is something else (a trial's or a program's own error)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:  # the cause may be wrapped
        seen.add(id(e))
        words = _one(e)
        if words is not None:
            return words
        e = e.__cause__ or e.__context__
    return None


def _one(e: BaseException) -> str | None:
    if isinstance(e, OSError) and e.errno in _OS:
        words, remedy = _OS[e.errno]
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{words}{where}; {remedy}"
    text = str(getattr(e, "orig", None) or e).lower()
    if type(e).__module__.startswith(("sqlalchemy", "sqlite3", "optuna")):
        for key, (words, remedy) in _DATABASE.items():
            if key in text:
                return f"{words}; {remedy}"
    if isinstance(e, RuntimeError) and any(k.lower() in text for k in _TORCH_WRITE):
        return f"a file could not be written (is the disk full?); {_FREE}"
    return None
