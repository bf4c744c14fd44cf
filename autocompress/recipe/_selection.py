"""Which trial to export: a trial number, or a rule over the feasible Pareto front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import RecipeError
from autocompress.record import (
    HasUserAttrs,
    feasible_front,
    flags,
    higher_is_better,
    metric_name,
    over_budget,
    study_info,
)

OPTIMIZE = ("metric", "latency", "size")


@dataclass(frozen=True)
class Selection:
    """Which trial to export: a number, or a rule over the feasible Pareto front.

    Attributes:
        trial: A trial number (any COMPLETE trial); the rule below is then not used.
        metric_limit: Keep front trials whose validation metric is at least this (at most,
            when lower is better).
        max_latency_ms: Keep front trials with latency at most this.
        max_size_kb: Keep front trials with size at most this.
        optimize: Among those kept, the best ``metric``, or the least ``latency`` or ``size``.
    """

    trial: int | None = None
    metric_limit: float | None = None
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    optimize: str = "metric"

    def __post_init__(self) -> None:
        if self.optimize not in OPTIMIZE:
            raise RecipeError(f"cannot optimize {self.optimize!r}; use one of {OPTIMIZE}")
        if self.trial is not None and self.trial < 0:
            raise RecipeError(f"--trial {self.trial}: trial numbers start at 0")
        limits = [self.metric_limit, self.max_latency_ms, self.max_size_kb]
        rule = any(v is not None for v in limits) or self.optimize != "metric"
        if self.trial is not None and rule:
            raise RecipeError(
                f"--trial {self.trial} names the trial, so a rule over the front "
                "(--min-accuracy, --metric-limit, --max-latency-ms, --max-size-kb, --minimize) "
                "would be ignored; give --trial or a rule, not both"
            )
        for name in ("metric_limit", "max_latency_ms", "max_size_kb"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise RecipeError(f"--{name.replace('_', '-')} {value}: use a finite number")

    def describe(self, metric: str = "metric", higher_is_better: bool = True) -> str:
        """The rule in words."""
        if self.trial is not None:
            return f"trial {self.trial}"
        limits = [
            f"{metric} {'>=' if higher_is_better else '<='} {self.metric_limit}"
            if self.metric_limit is not None else "",
            f"latency <= {self.max_latency_ms} ms" if self.max_latency_ms is not None else "",
            f"size <= {self.max_size_kb} KB" if self.max_size_kb is not None else "",
        ]  # fmt: skip
        best = f"best-{metric}" if self.optimize == "metric" else f"smallest-{self.optimize}"
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
    info = study_info(study)
    higher = higher_is_better(info)
    sign = -1.0 if higher else 1.0
    front = feasible_front(study)
    limit = selection.metric_limit
    kept = [
        t
        for t in front
        if (limit is None or (t.values[0] >= limit if higher else t.values[0] <= limit))
        and (selection.max_latency_ms is None or t.values[1] <= selection.max_latency_ms)
        and (selection.max_size_kb is None or t.values[2] <= selection.max_size_kb)
    ]
    if not kept:
        raise RecipeError(
            f"no trial of study {study.study_name!r} is the "
            f"{selection.describe(metric_name(info), higher)} ({len(front)} on the feasible "
            "front); relax the rule or pass --trial N"
        )
    order = {
        "metric": lambda t: (sign * t.values[0], t.values[1], t.values[2]),
        "latency": lambda t: (t.values[1], sign * t.values[0], t.values[2]),
        "size": lambda t: (t.values[2], sign * t.values[0], t.values[1]),
    }[selection.optimize]
    return min(kept, key=order)


def export_warnings(info: dict[str, Any], trial: HasUserAttrs, value: float) -> list[str]:
    """What export warns about the trial it exports (metric ``value`` on validation): outside
    the study's budget (a trial named by number may be), and the trial's :func:`flags`."""
    out = ["this trial is outside the study's budget"] if over_budget(info, value) else []
    return out + list(flags(info, trial))
