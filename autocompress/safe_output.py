"""Files written for users (reports, recipes): whole or not at all, and one-line errors.

The file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target, so a crash, a full disk or a reader never sees half a file, and an old file is only
replaced by a complete new one. A character device (``/dev/null``, a terminal) is written
directly; a directory, a FIFO or a socket is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autocompress.errors import AutocompressError
from autocompress.safe_input import non_file_kind
from autocompress.storage_checks import SQLITE_HEADER


def check_output_path(
    path: str | os.PathLike[str], what: str, error: type[AutocompressError]
) -> None:
    """Refuse an output path that can never hold a file, before any work is done.

    Raises:
        AutocompressError: ``error``: the path is a directory, a FIFO or a socket.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (created later) or unreachable (reported when written)
    kind = non_file_kind(mode)
    if kind is not None and not stat.S_ISCHR(mode):
        raise error(f"cannot write {what} to {path}: it is {kind}; give a file path with --out")
    if kind is None and _is_sqlite(path):
        raise error(
            f"cannot write {what} to {path}: it is a study database (SQLite), which the "
            f"{what} would replace; give another file name with --out"
        )


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` starts like an SQLite database (a study's own, or any other)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


@contextmanager
def atomic_output(
    path: str | os.PathLike[str], what: str, error: type[AutocompressError]
) -> Iterator[Path]:
    """A path to write ``what`` to; when the block ends, it becomes ``path`` in one rename.

    Args:
        path: The file wanted (its folders are created).
        what: What is written, for messages (``"report"``, ``"recipe"``).
        error: The error class raised.

    Yields:
        A temporary file beside ``path`` (or ``path`` itself for a character device).

    Raises:
        AutocompressError: ``error``, one line naming ``path`` and the cause, for any
            ``OSError`` while writing (no space, read-only, not a folder, ...); nothing is
            left behind.
    """
    path = Path(path)
    check_output_path(path, what, error)
    fail = f"cannot write {what} to {path}"
    if path.exists() and stat.S_ISCHR(os.stat(path).st_mode):
        try:
            yield path
        except OSError as e:
            raise error(f"{fail}: {e.strerror or e}; choose another --out") from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise error(f"{fail}: {e.strerror or e}; choose another --out") from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(path))  # mkstemp's 0600 would hide it from others
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise error(f"{fail}: {e.strerror or e}; choose another --out") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)  # gone already when renamed
        except OSError:
            pass


def _new_file_mode(path: Path) -> int:
    """The mode ``path`` has, or a new file would get from the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def staged_folder(
    folder: str | os.PathLike[str], what: str, error: type[AutocompressError]
) -> Iterator[Path]:
    """A fresh private folder to write ``what`` into; when the block ends, each file in it is
    renamed into ``folder``.

    Nothing is written through a path that was there before: a symlink planted in ``folder``
    (``model.pt -> ~/.bashrc``) is replaced by the new file, never followed. When the block
    fails (a full disk, an error), the staged files are removed and ``folder`` keeps what it
    had: nothing looks written that was not written whole.

    Raises:
        AutocompressError: ``error``, one line naming ``folder`` and the cause, for any
            ``OSError``: ``folder`` is a file, cannot be created, the disk is full.
    """
    folder = Path(folder)
    fail = f"cannot write {what} to {folder}"
    try:
        if folder.exists() and not folder.is_dir():
            raise error(f"{fail}: it is a file; give a folder with --out")
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=".staged-"))
    except OSError as e:
        raise error(f"{fail}: {e.strerror or e}; choose another --out") from None
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            if item.is_file():
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
        names = sorted(p.name for p in stage.iterdir())
        for name in names:
            there = folder / name
            if there.is_dir() and not there.is_symlink():
                raise error(f"{fail}: {there} is a folder; remove it or choose another --out")
        for name in names:
            os.replace(stage / name, folder / name)  # replaces a symlink there, never follows
    except OSError as e:
        raise error(f"{fail}: {e.strerror or e} ({e.filename or folder}); choose another "
                    "--out or free space; nothing was moved into it") from None  # fmt: skip
    finally:
        shutil.rmtree(stage, ignore_errors=True)
