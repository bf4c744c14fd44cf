"""The standard library's text, read offline: its source files, docstrings and help topics.

One home for reading the library as text, shared by the distillation corpus
(:mod:`autocompress.corpus`) and the ``minilm`` workload's labeled items
(:mod:`autocompress.zoo.minilm`): where the source files are, which of them are read, their
docstrings (parsed with :mod:`ast`, no module is imported), the help topics of
:mod:`pydoc_data.topics`, and how text is cut into paragraphs and cleaned of whitespace.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path

from autocompress.errors import WorkloadError

# Folders no reader takes text from: tests, third-party packages, bytecode. Files named
# test_*.py are left out as well.
TEST_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLANK_LINE = re.compile(r"\n\s*\n")


def stdlib_root() -> Path:
    """The folder of the running Python's standard library, with its source files.

    Raises:
        WorkloadError: The interpreter ships without them (only compiled files).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "ast.py").is_file():
        raise WorkloadError(
            f"the standard library's source files are not in {root} (this Python ships "
            "compiled files only); use a Python with its .py files, e.g. python.org's or a "
            "pyenv build"
        )
    return root


def source_files(root: Path, skip: Iterable[str] = ()) -> list[Path]:
    """The library's ``.py`` files, relative to ``root``, sorted by their ``/``-joined paths.

    Folders in :data:`TEST_FOLDERS` or matching a pattern of ``skip`` (``fnmatch``, case
    sensitive: ``config-*``) are not walked at all (site-packages can be large); files named
    ``test_*.py`` are left out.
    """
    patterns = [*TEST_FOLDERS, *skip]
    out = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not any(fnmatchcase(d, p) for p in patterns)]
        for name in files:
            if name.endswith(".py") and not name.startswith("test_"):
                out.append((Path(folder) / name).relative_to(root))
    return sorted(out, key=lambda path: path.as_posix())


def stdlib_modules(root: Path, skip: Iterable[str] = ()) -> dict[str, Path]:
    """The :func:`source_files` by dotted module name (``email.mime.text``; a package by its
    folder's name), as absolute paths."""
    found: dict[str, Path] = {}
    for rel in source_files(root, skip):
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = root / rel
    return found


def _documented(
    node: ast.AST, depth: int = 0
) -> Iterator[tuple[int, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]]:
    """``node`` and the modules, classes and functions below it, in source order, with their
    depth in the tree.

    Only statements are visited (a docstring is the first statement of its body): walking
    every expression as well takes three times as long.
    """
    if isinstance(node, _DOCUMENTED):
        yield depth, node
    for _, value in ast.iter_fields(node):
        for child in value if isinstance(value, list) else ():
            if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case):
                yield from _documented(child, depth + 1)


def docstrings(tree: ast.AST, by_level: bool = False) -> list[str]:
    """The non-empty docstrings of the module, classes and functions in ``tree``, cleaned as
    :func:`ast.get_docstring` does (indentation removed).

    Args:
        tree: A parsed module.
        by_level: Order them level by level, as :func:`ast.walk` visits them (the module's,
            then its top-level classes' and functions', ...), instead of in source order.
    """
    nodes = list(_documented(tree))
    if by_level:
        nodes.sort(key=lambda depth_node: depth_node[0])  # stable: source order within a level
    return [doc for _, node in nodes if (doc := ast.get_docstring(node, clean=True))]


def collapse(text: str) -> str:
    """``text`` with every run of whitespace one space, none at either end."""
    return " ".join(text.split())


def clip(text: str, max_chars: int) -> str:
    """``text`` if at most ``max_chars`` long, else cut at its last space before
    ``max_chars`` (at ``max_chars`` if it has none there)."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > 0 else max_chars]


def paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` (separated by blank lines), whitespace collapsed; empty
    ones left out."""
    return [p for block in _BLANK_LINE.split(text) if (p := collapse(block))]


def help_topics() -> dict[str, str]:
    """The documents of :mod:`pydoc_data.topics` (what ``help()`` shows): topic name to text."""
    from pydoc_data.topics import topics  # 700 kB of text: read only when asked for

    return dict(topics)
