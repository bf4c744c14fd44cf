"""The text-input layer: files that are not small UTF-8 files, and YAML that is not plain data.

Each case is one ``AutocompressError`` line naming the file; nothing blocks, nothing explodes.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from autocompress.errors import RecipeError, SearchSpaceError
from autocompress.recipe import load_recipe, loads
from autocompress.safe_input import MAX_ALIASES, load_yaml, read_text
from autocompress.search_space import load_search_space, parse_search_space_text

# The classic "billion laughs": 9 ** 9 strings from a few hundred bytes of aliases.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
SPACE = "structured:\n  amount: [0.25, 0.5]\n"


def _one_line(error: Exception, *fragments: str) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 300, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    os.mkfifo(path)
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.mkdir()
    return path


def _socket(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _large(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE + "#" * 1_100_000 + "\n")
    return path


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_bytes(SPACE.encode() + "description: caf\xe9\n".encode("latin-1"))
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope" / "space.yaml"


FILES = {
    "fifo": (_fifo, "it is a FIFO (named pipe), not a file"),
    "dev-zero": (lambda _: Path("/dev/zero"), "it is a device, not a file"),
    "directory": (_directory, "it is a directory, not a file"),
    "socket": (_socket, "it is a socket, not a file"),
    "too-large": (_large, "larger than 1,000,000 bytes"),
    "not-utf8": (_latin1, f"not UTF-8 text (byte {len(SPACE) + len('description: caf')})"),
    "missing": (_missing, "no such file; check the path"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_search_space_file_that_is_not_a_small_text_file_is_refused(tmp_path, case):
    make, fragment = FILES[case]
    path = make(tmp_path)
    outcome: list[BaseException] = []
    # In a thread: on a FIFO, an open() that blocks would hang the test, not fail it.
    thread = threading.Thread(
        target=lambda: outcome.append(_raised(load_search_space, path)), daemon=True
    )
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        if case == "fifo":
            os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # lets the blocked reader go
        pytest.fail(f"reading {case} did not return within 10 s")
    (error,) = outcome
    assert isinstance(error, SearchSpaceError), repr(error)
    _one_line(error, f"cannot read search space {path}", fragment)


def _raised(function, *args) -> BaseException | None:
    try:
        function(*args)
    except BaseException as e:  # noqa: BLE001 - the test inspects whatever came out
        return e
    return None


def test_recipe_file_goes_through_the_same_checks(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(_fifo(tmp_path))
    _one_line(info.value, "cannot read recipe", "FIFO")
    with pytest.raises(RecipeError) as info:
        load_recipe(Path("/dev/zero"))
    _one_line(info.value, "cannot read recipe /dev/zero: it is a device")


def test_read_text_limit_and_byte_order_mark(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + b"a" * 7)  # 10 bytes
    assert read_text(path, "thing", SearchSpaceError, max_bytes=10) == "a" * 7
    path.write_bytes(b"a" * 11)
    with pytest.raises(SearchSpaceError, match="larger than 10 bytes"):
        read_text(path, "thing", SearchSpaceError, max_bytes=10)


def test_alias_bomb_fails_fast_without_expanding():
    assert len(BOMB.encode()) < 500
    start = time.perf_counter()
    with pytest.raises(SearchSpaceError) as info:
        load_yaml(BOMB, "bomb.yaml", SearchSpaceError)
    assert time.perf_counter() - start < 1.0
    text = _one_line(info.value, "bomb.yaml: at line", "expand to more than 100,000 values")
    assert "lol" not in text


def test_alias_bomb_in_a_free_text_field_is_refused():
    # description is not validated, so the old loader took the bomb in silently
    nested = "description:\n" + "".join(f"  {line}\n" for line in BOMB.splitlines())
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space_text(nested + SPACE, "space.yaml")
    _one_line(info.value, "space.yaml", "alias bomb")
    with pytest.raises(RecipeError) as info:
        loads(nested + "format_version: 2\n", "r.yaml")
    _one_line(info.value, "recipe r.yaml", "alias bomb")


def test_aliases_are_counted():
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(SearchSpaceError, match=f"more than {MAX_ALIASES} aliases"):
        load_yaml(many, "x.yaml", SearchSpaceError)
    few = "a: &a 1\nb: [" + ", ".join(["*a"] * MAX_ALIASES) + "]\n"
    assert load_yaml(few, "x.yaml", SearchSpaceError)["b"] == [1] * MAX_ALIASES


def test_an_alias_to_its_own_container_is_refused():
    with pytest.raises(SearchSpaceError, match="refers to the list or mapping it is in"):
        load_yaml("a: &a [1, *a]\n", "x.yaml", SearchSpaceError)


@pytest.mark.parametrize(
    "text, line",
    [
        (SPACE + "structured:\n  amount: 0.5\n", 3),  # a whole section silently replaced
        ("structured:\n  amount: [0.25, 0.5]\n  amount: 0.5\n", 3),
        ("{finetune: {epochs: 1, epochs: 2}}", 1),
    ],
    ids=["section", "key", "flow"],
)
def test_duplicate_keys_are_refused_with_their_line(text, line):
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space_text(text, "dup.yaml")
    _one_line(info.value, f"dup.yaml: at line {line}", "duplicate key", "(first at line")


def test_merge_keys_are_not_duplicates():
    doc = load_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n", "m.yaml", SearchSpaceError)
    assert doc["d"] == {"x": 3, "y": 2}


def test_deep_nesting_is_refused():
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space_text("description: " + "[" * 5000 + "]" * 5000, "deep.yaml")
    _one_line(info.value, "deep.yaml: at line 1", "nested deeper than 50 levels")
    assert load_yaml("[" * 40 + "]" * 40, "ok.yaml", SearchSpaceError) is not None


def test_a_tag_that_would_construct_an_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(RecipeError) as info:
        loads(text, "r.yaml")
    _one_line(info.value, "recipe r.yaml: malformed YAML at line 1, column 1")
    assert not marker.exists()


def test_format_version_true_is_not_version_1():
    with pytest.raises(SearchSpaceError, match="format_version True is not supported"):
        parse_search_space_text("format_version: true\n" + SPACE, "space.yaml")
    assert parse_search_space_text("format_version: 2\n" + SPACE, "space.yaml")
    with pytest.raises(RecipeError, match="unknown format_version True"):
        loads("format_version: true\n", "r.yaml")
