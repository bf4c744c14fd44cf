"""Cheap fidelity first: judge a fine-tuning trial before paying for its fine-tuning.

A trial that fine-tunes is first compressed, deployed and measured without fine-tuning (the
*cheap* fidelity). Fine-tuning changes weights, not shapes or formats, so the cheap latency
and size are what the full trial will have; only the metric can still move. The trial goes on
to fine-tuning unless even an optimistic final metric could not bring it onto the front.

**The optimistic final metric** is learned from the study itself. Damage before fine-tuning
is assumed not to help: a candidate ends no better than the best final worsening among the
fine-tuned trials that were at least as damaged before fine-tuning (less a margin of
:data:`MARGIN` x the budget, for noise). With fewer than :data:`MIN_OBSERVED` such trials, it
is the best worsening the study has seen (or the baseline's, 0), whichever is lower: nothing is
stopped on a guess.

- **out of budget**: a candidate whose optimistic worsening is beyond the budget stops (trials
  as damaged never came back within it);
- **dominated**: so does one that a feasible completed trial beats on latency and size while
  being at least as good as the candidate's optimistic metric (latency with a margin of
  :data:`LATENCY_MARGIN`: timing noise should not decide).

A stopped trial ends PRUNED with ``fidelity: cheap``, its cheap figures and the reason. It is
never on the front: the front is made of completed trials, all measured after fine-tuning.
Optuna's pruners do not apply to multi-objective studies, so the rule is ours, in the spirit
of successive halving: spend the expensive fidelity on candidates that can still matter.

Opt-in (``--cheap-first``). On ``mnist-lenet5`` (BENCHMARKS.md section 3), where fine-tuning
brings almost any candidate back to the baseline's accuracy, it stopped 2 of 81 candidates and
its extra measurement cost a quarter of the trials per hour for the same hypervolume. It is
meant for models that fine-tuning cannot repair (MiniLM's pruned trials lost 5 to 27 points
after fine-tuning), where a few trials teach it what cannot come back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from autocompress.record import LATENCY_NOISE, dominates_by, is_feasible

MIN_OBSERVED = 3  # comparable fine-tuned trials before their outcome bounds a candidate
MARGIN = 0.25  # x the budget: how much better than those trials a candidate may still end
LATENCY_MARGIN = LATENCY_NOISE  # a dominating trial must be this much faster (timing noise)


@dataclass(frozen=True)
class CheapResult:
    """A candidate measured without fine-tuning.

    Attributes:
        worsening: How much worse than the baseline its validation metric is (the metric's
            units, direction-aware; negative: better).
        latency_ms: Its latency objective (ratio to the baseline x the baseline's latency).
        size_kb: Its size objective in KB.
    """

    worsening: float
    latency_ms: float
    size_kb: float


def outcomes(trials: Iterable[FrozenTrial]) -> list[tuple[float, float]]:
    """``(worsening before fine-tuning, worsening after)`` of each completed trial measured
    at both fidelities."""
    out = []
    for t in trials:
        cheap = t.user_attrs.get("cheap_worsening")
        full = t.user_attrs.get("worsening")
        if t.state == TrialState.COMPLETE and cheap is not None and full is not None:
            out.append((float(cheap), float(full)))
    return out


def optimistic_worsening(
    cheap: CheapResult, trials: list[FrozenTrial], allowed: float
) -> tuple[float, str]:
    """The best worsening the candidate may plausibly reach after fine-tuning, and how it was
    bounded (for the trial's reason)."""
    comparable = [after for before, after in outcomes(trials) if before >= cheap.worsening]
    if len(comparable) < MIN_OBSERVED:
        done = [
            float(t.user_attrs["worsening"])
            for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get("worsening") is not None
        ]
        return min([0.0, cheap.worsening, *done]), "the best metric this study has seen"
    best = min(comparable)
    return best - MARGIN * allowed, (
        f"the best of the {len(comparable)} fine-tuned trials at least as damaged before "
        f"fine-tuning ({best:.4g} worse than the baseline after it)"
    )


def hopeless_reason(
    cheap: CheapResult,
    trials: list[FrozenTrial],
    allowed: float,
    metric_name: str,
) -> str | None:
    """Why fine-tuning this candidate cannot bring it onto the feasible front, or ``None``.

    Args:
        cheap: The candidate's figures without fine-tuning.
        trials: The study's trials so far (completed ones are read).
        allowed: The budget's allowed worsening.
        metric_name: The metric's name, for the reason.
    """
    optimistic, how = optimistic_worsening(cheap, trials, allowed)
    if optimistic > allowed:
        return (
            f"stopped before fine-tuning: {metric_name} is {cheap.worsening:.4g} worse than the "
            f"baseline's without it, and at best it could end as {how}: beyond the budget "
            f"({allowed:.4g})"
        )
    for t in trials:
        if not is_feasible(t):
            continue
        worse = t.user_attrs.get("worsening")
        if worse is None:
            continue
        _, latency, size = t.values
        mine = (optimistic, cheap.latency_ms, cheap.size_kb)
        if dominates_by((float(worse), latency, size), mine, (0.0, LATENCY_MARGIN, 0.0)):
            return (
                f"stopped before fine-tuning: trial {t.number} is faster ({latency:.4g} vs "
                f"{cheap.latency_ms:.4g} ms), no larger ({size:.4g} vs {cheap.size_kb:.4g} KB) "
                f"and at least as good as this one could become (bounded by {how})"
            )
    return None
