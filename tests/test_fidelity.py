"""Cheap fidelity first: which candidates are stopped before fine-tuning, and why."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.fidelity import (
    MARGIN,
    MIN_OBSERVED,
    CheapResult,
    hopeless_reason,
    optimistic_worsening,
    outcomes,
)

ALLOWED = 0.01


def done(
    number: int,
    worse: float,
    latency: float,
    size: float,
    cheap_worse: float | None = None,
    feasible: bool = True,
) -> optuna.trial.FrozenTrial:
    attrs = {"worsening": worse}
    if cheap_worse is not None:
        attrs["cheap_worsening"] = cheap_worse
    t = optuna.trial.create_trial(
        values=[0.9 - worse, latency, size],
        user_attrs=attrs,
        constraints={"metric_budget": worse - ALLOWED if feasible else 1.0},
    )
    t.number = number
    return t


def test_without_enough_fine_tuned_trials_the_bound_is_the_best_metric_seen():
    trials = [done(0, 0.004, 1.0, 10.0), done(1, -0.002, 2.0, 20.0)]
    bound, how = optimistic_worsening(CheapResult(0.3, 1.5, 15.0), trials, ALLOWED)
    assert bound == -0.002 and "best metric" in how
    # far out of budget without fine-tuning, but nothing known about recovery: kept
    assert hopeless_reason(CheapResult(0.3, 1.5, 15.0), trials, ALLOWED, "accuracy") is None


def test_a_candidate_dominated_at_the_best_metric_seen_is_stopped():
    trials = [done(0, -0.002, 1.0, 10.0), done(1, 0.004, 0.5, 5.0)]
    reason = hopeless_reason(CheapResult(0.05, 1.5, 12.0), trials, ALLOWED, "accuracy")
    assert reason is not None and "trial 0 is faster" in reason
    # smaller than every trial at the best metric: could reach the front, kept
    assert hopeless_reason(CheapResult(0.05, 1.5, 9.0), trials, ALLOWED, "accuracy") is None
    # within the latency margin of the dominating trial: timing noise does not decide
    assert hopeless_reason(CheapResult(0.05, 1.01, 12.0), trials, ALLOWED, "accuracy") is None


def test_an_infeasible_or_failed_trial_dominates_nothing():
    trials = [done(0, -0.002, 1.0, 10.0, feasible=False)]
    failed = optuna.trial.create_trial(state=TrialState.FAIL)
    assert hopeless_reason(CheapResult(0.0, 2.0, 20.0), [*trials, failed], ALLOWED, "x") is None


def test_trials_as_damaged_before_fine_tuning_bound_what_a_candidate_can_reach():
    # three trials lost 20-40 points without fine-tuning and ended 2-5 points down
    fine_tuned = [
        done(i, after, 1.0 + i, 10.0 + i, cheap_worse=before)
        for i, (before, after) in enumerate(((0.2, 0.03), (0.4, 0.05), (0.3, 0.02)))
    ]
    fine_tuned.append(done(3, 0.0, 5.0, 50.0, cheap_worse=0.01))  # barely damaged, recovered
    assert outcomes(fine_tuned) == [(0.2, 0.03), (0.4, 0.05), (0.3, 0.02), (0.01, 0.0)]
    assert MIN_OBSERVED == 3
    bound, how = optimistic_worsening(CheapResult(0.15, 9.0, 90.0), fine_tuned, ALLOWED)
    assert bound == pytest.approx(0.02 - MARGIN * ALLOWED) and "3 fine-tuned trials" in how
    reason = hopeless_reason(CheapResult(0.15, 9.0, 90.0), fine_tuned, ALLOWED, "accuracy")
    assert reason is not None and "beyond the budget" in reason
    # more damaged than one of the three: two compare, too few to stop it on a guess
    assert hopeless_reason(CheapResult(0.25, 4.0, 40.0), fine_tuned, ALLOWED, "accuracy") is None
    # ... but at the best metric seen (the baseline's), trial 3 is faster and smaller
    reason = hopeless_reason(CheapResult(0.25, 9.0, 90.0), fine_tuned, ALLOWED, "accuracy")
    assert reason is not None and "trial 3 is faster" in reason


@pytest.mark.parametrize("fidelity, stopped_because", [("cheap", "budget"), (None, "failures")])
def test_stops_before_fine_tuning_do_not_count_as_failures_in_a_row(
    tmp_path, fidelity, stopped_because
):
    from autocompress.study import open_storage
    from autocompress.workers import run_worker

    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize", "minimize"])
    calls = iter(range(100))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        if next(calls) < 12:
            if fidelity:
                trial.set_user_attr("fidelity", fidelity)
            raise optuna.TrialPruned("stopped")
        return (1.0, 1.0, 1.0)

    result = run_worker(study, objective, n_trials=1)
    assert result.stopped_because == stopped_because
    assert result.pruned == (12 if fidelity else 10)
