"""Files that ship with autocompress: the search spaces (a leaf module, no heavy imports)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SPACE = Path("search_spaces") / "default.yaml"
# The shipped spaces, inside the package: a link to the checkout's search_spaces/ (a wheel
# holds copies), found by file name when the path given does not exist from here.
SHIPPED_SPACES = Path(__file__).resolve().parent / "search_spaces"


def resolve_space(path: str | os.PathLike[str] | None) -> Path:
    """The space file to read: ``path`` (default :data:`DEFAULT_SPACE`), or the shipped space
    of that file name when ``path`` is relative and does not exist from the current folder."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    if not path.exists() and not path.is_absolute() and (SHIPPED_SPACES / path.name).exists():
        return SHIPPED_SPACES / path.name
    return path
