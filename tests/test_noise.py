"""A metric's noise: per-item values of every task, their bootstrap standard error, and the
rule that a budget below two standard errors draws a warning with the split size it needs."""

import math

import pytest
import torch
import torch.nn.functional as F

from autocompress.data import Batches, TensorData
from autocompress.errors import WorkloadError
from autocompress.noise import (
    ItemValues,
    bootstrap_se,
    budget_below_noise,
    items_needed,
    with_se,
)
from autocompress.record import baseline_metric, baseline_words, noise_warning
from autocompress.tasks import Classification, CustomTask, LanguageModeling, Regression


def test_accuracy_se_is_the_binomial_one():
    n, right = 2000, 1400  # p = 0.7
    correct = torch.tensor([1.0] * right + [0.0] * (n - right))
    se = bootstrap_se(ItemValues.mean_of(correct))
    expected = math.sqrt(0.7 * 0.3 / n)  # 0.01025
    assert se == pytest.approx(expected, rel=0.08)  # 1000 redraws: about 2% spread
    assert se == bootstrap_se(ItemValues.mean_of(correct))  # seeded: the same every run
    assert se != bootstrap_se(ItemValues.mean_of(correct), seed=1)
    # four times the items, half the error
    big = bootstrap_se(ItemValues.mean_of(correct.repeat(4)))
    assert big == pytest.approx(expected / 2, rel=0.08)


def test_a_constant_metric_has_no_noise_and_too_few_items_an_unknown_one():
    assert bootstrap_se(ItemValues.mean_of(torch.full((50,), 0.5))) == 0.0
    assert bootstrap_se(ItemValues.mean_of(torch.tensor([0.5]))) is None
    assert (
        ItemValues.mean_of(torch.tensor([])).value() != ItemValues.mean_of(torch.tensor([])).value()
    )


def test_perplexity_se_is_the_ratio_estimators_through_exp():
    # lower is better: per-sequence summed NLL over tokens, perplexity = exp(sum / tokens)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(20, 60, (400,), generator=g).double()
    nll = tokens * (3.0 + 0.5 * torch.randn(400, generator=g, dtype=torch.float64))
    items = ItemValues(nll, tokens, math.exp)
    ratio = float(nll.sum() / tokens.sum())
    assert items.value() == pytest.approx(math.exp(ratio))
    # delta method, computed apart: var(ratio) ~ var(nll_i - ratio * tokens_i) / (n mean(t)^2)
    residual = nll - ratio * tokens
    se_ratio = math.sqrt(float(residual.var()) / (len(tokens) * float(tokens.mean()) ** 2))
    assert bootstrap_se(items) == pytest.approx(math.exp(ratio) * se_ratio, rel=0.1)


def test_every_built_in_task_gives_per_item_values_that_make_its_metric():
    # classification: one item per example, its correct tokens of those that count
    logits = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 0])
    items = Classification().item_values(lambda x: x, TensorData(logits, labels))
    assert items.values.tolist() == [1.0, 1.0, 1.0, 0.0] and items.weights.tolist() == [1] * 4
    assert Classification().metric(lambda x: x, TensorData(logits, labels)) == 0.75
    tokens = torch.tensor([[0, 1, -100], [2, 2, 2]])
    token_logits = torch.eye(4)[torch.tensor([[0, 1, 3], [2, 0, 2]])]
    items = Classification().item_values(lambda x: token_logits, TensorData(tokens, tokens))
    assert items.values.tolist() == [2.0, 2.0] and items.weights.tolist() == [2.0, 3.0]
    assert items.value() == pytest.approx(4 / 5)
    # a whole-split score has no per-item values: its SE is unknown
    scored = Classification(score=lambda out, y: 0.5)
    assert scored.item_values(lambda x: x, TensorData(logits, labels)) is None
    assert scored.metric(lambda x: x, TensorData(logits, labels)) == 0.5
    # language modeling: one item per sequence, padding not counted
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    out = torch.randn(3, 5, 7)
    split = Batches([{"input_ids": ids, "attention_mask": mask}])
    items = LanguageModeling().item_values(lambda x: out, split)
    nll = F.cross_entropy(out[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1), reduction="none")
    keep = mask[:, 1:].reshape(-1).bool()
    assert items.weights.tolist() == [4.0, 2.0, 3.0]
    assert float(items.values[1]) == pytest.approx(float(nll.reshape(3, 4)[1, :2].sum()), rel=1e-5)
    assert LanguageModeling().metric(lambda x: out, split) == pytest.approx(
        math.exp(float(nll[keep].mean())), rel=1e-5
    )
    # regression: one item per row, its squared errors over its outputs
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    items = Regression().item_values(lambda inputs: inputs, TensorData(x, y))
    assert items.values.tolist() == [4.0, 2.0, 0.0] and items.weights.tolist() == [2.0] * 3
    assert Regression().metric(lambda inputs: inputs, TensorData(x, y)) == pytest.approx(1.0)


def test_a_custom_task_has_an_se_only_with_per_item_values():
    split = TensorData(torch.ones(4, 1), torch.zeros(4))
    loss = lambda out, batch: out.sum()  # noqa: E731
    plain = CustomTask(loss_fn=loss, metric_fn=lambda model, s: 0.25)
    assert (
        plain.item_values(lambda x: x, split) is None and plain.metric(lambda x: x, split) == 0.25
    )
    per_item = CustomTask(loss_fn=loss, item_metric_fn=lambda model, s: [1.0, 0.0, 0.0, 0.0])
    assert per_item.metric(lambda x: x, split) == 0.25
    assert bootstrap_se(per_item.item_values(lambda x: x, split)) > 0
    bad = CustomTask(loss_fn=loss, item_metric_fn=lambda model, s: 0.25)
    with pytest.raises(WorkloadError, match="one float per item"):
        bad.metric(lambda x: x, split)
    for metrics in ({}, {"metric_fn": len, "item_metric_fn": len}):
        with pytest.raises(WorkloadError, match="one callable metric"):
            CustomTask(loss_fn=loss, **metrics)


def test_items_needed_scales_with_the_square_of_noise_over_budget():
    assert items_needed(400, 0.02, 0.01) == 6400  # 400 * (2 * 0.02 / 0.01) ** 2
    assert items_needed(2000, 0.01, 0.02) == 2000  # exactly at the line
    assert items_needed(100, 0.015, 0.01) == 900
    assert items_needed(100, 0.01, 0.0) is None


def test_the_warning_fires_below_two_standard_errors_only():
    words = budget_below_noise(0.01, 0.02, 400)
    assert words is not None and "below twice the metric's standard error" in words
    assert "6,400 validation items (now 400)" in words
    assert budget_below_noise(0.04, 0.02, 400) is None  # exactly 2 SE fits
    assert budget_below_noise(0.05, 0.02, 400) is None
    assert budget_below_noise(0.01, None, 400) is None  # unknown SE: nothing to say
    zero = budget_below_noise(0.0, 0.02, 400)
    assert zero is not None and "validation items" not in zero


def _info(higher_is_better, metric, se, n, budget, test=None, test_se=None):
    return {
        "task": {"name": "t", "metric": "m", "higher_is_better": higher_is_better},
        "budget": budget,
        "baseline": {"metric": metric, "metric_se": se, "metric_items": n,
                     "test_metric": test, "test_metric_se": test_se, "test_metric_items": n},
    }  # fmt: skip


def test_the_study_rule_reads_the_budget_in_the_metrics_direction():
    # higher is better: 1 point of accuracy against an SE of 0.0103 on 2,000 items
    acc = _info(True, 0.65, 0.0103, 2000, {"absolute": 0.01, "relative": None})
    words = noise_warning(acc)
    assert words is not None and f"{math.ceil(2000 * (0.0206 / 0.01) ** 2):,}" in words
    assert noise_warning({**acc, "budget": {"absolute": 0.03, "relative": None}}) is None
    # lower is better: a 5% rise of perplexity 30.0 is 1.5; an SE of 1.0 needs 3.0
    ppl = _info(False, 30.0, 1.0, 500, {"absolute": None, "relative": 0.05})
    words = noise_warning(ppl)
    assert (
        words is not None and "(1.5)" in words and f"{math.ceil(500 * (2 / 1.5) ** 2):,}" in words
    )
    assert noise_warning({**ppl, "budget": {"absolute": None, "relative": 0.1}}) is None
    # a study made before standard errors were measured: no warning, no ±
    old = {
        "task": acc["task"],
        "budget": acc["budget"],
        "baseline": {"metric": 0.65, "test_metric": 0.6},
    }
    assert noise_warning(old) is None
    assert baseline_metric(old) == "0.6500" and baseline_metric(old, "test") == "0.6000"


def test_the_baseline_is_shown_with_its_standard_error():
    assert with_se(0.65123, 0.01031) == "0.6512 ± 0.0103 (SE)"
    assert with_se(0.65123, 0.01031, 2009) == "0.6512 ± 0.0103 (SE, 2,009 items)"
    assert with_se(0.65123, None) == "0.6512" and with_se(None, 0.1) == "n/a"
    info = _info(True, 0.65123, 0.01031, 2009, {"absolute": 0.01}, 0.7, 0.0099)
    assert baseline_metric(info) == "0.6512 ± 0.0103 (SE)"
    assert baseline_metric(info, "test") == "0.7000 ± 0.0099 (SE)"
    assert baseline_words(info) == (
        "m 0.6512 ± 0.0103 (SE, 2,009 items) on validation, "
        "0.7000 ± 0.0099 (SE, 2,009 items) on test"
    )
