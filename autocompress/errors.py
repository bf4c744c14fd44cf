"""User-facing errors: one line each, saying what was wrong, where, and what to do."""


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
