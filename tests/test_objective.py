"""The objective's own rules: early stopping margins, withdrawn methods, runtime notes."""

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.objective import (
    EARLY_STOP_MARGINS,
    FAILURES_BEFORE_WITHDRAWAL,
    Objective,
    method_failures,
    withdrawn_methods,
)

INFO = {
    "task": {"name": "classification", "metric": "accuracy", "higher_is_better": True},
    "budget": {"absolute": 0.01, "relative": None},
    "baseline": {"metric": 1.0},
}


def _stub(value: float) -> SimpleNamespace:
    return SimpleNamespace(info=INFO, workload=SimpleNamespace(evaluate=lambda model, split: value))


@pytest.mark.parametrize(
    "epoch, accuracy, stopped",
    [
        (1, 1.0 - 0.01 - EARLY_STOP_MARGINS[0] + 0.005, False),  # within 10 points: goes on
        (1, 1.0 - 0.01 - EARLY_STOP_MARGINS[0] - 0.005, True),
        (2, 1.0 - 0.01 - EARLY_STOP_MARGINS[1] + 0.005, False),  # within 3 points later on
        (2, 1.0 - 0.01 - EARLY_STOP_MARGINS[1] - 0.005, True),  # 3.5 points: stopped at epoch 2
        (3, float("nan"), True),
    ],
)
def test_hopeless_trials_stop_with_the_margin_of_their_epoch(epoch, accuracy, stopped):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    trial = study.ask()
    if stopped:
        with pytest.raises(optuna.TrialPruned, match=f"after epoch {epoch}"):
            Objective._stop_if_hopeless(_stub(accuracy), trial, epoch, None)
        assert trial.user_attrs["stopped_reason"].startswith(f"stopped early after epoch {epoch}")
    else:
        Objective._stop_if_hopeless(_stub(accuracy), trial, epoch, None)
        assert "stopped_reason" not in trial.user_attrs


def test_a_method_that_keeps_failing_is_withdrawn():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for method in ["heads"] * FAILURES_BEFORE_WITHDRAWAL + ["int8"]:
        trial = study.ask()
        trial.set_user_attr("failed_method", method)
        study.tell(trial, state=TrialState.FAIL)
    trial = study.ask()
    trial.set_user_attr("fail_reason", "structured pruning failed (torch-pruning ...)")  # v1
    study.tell(trial, state=TrialState.FAIL)
    assert method_failures(study) == {"heads": 2, "int8": 1, "structured": 1}
    assert set(withdrawn_methods(study)) == {"heads"}
