"""Workers: many processes, on one machine or many, share one study and one trial budget.

A worker joins a study made by ``autocompress study run`` and runs trials until the study as a
whole has ``n_trials`` completed ones. Optuna's ``MaxTrialsCallback`` checks the count before
each trial starts, so concurrent workers overshoot; here a worker takes a lock held by the
database (PostgreSQL advisory lock, MySQL ``GET_LOCK``, a lock file beside a SQLite file) while
it counts completed and running trials and creates its next one, so the total is exact.

A worker killed mid-trial stops its heartbeat; the next worker to look fails that trial and
re-queues it (Optuna's ``RetryHeartbeatStaleTrialCallback``), so no result is lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import TrialFailure, reason
from autocompress.faults import MachineFault, machine_fault
from autocompress.storage_checks import sqlite_lock_file

_process_lock = threading.Lock()


STOP_REASONS = ("budget", "total", "timeout", "failures", "bound")


@dataclass(frozen=True)
class WorkerResult:
    """What one run of trials did.

    Attributes:
        completed: Trials this process completed.
        failed: Trials this process ran that failed (their reasons are stored with them).
        pruned: Trials this process stopped early.
        study_completed: Completed trials in the whole study when the run stopped.
        stopped_because: ``budget`` (this process's ``n_trials``), ``total`` (the study's),
            ``timeout``, ``failures`` (too many in a row) or ``bound`` (too many trials of any
            state for the budget).
    """

    completed: int
    failed: int
    study_completed: int
    stopped_because: str
    pruned: int = 0

    def __post_init__(self) -> None:
        if self.stopped_because not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {self.stopped_because!r}")


def _lock_key(study_name: str) -> int:
    digest = hashlib.sha256(f"autocompress:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Hold a lock, shared by every worker of ``study_name``, for as long as the block runs.

    The lock dies with its holder (a killed worker's connection or file descriptor closes), so
    a crash never leaves the study locked.
    """
    engine = storage.engine
    dialect = engine.dialect.name
    if dialect == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            with _process_lock:
                yield
            return
        fd = sqlite_lock_file(Path(database))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    if dialect == "postgresql":
        key = _lock_key(study_name)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    if dialect in ("mysql", "mariadb"):
        name = f"autocompress-{_lock_key(study_name) & 0xFFFFFFFFFFFF:x}"
        with engine.connect() as conn:
            got = None
            while got != 1:
                got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, 60)"), {"n": name}).scalar()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
        return
    with _process_lock:
        yield


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials of ``study`` by state name."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def failure_reasons(trials: list[FrozenTrial], grace_period: int | None = None) -> dict[int, str]:
    """Why each failed trial failed: its recorded reason, or a lost worker's missing heartbeat.

    A trial whose worker was killed has no reason of its own (the worker died before it could
    write one); it is recognised by a retry naming it (``retry_history``) or, when it was not
    retried, by being failed with no reason.
    """
    retried_as: dict[int, int] = {}
    for t in trials:
        for number in t.system_attrs.get("retry_history", []):
            retried_as.setdefault(number, t.number)
    grace = f" for {grace_period} s" if grace_period else ""
    reasons = {}
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        reason = t.user_attrs.get("fail_reason")
        if not reason:
            reason = f"worker lost: no heartbeat{grace} (killed or crashed)"
            if t.number in retried_as:
                reason += f"; retried as trial {retried_as[t.number]}"
        reasons[t.number] = reason
    return reasons


def lost_trials(study: optuna.Study) -> list[int]:
    """Numbers of the trials stored as RUNNING whose worker has sent no heartbeat for longer
    than the grace period: killed or crashed. Only read; the next worker fails and retries
    them (``_next_trial``)."""
    storage = _rdb(study)
    if not isinstance(storage, optuna.storages.RDBStorage) or storage.heartbeat_interval is None:
        return []
    # Optuna's own rule for a stale trial (the one fail_stale_trials applies), without writing.
    ids = set(storage._get_stale_trial_ids(study._study_id))
    return sorted(
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t._trial_id in ids
    )


def grace_period(study: optuna.Study) -> int | None:
    """Seconds without a heartbeat after which a running trial counts as lost."""
    return getattr(_rdb(study), "grace_period", None)


class _Heartbeat:
    """Records a running trial's heartbeat from a background thread."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = storage.get_heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the trial goes on
                pass

    def __enter__(self) -> _Heartbeat:
        if self.interval is not None:
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under the study's cache layer."""
    storage = study._storage
    # Studies run by workers live in an RDB storage, which Optuna wraps in a cache layer.
    return cast(optuna.storages.RDBStorage, getattr(storage, "_backend", storage))


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _next_trial(study: optuna.Study, total: int | None) -> tuple[optuna.Trial | None, int]:
    """Under the budget lock: a new (or re-queued) trial, or ``None`` when none may start."""
    _fail_stale(study)
    counts = count_states(study)
    complete, running = counts["COMPLETE"], counts["RUNNING"]
    if total is not None and complete + running >= total:
        return None, complete
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); this loop beats itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask(), complete


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], tuple[float, ...]],
    *,
    n_trials: int | None = None,
    total: int | None = None,
    timeout: float | None = None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    poll_seconds: float | None = None,
    max_consecutive_failures: int = 10,
) -> WorkerResult:
    """Run trials of ``study`` in this process: the one trial loop of every verb.

    Stops when this process has completed ``n_trials`` trials, when the study as a whole has
    ``total`` completed ones (an exact budget shared by every process: trials are created
    under a lock held by the database), after ``timeout`` seconds, after
    ``max_consecutive_failures`` trials in a row that did not complete, or after
    ``3 x budget + 20`` trials of any state (so a space whose trials are all stopped early
    cannot spin forever).

    Args:
        study: A study on an RDB storage with heartbeats (see ``open_storage``).
        objective: Returns the trial's values; raises :class:`TrialFailure` for a failed trial.
        n_trials: Completed trials this process should add.
        total: Completed trials the study as a whole should have; shared by all workers.
        timeout: Start no trial after this many seconds.
        callbacks: Called with (study, frozen trial) after each trial this process finishes.
        poll_seconds: How long to wait when the budget is taken by running trials (default:
            the heartbeat interval, at most 5 s).
        max_consecutive_failures: Stop after this many trials in a row that failed or were
            stopped (early in fine-tuning, or as repeats of a trial already run). Trials stopped
            at the cheap fidelity neither count nor break the run.

    Raises:
        ValueError: No budget (``n_trials``, ``total`` or ``timeout``) was given.
        KeyboardInterrupt: After recording the trial in flight as FAILED ("interrupted").
    """
    if n_trials is None and total is None and timeout is None:
        raise ValueError("give n_trials, total or timeout")
    storage = _rdb(study)
    if poll_seconds is None:
        poll_seconds = min(5.0, float(storage.get_heartbeat_interval() or 5))
    budget = min(b for b in (n_trials, total) if b is not None) if n_trials or total else None
    bound = 3 * budget + 20 if budget is not None else None
    started = time.monotonic()
    completed = failed = pruned = in_a_row = ran = 0
    study_completed = 0
    while True:
        if n_trials is not None and completed >= n_trials:
            return WorkerResult(completed, failed, study_completed, "budget", pruned)
        if timeout is not None and time.monotonic() - started >= timeout:
            return WorkerResult(completed, failed, study_completed, "timeout", pruned)
        if in_a_row >= max_consecutive_failures:
            return WorkerResult(completed, failed, study_completed, "failures", pruned)
        if bound is not None and ran >= bound:
            return WorkerResult(completed, failed, study_completed, "bound", pruned)
        with budget_lock(storage, study.study_name):
            trial, study_completed = _next_trial(study, total)
        if trial is None:
            if total is not None and study_completed >= total:
                return WorkerResult(completed, failed, study_completed, "total", pruned)
            time.sleep(poll_seconds)  # the rest of the budget is running elsewhere
            continue
        ran += 1
        frozen = _run_one(study, trial, objective)
        if frozen.state == TrialState.COMPLETE:
            completed, in_a_row = completed + 1, 0
            study_completed += 1
        elif frozen.state == TrialState.PRUNED and frozen.user_attrs.get("fidelity") == "cheap":
            pruned += 1  # judged at the cheap fidelity: a decision, not a failure in a row
        elif frozen.state == TrialState.PRUNED:
            pruned, in_a_row = pruned + 1, in_a_row + 1
        else:
            failed, in_a_row = failed + 1, in_a_row + 1
        for callback in callbacks or []:
            callback(study, frozen)


def _run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], tuple[float, ...]],
) -> FrozenTrial:
    try:
        with _Heartbeat(_rdb(study), trial._trial_id):
            try:
                values = objective(trial)
            except TrialFailure:
                return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.TrialPruned:  # stopped early: hopeless, with its reason recorded
                return study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing trial never ends the run
                if machine_fault(e) is not None:
                    raise  # the disk's fault, not the trial's: handled below
                if "fail_reason" not in trial.user_attrs:
                    trial.set_user_attr("fail_reason", reason(e, 2000))
                return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except BaseException:
                # Interrupted or told to stop: record the trial as failed, never RUNNING.
                if "fail_reason" not in trial.user_attrs:
                    trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("fail_reason", f"objective values are not finite: {values}")
            return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return study.tell(trial, values, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker saw no heartbeat in time and failed (and re-queued) this trial while
        # it ran: drop this run; the stored record stands and the retry runs it again.
        return _rdb(study).get_trial(trial._trial_id)
    except Exception as e:
        fault = machine_fault(e)
        if fault is None:
            raise
        # A full disk or a damaged database fails every trial after this one: stop the run,
        # with the trial recorded as failed (never left RUNNING) where the database allows.
        if _fail_quietly(study, trial, f"stopped by the machine: {fault}"):
            state = "it is recorded as failed"
        else:
            state = (
                "it could not be recorded: it shows as RUNNING until a worker's heartbeat "
                "check fails it and runs it again"
            )
        raise MachineFault(
            f"trial {trial.number} stopped: {fault} ({state}; every trial recorded before it "
            "is kept)"
        ) from None


def _fail_quietly(study: optuna.Study, trial: optuna.Trial, reason: str) -> bool:
    """Record ``trial`` as failed with ``reason``; False when the database refuses."""
    try:
        trial.set_user_attr("fail_reason", reason[:2000])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return True
    except Exception:  # noqa: BLE001 - the database is what failed; the caller says so
        return False
