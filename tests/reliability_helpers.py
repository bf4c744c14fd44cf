"""Shared helpers of the reliability tests: a study on a storage, CLI processes, a snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

from autocompress.study import StudySettings, create_or_resume, open_storage

REPO = Path(__file__).resolve().parent.parent
SPACE = REPO / "tests" / "data" / "reliability_space.yaml"


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a CLI subprocess: this checkout importable, fast heartbeats."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["AUTOCOMPRESS_TEST_DIR"] = str(tmp_path)
    env["AUTOCOMPRESS_HEARTBEAT_INTERVAL"] = "1"
    env["AUTOCOMPRESS_GRACE_PERIOD"] = "6"
    env["COLUMNS"] = "200"
    return env


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``python -m autocompress.cli ARGS`` in ``tmp_path``, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "autocompress.cli", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def create_study(
    tmp_path: Path, name: str, url: str, workload: str = "tests.tiny_workloads:tiny"
) -> optuna.Study:
    """Create an autocompress study (baseline measured, no trials) in-process."""
    settings = StudySettings(
        workload=workload,
        space_text=SPACE.read_text(),
        space_source=str(SPACE),
        sampler="random",
        warm_start=False,
    )
    storage = open_storage(url)
    study, *_ = create_or_resume(name, storage, settings, studies_dir=tmp_path / "studies")
    return study


def wait_for_file(path: Path, procs: list[subprocess.Popen], limit: float = 90) -> str:
    """Wait until ``path`` exists (failing early if every process has ended); its text."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if all(p.poll() is not None for p in procs):
            outs = [p.communicate()[1][-2000:] for p in procs]
            raise AssertionError(f"{path.name} never appeared; stderr: {outs}")
        time.sleep(0.1)
    raise AssertionError(f"{path.name} did not appear within {limit} s")


def snapshot(name: str, url: str) -> list[tuple]:
    """The stored trials of a study, for checking that nothing changed."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return [
        (t.number, t.state.name, t.values, t.params, sorted(t.user_attrs))
        for t in study.get_trials(deepcopy=False)
    ]


def assert_one_line_error(result, *fragments: str) -> None:
    """A CliRunner result that is one ``error:`` line with ``fragments``, exit code 2."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output
