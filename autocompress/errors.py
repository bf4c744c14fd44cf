"""User-facing errors: one line each, saying what was wrong, where, and what to do."""

import re


class AutocompressError(Exception):
    """Base of every error a user can cause; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class SearchSpaceError(AutocompressError):
    """A search-space file is malformed, has an unknown key, a wrong type or an impossible range."""


class WorkloadError(AutocompressError):
    """A workload cannot be found, imported or has data of the wrong shape."""


class StorageError(AutocompressError):
    """A storage URL is unreachable or wrong, or a study does not exist in it."""


class TrialFailure(Exception):
    """A trial could not be completed: its reason is recorded with it and the study goes on.

    Attributes:
        method: The method blamed for it (counted towards withdrawing that method), or
            ``None`` when no method is to blame (the workload, the measurement).
    """

    def __init__(self, message: str, method: str | None = None) -> None:
        super().__init__(message)
        self.method = method


class RecipeError(AutocompressError):
    """A recipe is malformed, of an unknown version, tampered with, or cannot be applied."""


def reason(error: BaseException, limit: int = 300) -> str:
    """An exception as one line, ``Type: first line of its message`` (at most ``limit``
    characters of message): the one way a failure becomes a reason a user reads.

    Terminal colour codes are dropped, and a first line that only says where the error came
    from (OpenVINO's ``Exception from src/...:``) gives way to the message's last line.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(lines) > 1 and first.startswith("Exception from"):
        first = lines[-1]
    return f"{type(error).__name__}: {first[:limit]}" if first else type(error).__name__
