"""Tasks: the loss, distillation loss and metric of each kind of model."""

import math

import pytest
import torch
import torch.nn.functional as F

from autocompress.data import Batches, TensorData
from autocompress.errors import WorkloadError
from autocompress.tasks import (
    Classification,
    CustomTask,
    LanguageModeling,
    Regression,
    as_task,
    eager_runner,
)


def test_language_modeling_shifts_labels_and_masks_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}
    task = LanguageModeling()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1), reduction="none")
    keep = mask[:, 1:].reshape(-1).bool()
    assert task.loss(logits, batch).item() == pytest.approx(nll[keep].mean().item(), rel=1e-6)
    labels = ids.clone()
    labels[0, 3:] = -100
    with_labels = {**batch, "labels": labels}
    keep2 = keep & (labels[:, 1:].reshape(-1) != -100)
    assert task.loss(logits, with_labels).item() == pytest.approx(
        nll[keep2].mean().item(), rel=1e-6
    )


def test_perplexity_is_exp_of_mean_token_nll_over_the_split():
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (6, 5))
    logits = torch.randn(6, 5, 7)
    split = Batches([{"input_ids": ids[:3]}, {"input_ids": ids[3:]}])
    outputs = iter([logits[:3], logits[3:]])
    value = LanguageModeling().metric(lambda inputs: next(outputs), split)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert value == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert LanguageModeling().higher_is_better is False
    assert LanguageModeling().worsening(10.0, 10.5) == pytest.approx(0.5)


def test_language_modeling_distillation_is_masked_token_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}  # fmt: skip
    loss = LanguageModeling().distillation_loss(student, teacher, batch, 2.0)
    kl = F.kl_div(F.log_softmax(student[:, :-1] / 2, -1), F.log_softmax(teacher[:, :-1] / 2, -1),
                  reduction="none", log_target=True).sum(-1) * 4  # fmt: skip
    keep = batch["attention_mask"][:, 1:].bool()
    assert loss.item() == pytest.approx(kl[keep].mean().item(), rel=1e-5)


def test_classification_accuracy_and_checks():
    task = Classification()
    split = TensorData(torch.eye(4), torch.tensor([0, 1, 2, 0]))
    assert task.metric(lambda x: x, split) == pytest.approx(0.75)
    with pytest.raises(WorkloadError, match=r"\[0, 4\)"):
        task.check(torch.zeros(2, 4), (torch.zeros(2), torch.tensor([0, 9])))
    with pytest.raises(WorkloadError, match="shape"):
        task.check(torch.zeros(2), (torch.zeros(2), torch.tensor([0, 1])))


def test_regression_and_custom_tasks():
    split = TensorData(torch.ones(4, 1), torch.full((4,), 3.0))
    assert Regression().metric(lambda x: x * 2, split) == pytest.approx(1.0)
    seen = []

    def metric(model, split):
        seen.append(model(torch.ones(1, 1)))
        return 0.5

    task = CustomTask(loss_fn=lambda out, batch: out.sum(), metric_fn=metric,
                      higher_is_better=False, metric_name="error")  # fmt: skip
    assert task.metric(eager_runner(torch.nn.Identity()), split) == 0.5
    assert torch.equal(seen[0], torch.ones(1, 1))
    assert task.describe() == "custom (error, lower is better)"
    with pytest.raises(WorkloadError, match="identifier"):
        CustomTask(loss_fn=len, metric_fn=len, metric_name="top 1")


def test_unknown_task_names_are_refused():
    assert isinstance(as_task("language-modeling"), LanguageModeling)
    with pytest.raises(WorkloadError, match="unknown task 'seq2seq'"):
        as_task("seq2seq")
