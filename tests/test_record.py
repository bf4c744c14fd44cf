"""The study record's rules, each in its one home: the metric's direction, the budget's limit,
the size objective, dominance. Every rule is checked on a higher-is-better metric (accuracy)
and beside it a lower-is-better one (perplexity), with expected values worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from autocompress.errors import reason
from autocompress.recipe import export_warnings
from autocompress.record import (
    budget_excess,
    dominates,
    dominates_by,
    flags,
    metric_limit,
    objective_bytes,
    over_budget,
    recorded_bytes,
    worsening,
)


def _info(higher: bool, base: float, test: float, absolute=None, relative=None) -> dict:
    return {
        "task": {"name": "t", "metric": "accuracy" if higher else "perplexity",
                 "higher_is_better": higher},
        "budget": {"absolute": absolute, "relative": relative},
        "baseline": {"metric": base, "test_metric": test},
        "settings": {},
        "size": "packed",
    }  # fmt: skip


ACCURACY = _info(True, 0.90, 0.88, absolute=0.02)  # allowed: 0.88 and above
PERPLEXITY = _info(False, 20.0, 22.0, relative=0.05)  # allowed: 5% of 20 = 1, so 21 and below


@pytest.mark.parametrize(
    "info, value, excess",
    [
        (ACCURACY, 0.87, 0.01),  # 0.03 worse, 0.02 allowed
        (ACCURACY, 0.89, -0.01),
        (ACCURACY, 0.95, -0.07),  # better than the baseline
        (PERPLEXITY, 21.5, 0.5),  # 1.5 worse, 1 allowed
        (PERPLEXITY, 20.5, -0.5),
        (PERPLEXITY, 15.0, -6.0),  # better: lower
    ],
    ids=["acc-over", "acc-within", "acc-better", "ppl-over", "ppl-within", "ppl-better"],
)
def test_the_budget_goes_the_metrics_way(info, value, excess):
    assert budget_excess(info, value) == pytest.approx(excess)
    assert over_budget(info, value) == (excess > 0)


def test_the_budgets_limit_is_the_worst_allowed_value():
    assert metric_limit(ACCURACY) == pytest.approx(0.88)
    assert metric_limit(PERPLEXITY) == pytest.approx(21.0)
    assert worsening(PERPLEXITY, 23.0, baseline=22.0) == pytest.approx(1.0)


def test_a_non_finite_metric_is_infinitely_over_the_budget():
    for info in (ACCURACY, PERPLEXITY):
        assert budget_excess(info, math.nan) == math.inf and over_budget(info, math.inf)


@pytest.mark.parametrize(
    "info, test, over",
    [
        (ACCURACY, 0.855, True),  # test baseline 0.88; 0.025 worse, 0.02 allowed
        (ACCURACY, 0.865, False),
        (PERPLEXITY, 23.5, True),  # test baseline 22; 1.5 worse, 1 allowed
        (PERPLEXITY, 22.5, False),
        (PERPLEXITY, 10.0, False),
    ],
)
def test_the_test_over_budget_flag_goes_the_metrics_way(info, test, over):
    trial = SimpleNamespace(user_attrs={"test_metric": test})
    assert ("test over budget" in flags(info, trial)) == over


@pytest.mark.parametrize(
    "info, value, warned",
    [(ACCURACY, 0.87, True), (ACCURACY, 0.89, False), (PERPLEXITY, 21.5, True),
     (PERPLEXITY, 20.5, False), (PERPLEXITY, 19.0, False)],
)  # fmt: skip
def test_export_warns_about_a_trial_over_the_budget(info, value, warned):
    trial = SimpleNamespace(user_attrs={})
    warnings = export_warnings(info, trial, value)
    assert ("this trial is outside the study's budget" in warnings) == warned


def test_the_size_objective_is_the_deployed_file_or_the_packed_artifact():
    assert objective_bytes("deployed", packed=100, deployed=700) == 700
    assert objective_bytes("packed", packed=100, deployed=700) == 100
    with pytest.raises(ValueError, match="size must be one of"):
        objective_bytes("zipped", packed=100, deployed=700)
    trial = {"packed_bytes": 100, "deployed_bytes": 700}
    assert recorded_bytes(trial, "deployed") == 700 and recorded_bytes(trial, "packed") == 100
    assert recorded_bytes({"size_bytes": 90}, "packed") == 90  # an earlier version's record
    assert recorded_bytes({"size_bytes": 90}, "deployed") is None


def test_dominance_is_no_worse_everywhere_and_better_somewhere():
    assert dominates([1, 2, 3], [1, 2, 4]) and not dominates([1, 2, 4], [1, 2, 3])
    assert not dominates([1, 2, 3], [1, 2, 3])  # equal: neither
    assert not dominates([0, 2, 4], [1, 2, 3])  # a trade-off: neither
    # the noisy variant: 3% faster at least, no worse elsewhere, equality allowed
    margins = (0.0, 0.03, 0.0)
    assert dominates_by([1.0, 9.7, 3.0], [1.0, 10.0, 3.0], margins)
    assert not dominates_by([1.0, 9.8, 3.0], [1.0, 10.0, 3.0], margins)
    assert not dominates_by([1.1, 9.0, 3.0], [1.0, 10.0, 3.0], margins)


def test_an_exception_becomes_one_line_reason():
    assert reason(ValueError("bad shape\nat line 3")) == "ValueError: bad shape"
    assert reason(RuntimeError("")) == "RuntimeError"
    assert reason(RuntimeError("Exception from src/core.cpp:12:\nunsupported op Foo")) == (
        "RuntimeError: unsupported op Foo"
    )
    assert reason(OSError("\x1b[31mred\x1b[0m text")) == "OSError: red text"
    assert reason(ValueError("x" * 50), limit=10) == "ValueError: " + "x" * 10
