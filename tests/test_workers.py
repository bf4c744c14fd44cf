"""Many workers, killed workers and interrupts: every trial is accounted for exactly once.

Workers are real processes (``python -m autocompress.cli worker``) on a tiny workload, with a
1 s heartbeat and a 6 s grace period.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from autocompress.study import load_study, open_storage, summarize
from tests.conftest import skip_or_fail
from tests.reliability_helpers import SPACE, cli_env, create_study, start_cli, wait_for_file

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# A study's workload that is code is loaded only when the command line names it.
TINY = ("--workload", "tests.tiny_workloads:tiny")
HANG = ("--workload", "tests.tiny_workloads:hang_once")


def _postgres_reason() -> str | None:
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means: skip
        return f"no PostgreSQL at {POSTGRES_URL} ({type(e).__name__}); run .ci/start-services"
    return None


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-8", marks=[pytest.mark.postgres, pytest.mark.slow]),
    ]
)
def backend(request, tmp_path):
    """(storage URL, study name, worker count): SQLite with 3 workers, PostgreSQL with 3 (and
    with 8 in the slow run)."""
    name = f"reliability-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}", name, 3
        return
    reason = _postgres_reason()
    if reason:
        skip_or_fail(reason, "AUTOCOMPRESS_REQUIRE_POSTGRES")
    yield POSTGRES_URL, name, 8 if request.param == "postgres-8" else 3
    if name in optuna.get_all_study_names(open_storage(POSTGRES_URL)):
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        results.append((p.returncode, err))
    return results


def _assert_accounted(study: optuna.Study, budget: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0, states
    assert states[TrialState.WAITING] == 0, states
    assert states[TrialState.COMPLETE] == budget, states
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each exactly once
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert len(t.values) == 3 and "config" in t.user_attrs
    return trials


def test_workers_share_an_exact_budget(tmp_path, backend):
    url, name, n_workers = backend
    budget = 10 if n_workers == 8 else 5
    create_study(tmp_path, name, url)
    procs = [
        start_cli(tmp_path, "worker", name, "--storage", url, "--total", str(budget), *TINY)
        for _ in range(n_workers)
    ]
    results = _finish(procs)
    for rc, err in results:
        assert rc == 0, err[-3000:]
        assert "stopped (total)" in err
    trials = _assert_accounted(load_study(name, url), budget)
    # a healthy workload: no failures; the only extra trials are candidates stopped before
    # running in full (judged without fine-tuning, or repeats of a deterministic trial)
    extra = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(
        t.state == TrialState.PRUNED
        and (t.user_attrs.get("fidelity") == "cheap" or "duplicate_of" in t.user_attrs)
        for t in extra
    ), [(t.state, t.user_attrs.get("stopped_reason")) for t in extra]
    print(f"{n_workers} workers, budget {budget}: {Counter(t.state.name for t in trials)}")


def test_killed_worker_trial_fails_and_is_retried(tmp_path, backend):
    url, name, _ = backend
    budget, n_workers = 4, 3
    create_study(tmp_path, name, url, workload="tests.tiny_workloads:hang_once")
    (tmp_path / "hang").touch()
    procs = [
        start_cli(tmp_path, "worker", name, "--storage", url, "--total", str(budget), *HANG)
        for _ in range(n_workers)
    ]
    pid = int(wait_for_file(tmp_path / "claimed", procs))
    victim = next(p for p in procs if p.pid == pid)
    victim.send_signal(signal.SIGKILL)
    results = _finish(procs)
    for p, (rc, err) in zip(procs, results, strict=True):
        if p is victim:
            assert rc == -signal.SIGKILL
        else:
            assert rc == 0, err[-3000:]
    study = load_study(name, url)
    trials = _assert_accounted(study, budget)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    lost = failed[0]
    retries = [t for t in trials if t.system_attrs.get("retry_history") == [lost.number]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == lost.params  # the same configuration, run again
    reasons = dict(summarize(study)["failed"])
    assert reasons[lost.number].startswith("worker lost: no heartbeat")
    assert f"retried as trial {retries[0].number}" in reasons[lost.number]
    status = start_cli(tmp_path, "study", "status", name, "--storage", url)
    out, _ = status.communicate(timeout=60)
    assert f"trial {lost.number} failed: worker lost" in out


def _run_until_claimed(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    (tmp_path / "hang").touch()
    proc = start_cli(tmp_path, *args)
    wait_for_file(tmp_path / "claimed", [proc])
    return proc


@pytest.mark.parametrize(
    "command, sig",
    [("study-run", signal.SIGINT), ("worker", signal.SIGTERM)],
    ids=["study-run-sigint", "worker-sigterm"],
)
def test_interrupt_then_resume_loses_and_duplicates_nothing(tmp_path, command, sig):
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "interrupted"
    create_study(tmp_path, name, url, workload="tests.tiny_workloads:hang_once")
    if command == "study-run":
        args = ["study", "run", "--study", name, "--storage", url, "--total", "3"]
        args += ["--workload", "tests.tiny_workloads:hang_once"]
    else:
        args = ["worker", name, "--storage", url, "--total", "3", *HANG]
    proc = _run_until_claimed(tmp_path, args)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Resume with: autocompress" in err and "Traceback" not in err
    trials = load_study(name, url).get_trials(deepcopy=False)
    assert [t.state for t in trials][-1] == TrialState.FAIL
    assert trials[-1].user_attrs["fail_reason"] == "interrupted"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    before = {t.number: (t.state, t.params) for t in trials}

    (tmp_path / "hang").unlink()
    resumed = start_cli(tmp_path, "worker", name, "--storage", url, "--total", "3", *HANG)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-3000:]
    trials = _assert_accounted(load_study(name, url), 3)
    assert {t.number: (t.state, t.params) for t in trials if t.number in before} == before
    assert Counter(t.state for t in trials)[TrialState.FAIL] == 1


@pytest.mark.slow  # ~35 s on 2 busy cores: a baseline, then a CLI process that starts torch
def test_ctrl_c_pressed_again_while_the_first_is_handled_is_ignored(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'studies.db'}", "twice"
    create_study(tmp_path, name, url, workload="tests.tiny_workloads:hang_once")
    args = ["study", "run", "--study", name, "--storage", url, "--n-trials", "3"]
    proc = _run_until_claimed(tmp_path, [*args, "--workload", "tests.tiny_workloads:hang_once"])
    proc.send_signal(signal.SIGINT)
    # An impatient user: Ctrl-C again every 20 ms until the process is gone (Popen skips
    # the signal once it has exited). Before, one of them cut Optuna short while it recorded
    # the trial (left RUNNING, exit -2) or landed in a finalizer ("Exception ignored in").
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "Resume with: autocompress study run" in err
    (trial,) = load_study(name, url).get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted"


CLUSTER = Path(__file__).resolve().parent.parent / "docs" / "cluster"


def test_the_cluster_examples_run_one_command_and_it_shares_an_exact_budget(tmp_path, backend):
    """The Kubernetes Job, the Slurm array and the container all run docs/cluster/worker.sh;
    here N local processes run it at once on a new study: one creation, an exact total."""
    import yaml

    job = [d for d in yaml.safe_load_all((CLUSTER / "k8s-job.yaml").read_text()) if d]
    (container,) = job[1]["spec"]["template"]["spec"]["containers"]
    assert container["image"] and "command" not in container  # the image's entrypoint
    assert (
        'ENTRYPOINT ["/usr/local/bin/autocompress-worker"]'
        in (CLUSTER / "Containerfile").read_text()
    )
    assert (
        "COPY docs/cluster/worker.sh /usr/local/bin/autocompress-worker"
        in (CLUSTER / "Containerfile").read_text()
    )
    assert "exec docs/cluster/worker.sh" in (CLUSTER / "slurm-array.sh").read_text()

    url, name, n_workers = backend
    env = cli_env(tmp_path) | {
        "STUDY": name,
        "STORAGE_URL": url,
        "TOTAL": "4",
        "WORKLOAD": "tests.tiny_workloads:tiny",
        "SPACE": str(SPACE),
        "AUTOCOMPRESS": str(Path(sys.executable).parent / "autocompress"),
    }
    procs = [
        subprocess.Popen(
            ["sh", str(CLUSTER / "worker.sh")],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(n_workers)
    ]
    for rc, err in _finish(procs):
        assert rc == 0, err[-3000:]
    study = load_study(name, url)
    _assert_accounted(study, 4)
    assert len(list((tmp_path / "studies").glob(f"{name}-*"))) == 1  # created once


def test_the_cluster_worker_script_names_a_missing_setting(tmp_path):
    done = subprocess.run(
        ["sh", str(CLUSTER / "worker.sh")], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "set STUDY to the study name" in done.stderr


@pytest.mark.postgres
def test_workers_started_together_on_a_fresh_postgres_database_all_open_it(tmp_path):
    """Six processes opening a database with no tables yet: all succeed (they raced to create
    Optuna's tables and 5 of 6 failed on a duplicate type before)."""
    reason = _postgres_reason()
    if reason:
        skip_or_fail(reason, "AUTOCOMPRESS_REQUIRE_POSTGRES")
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    code = f"from autocompress.storage import open_storage; open_storage({url!r}); print('ok')"
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code],
                env=cli_env(tmp_path),
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(6)
        ]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
