"""The study database: refused when it would lose the study, or when it is not what it seems.

In memory, missing (for the verbs that only read or join), not a database, read-only, or
written by another Optuna: one line naming the file, exit 2, nothing created.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import StorageError
from autocompress.storage import open_storage
from autocompress.storage_checks import IN_MEMORY
from tests.reliability_helpers import assert_one_line_error


def _invoke(monkeypatch, cwd: Path, args: list[str]):
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, args)


def _plain_study(path: Path, name: str = "s") -> str:
    """An Optuna study (no autocompress attributes) in a fresh SQLite file; its URL."""
    url = f"sqlite:///{path}"
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=name, storage=storage)
    storage.engine.dispose()
    return url


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///"])
def test_in_memory_storage_is_refused(monkeypatch, tmp_path, url):
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert IN_MEMORY in str(info.value)
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["study", "run", "--study", "m", "--storage", url, "--n-trials", "1"]
        + ["--workload", "tests.tiny_workloads:tiny"],
    )
    assert_one_line_error(result, "in-memory storage loses the study when the process ends")
    assert list(tmp_path.iterdir()) == []


READ_ONLY_VERBS = {
    "list": ["study", "list"],
    "status": ["study", "status", "x"],
    "pareto": ["pareto", "x"],
    "report": ["report", "x", "--out", "r.html"],
    "export": ["export", "x", "--trial", "0", "--out", "r.yaml"],
    "dashboard": ["dashboard", "x", "--port", "0"],
    "worker": ["worker", "x", "--n-trials", "1"],
}


@pytest.mark.parametrize("verb", list(READ_ONLY_VERBS))
def test_verbs_that_read_never_create_a_database(monkeypatch, tmp_path, verb):
    typo = tmp_path / "studeis" / "autocompress.db"
    result = _invoke(
        monkeypatch, tmp_path, [*READ_ONLY_VERBS[verb], "--storage", f"sqlite:///{typo}"]
    )
    assert_one_line_error(result, f"no study database at {typo}; check --storage")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its folder


def test_the_default_storage_is_not_created_by_study_list(monkeypatch, tmp_path):
    result = _invoke(monkeypatch, tmp_path, ["study", "list"])
    assert_one_line_error(result, "no study database at studies/autocompress.db")
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("verb", ["run", "list"])
def test_a_corrupt_database_is_named(monkeypatch, tmp_path, verb):
    db = tmp_path / "studies.db"
    db.write_bytes(b"this is no sqlite file" * 100)
    args = ["study", "list"] if verb == "list" else ["study", "run", "--study", "s"]
    args += ["--n-trials", "1"] if verb == "run" else []
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", f"sqlite:///{db}"])
    assert_one_line_error(result, f"{db} is not an SQLite database (file is not a database)")
    assert db.read_bytes() == b"this is no sqlite file" * 100


@pytest.mark.parametrize("verb", ["study-run", "worker"])
def test_a_read_only_database_is_refused_before_any_work(
    monkeypatch, tmp_path, make_read_only, verb
):
    db = tmp_path / "studies.db"
    url = _plain_study(db)
    make_read_only(db)
    before = db.read_bytes()
    args = {
        "study-run": ["study", "run", "--study", "new", "--n-trials", "1"],
        "worker": ["worker", "s", "--n-trials", "1"],
    }[verb]
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", url])
    assert_one_line_error(
        result, f"study database {db} is read-only (attempt to write a readonly database)"
    )
    assert db.read_bytes() == before
    # reading still works
    listed = _invoke(monkeypatch, tmp_path, ["study", "list", "--storage", url])
    assert listed.exit_code == 0, listed.output
    assert "│ s " in listed.output


def test_a_database_opened_read_only_by_its_url_is_refused_for_writing(monkeypatch, tmp_path):
    db = tmp_path / "studies.db"
    _plain_study(db)
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["study", "run", "--study", "new", "--n-trials", "1", "--storage", url],
    )
    assert_one_line_error(result, f"study database {db} is read-only")
    assert open_storage(url, create=False, write=False) is not None  # reading is fine


def _stamp(db: Path, revision: str, library: str) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
        conn.exec_driver_sql(f"UPDATE version_info SET library_version = '{library}'")
    engine.dispose()


@pytest.mark.parametrize(
    "revision, library, fragments",
    [
        (
            "v99.0.0.a",
            "99.0.0",
            ["was written by a newer Optuna (99.0.0)", "pip install -U optuna"],
        ),
        ("v3.0.0.a", "3.0.0", ["by an older Optuna (3.0.0)", "optuna storage upgrade --storage"]),
    ],
    ids=["newer", "older"],
)
@pytest.mark.parametrize("verb", ["list", "pareto"])
def test_a_database_of_another_optuna_schema_is_named(
    monkeypatch, tmp_path, revision, library, fragments, verb
):
    db = tmp_path / "studies.db"
    url = _plain_study(db)
    _stamp(db, revision, library)
    args = ["study", "list"] if verb == "list" else ["pareto", "s"]
    result = _invoke(monkeypatch, tmp_path, [*args, "--storage", url])
    assert_one_line_error(result, f"study database {db}", *fragments)


def test_a_directory_is_not_a_database(monkeypatch, tmp_path):
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["study", "run", "--study", "s", "--n-trials", "1", "--storage", f"sqlite:///{tmp_path}"],
    )
    assert_one_line_error(result, f"{tmp_path} is a directory, not a study database")
