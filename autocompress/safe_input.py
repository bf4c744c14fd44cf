"""One validation layer for the text files users hand us: search spaces and recipes.

:func:`read_text` reads a bounded amount of UTF-8 from a regular file only (a FIFO, a device or
a directory is refused before it is opened, so nothing blocks and nothing endless is read).
:func:`load_yaml` parses YAML safely (plain data, never objects) and refuses what plain YAML
would let through: duplicate keys (the last one silently won), alias bombs (a few hundred bytes
that expand to billions of values) and nesting deep enough to exhaust the stack.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from autocompress.errors import AutocompressError

MAX_BYTES = 1_000_000  # a search space or recipe is a few KB
MAX_ALIASES = 100  # alias uses (*name) in one document
MAX_EXPANDED = 100_000  # values a document may stand for once its aliases are expanded
MAX_DEPTH = 50  # nested mappings and lists
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_bytes(
    path: str | os.PathLike[str],
    what: str,
    error: type[AutocompressError],
    max_bytes: int = MAX_BYTES,
) -> bytes:
    """Read a small regular file, refusing anything that is not one: the one reader of every
    file a user names (search spaces, recipes, signing keys).

    Args:
        path: The file.
        what: What the file is, for messages (``"search space"``, ``"recipe"``, ``"key"``).
        error: The error class raised.
        max_bytes: Largest size accepted.

    Returns:
        Its bytes.

    Raises:
        AutocompressError: ``error``, one line naming the path, when the file is missing,
            unreadable, not a regular file (a FIFO, a device such as ``/dev/zero``, a
            directory) or larger than ``max_bytes``.
    """
    path = Path(path)
    prefix = f"cannot read {what} {path}"
    try:
        # Checked before opening: opening a FIFO blocks until a writer comes.
        kind = non_file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise error(f"{prefix}: it is {kind}, not a file; give the path of a {what} file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{prefix}: no such file; check the path") from None
    except OSError as e:
        raise error(f"{prefix}: {e.strerror or e}; check the path and its permissions") from None
    try:
        with os.fdopen(fd, "rb") as f:
            kind = non_file_kind(os.fstat(f.fileno()).st_mode)  # replaced since the check above
            if kind is not None:
                raise error(f"{prefix}: it is {kind}, not a file; give the path of a {what} file")
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{prefix}: {e.strerror or e}; check the file") from None
    if len(raw) > max_bytes:
        raise error(f"{prefix}: larger than {max_bytes:,} bytes; check the path")
    return raw


def read_text(
    path: str | os.PathLike[str],
    what: str,
    error: type[AutocompressError],
    max_bytes: int = MAX_BYTES,
) -> str:
    """Read a small UTF-8 text file (:func:`read_bytes`), refusing anything that is not one.

    Returns:
        The text (a UTF-8 byte-order mark removed).

    Raises:
        AutocompressError: As :func:`read_bytes`, or the file is not UTF-8.
    """
    raw = read_bytes(path, what, error, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(
            f"cannot read {what} {Path(path)}: not UTF-8 text (byte {e.start}); save it as "
            "UTF-8 YAML"
        ) from None


def non_file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class _Refused(yaml.YAMLError):
    """A document that is valid YAML but that we refuse (duplicate key, bomb, depth)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, alias bombs and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        """Count alias uses and nesting depth while the node graph is built.

        ``index`` is what PyYAML passes: a position, a key node or ``None`` (its stubs say int).
        """
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES} aliases (*name); write the values out",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]  # yaml stubs
                )
            return super().compose_node(parent, index)  # type: ignore[arg-type]  # stubs: int
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]  # yaml stubs
                )
            return super().compose_node(parent, index)  # type: ignore[arg-type]  # stubs: int
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        """The document's node graph, refused when its aliases expand to too many values."""
        node = super().compose_document()
        if self._aliases and node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refused when a key appears twice (YAML would keep the last silently)."""
        if isinstance(node, MappingNode):  # !!map on a scalar or list: the base refuses it
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class refuses it
                if first is not None:
                    raise _Refused(
                        f"duplicate key {_short(key)} (first at line {first}); keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expanded_size(root: Node) -> None:
    """Refuse a graph whose aliases make it stand for more than ``MAX_EXPANDED`` values."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise _Refused("an alias refers to the list or mapping it is in", node.start_mark)
        in_progress.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED:
                raise _Refused(
                    f"its aliases expand to more than {MAX_EXPANDED:,} values (an alias "
                    "bomb?); write the values out",
                    node.start_mark,
                )
        in_progress.discard(key)
        sizes[key] = total
        return total

    size(root)


def load_yaml(text: str, source: str, error: type[AutocompressError]) -> Any:
    """Parse one YAML document into plain data (dicts, lists, scalars), safely.

    Args:
        text: The YAML.
        source: Where it came from, the start of every message (a path).
        error: The error class raised.

    Returns:
        The document (None for an empty one).

    Raises:
        AutocompressError: ``error``, one line with the line and column: malformed YAML, a tag
            that would construct an object, a duplicate key, more than ``MAX_ALIASES`` aliases
            or aliases that expand past ``MAX_EXPANDED`` values, nesting past ``MAX_DEPTH``.
    """
    loader = None
    try:
        loader = StrictLoader(text)  # its reader already refuses control characters
        return loader.get_single_data()
    except _Refused as e:
        raise error(f"{source}: {_where(e.problem_mark)}{e.problem}") from None
    except (ComposerError, ConstructorError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise error(f"{source}: malformed YAML {_where(mark)}{_one_line(problem)}") from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a date like 2001-13-01
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{source}: malformed YAML: {_one_line(first)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where(mark: yaml.Mark | None) -> str:
    return f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
