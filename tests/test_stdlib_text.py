"""The standard library read as text (autocompress.stdlib_text): files, docstrings, paragraphs."""

from __future__ import annotations

import ast

from autocompress.stdlib_text import (
    clip,
    docstrings,
    help_topics,
    paragraphs,
    source_files,
    stdlib_modules,
    stdlib_root,
)

MODULE = '''"""Module."""
def f():
    """F."""
    def inner():
        """Inner."""
class C:
    """C."""
    def m(self):
        """M."""
if True:
    def g():
        """G."""
def empty():
    """"""
'''


def test_files_skip_tests_third_party_and_given_folders_and_sort_by_path(tmp_path):
    for name in [
        "a.py", "a_b.py", "pkg/__init__.py", "pkg/sub/x.py", "pkg/tests/t.py", "test/y.py",
        "site-packages/z.py", "config-3.11-x86/python-config.py", "demo/d.py", "test_top.py",
        "notes.txt",
    ]:  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    got = [p.as_posix() for p in source_files(tmp_path, skip=("demo", "config-*"))]
    assert got == ["a.py", "a_b.py", "pkg/__init__.py", "pkg/sub/x.py"]
    every = [p.as_posix() for p in source_files(tmp_path)]
    assert "demo/d.py" in every and "config-3.11-x86/python-config.py" in every
    assert stdlib_modules(tmp_path, skip=("demo", "config-*")) == {
        "a": tmp_path / "a.py",
        "a_b": tmp_path / "a_b.py",
        "pkg": tmp_path / "pkg/__init__.py",
        "pkg.sub.x": tmp_path / "pkg/sub/x.py",
    }


def test_docstrings_in_source_order_or_level_by_level_as_ast_walk_visits():
    tree = ast.parse(MODULE)
    assert docstrings(tree) == ["Module.", "F.", "Inner.", "C.", "M.", "G."]
    by_level = ["Module.", "F.", "C.", "Inner.", "M.", "G."]  # g sits under an if: one deeper
    assert docstrings(tree, by_level=True) == by_level
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef)
    walked = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds)]
    assert [d for d in walked if d] == by_level


def test_paragraphs_split_at_blank_lines_and_clip_cuts_at_a_word():
    text = "One  line\nand more.\n \t\nSecond\tparagraph.\n\n\n\nThird."
    assert paragraphs(text) == ["One line and more.", "Second paragraph.", "Third."]
    assert paragraphs("\n\n  \n") == []
    assert clip("alpha beta gamma", 16) == "alpha beta gamma"
    assert clip("alpha beta gamma", 12) == "alpha beta"
    assert clip("alphabetagamma", 5) == "alpha"  # no space before the limit


def test_the_running_pythons_library_and_help_topics_are_found():
    root = stdlib_root()
    assert (root / "ast.py").is_file()
    assert '"for" statement' in help_topics()["for"]
