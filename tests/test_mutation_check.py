"""The mutation check stays in step with the code: every mutation's text is found exactly once,
and each names tests that exist (a mutation whose text moved would break nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.mutation_check import MUTATIONS, REPO


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_applies_once_to_existing_code(mutation):
    assert (REPO / mutation.path).read_text().count(mutation.old) == 1
    assert mutation.old != mutation.new
    files = [t for t in mutation.tests if t.endswith(".py")]
    assert files and all((REPO / f).exists() for f in files)
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)


def test_the_result_folder_exists():
    assert Path(REPO / "benchmarks" / "results").is_dir()
