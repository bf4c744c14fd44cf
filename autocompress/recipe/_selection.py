"""Which trial to export: a trial number, or a rule over the feasible Pareto front."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import RecipeError
from autocompress.study import feasible_front

OPTIMIZE = ("accuracy", "latency", "size")


@dataclass(frozen=True)
class Selection:
    """Which trial to export: a number, or a rule over the feasible Pareto front.

    Attributes:
        trial: A trial number (any COMPLETE trial); the rule below is then not used.
        min_accuracy: Keep front trials with validation accuracy at least this.
        max_latency_ms: Keep front trials with latency at most this.
        max_size_kb: Keep front trials with size at most this.
        optimize: Among those kept, the best by ``accuracy`` (max), ``latency`` or ``size`` (min).
    """

    trial: int | None = None
    min_accuracy: float | None = None
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    optimize: str = "accuracy"

    def __post_init__(self) -> None:
        if self.optimize not in OPTIMIZE:
            raise RecipeError(f"cannot optimize {self.optimize!r}; use one of {OPTIMIZE}")
        if self.trial is not None and self.trial < 0:
            raise RecipeError(f"--trial {self.trial}: trial numbers start at 0")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise RecipeError(f"--min-accuracy {self.min_accuracy}: use a fraction in [0, 1]")

    def describe(self) -> str:
        """The rule in words."""
        if self.trial is not None:
            return f"trial {self.trial}"
        limits = [
            f"accuracy >= {self.min_accuracy}" if self.min_accuracy is not None else "",
            f"latency <= {self.max_latency_ms} ms" if self.max_latency_ms is not None else "",
            f"size <= {self.max_size_kb} KB" if self.max_size_kb is not None else "",
        ]
        best = "most accurate" if self.optimize == "accuracy" else f"smallest {self.optimize}"
        where = " and ".join(x for x in limits if x)
        return f"{best} feasible Pareto trial" + (f" with {where}" if where else "")


def select_trial(study: optuna.Study, selection: Selection) -> FrozenTrial:
    """The trial ``selection`` picks.

    Raises:
        RecipeError: No such complete trial, or no front trial meets the rule.
    """
    if selection.trial is not None:
        for t in study.get_trials(deepcopy=False):
            if t.number == selection.trial:
                if t.state != TrialState.COMPLETE:
                    raise RecipeError(
                        f"trial {t.number} of study {study.study_name!r} is {t.state.name}; "
                        "only COMPLETE trials have a recipe"
                    )
                return t
        raise RecipeError(f"study {study.study_name!r} has no trial {selection.trial}")
    front = feasible_front(study)
    kept = [
        t
        for t in front
        if (selection.min_accuracy is None or t.values[0] >= selection.min_accuracy)
        and (selection.max_latency_ms is None or t.values[1] <= selection.max_latency_ms)
        and (selection.max_size_kb is None or t.values[2] <= selection.max_size_kb)
    ]
    if not kept:
        raise RecipeError(
            f"no trial of study {study.study_name!r} is the {selection.describe()} "
            f"({len(front)} on the feasible front); relax the rule or pass --trial N"
        )
    order = {
        "accuracy": lambda t: (-t.values[0], t.values[1], t.values[2]),
        "latency": lambda t: (t.values[1], -t.values[0], t.values[2]),
        "size": lambda t: (t.values[2], -t.values[0], t.values[1]),
    }[selection.optimize]
    return min(kept, key=order)
