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


# --- Files that are not what they seem, beside the database -----------------------------------


def test_a_read_verb_never_turns_an_empty_file_into_a_database(monkeypatch, tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    result = _invoke(monkeypatch, tmp_path, ["study", "list", "--storage", f"sqlite:///{db}"])
    assert_one_line_error(result, f"{db} is empty, not a study database")
    assert db.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_lock_file_that_is_not_a_file_is_one_line(monkeypatch, tmp_path, kind):
    import os

    db = tmp_path / "s.db"
    lock = tmp_path / "s.db.lock"
    if kind == "directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)  # opening it to write would wait for a reader: forever
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["study", "run", "--study", "new", "--n-trials", "1", "--storage", f"sqlite:///{db}"]
        + ["--workload", "tests.tiny_workloads:tiny"],
    )
    words = "a directory" if kind == "directory" else "a FIFO"
    assert_one_line_error(result, f"lock file {lock} of the study database: it is {words}")
    assert not db.exists()


def test_a_grace_period_shorter_than_two_heartbeats_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCOMPRESS_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("AUTOCOMPRESS_GRACE_PERIOD", "5")
    result = _invoke(
        monkeypatch,
        tmp_path,
        ["study", "run", "--study", "new", "--n-trials", "1", "--storage", "sqlite:///s.db"]
        + ["--workload", "tests.tiny_workloads:tiny"],
    )
    assert_one_line_error(
        result, "AUTOCOMPRESS_GRACE_PERIOD=5 is shorter than two heartbeats", "use at least 20"
    )


def test_processes_creating_one_fresh_database_at_once_all_open_it(tmp_path):
    """Four processes open a fresh SQLite file at the same moment: Optuna's table creation
    raced (``table alembic_version already exists``) and all but one failed."""
    import subprocess
    import sys

    from tests.reliability_helpers import REPO

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        "from autocompress.storage import open_storage\n"
        f"open_storage({url!r})\n"
        "print('opened')\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    import time

    time.sleep(8)  # every process has imported and waits for the start
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "opened" in out, err[-2000:]
