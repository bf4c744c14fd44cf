import math

import pytest
import torch
import torch.nn.functional as F

from autocompress.errors import TrialFailure
from autocompress.steps.finetune import (
    DistillConfig,
    FinetuneConfig,
    distillation_loss,
    finetune,
    make_scheduler,
)
from tests.conftest import _blobs, tiny_cnn


def test_distillation_loss_on_known_logits():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, -2.0]])
    labels = torch.tensor([0])
    cfg = DistillConfig(temperature=2.0, alpha=0.25)
    p_t = torch.softmax(teacher / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / 2, 1))).sum()
    expected = 0.25 * 4 * kl + 0.75 * F.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, cfg).item() == pytest.approx(expected.item())
    # identical logits: only the hard-label term is left
    same = distillation_loss(student, student, labels, cfg)
    assert same.item() == pytest.approx(0.75 * F.cross_entropy(student, labels).item(), abs=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "one_cycle"])
def test_schedules_warm_up_and_run_to_the_end(schedule):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    cfg = FinetuneConfig(epochs=1, lr=0.1, schedule=schedule, warmup_fraction=0.2)
    sched = make_scheduler(opt, cfg, total_steps=50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.1 * 0.5, "warm-up starts low"
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    if schedule in ("cosine", "one_cycle", "step"):
        assert lrs[-1] < 0.05


def test_finetune_learns_and_is_seeded():
    train = _blobs(256, 0)
    cfg = FinetuneConfig(epochs=3, batch_size=32, lr=3e-3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = tiny_cnn()
        finetune(model, train, cfg, seed=5)
        runs.append(model)
    a, b = (list(m.parameters()) for m in runs)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    acc = (runs[0](train.x).argmax(1) == train.y).float().mean()
    assert acc > 0.8


def test_non_finite_loss_fails_the_trial():
    model = tiny_cnn()
    train = _blobs(64, 0)
    with torch.no_grad():
        model[0].weight.fill_(math.inf)
    with pytest.raises(TrialFailure, match="loss became"):
        finetune(model, train, FinetuneConfig(epochs=1, batch_size=32))


def test_distillation_uses_cached_teacher_logits():
    train = _blobs(64, 0)
    with pytest.raises(ValueError, match="teacher's logits"):
        finetune(tiny_cnn(), train, FinetuneConfig(epochs=1), distill=DistillConfig())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_one_cycle_survives_very_short_runs(steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt, FinetuneConfig(epochs=1, schedule="one_cycle"), total_steps=steps)
    for _ in range(steps):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] <= 0.1
