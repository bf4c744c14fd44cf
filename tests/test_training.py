import math

import pytest
import torch
import torch.nn.functional as F

from autocompress.data import Batches
from autocompress.errors import TrialFailure
from autocompress.tasks import Classification
from autocompress.training import Distill, TeacherOutputs, TrainingConfig, make_scheduler, train
from tests.conftest import _blobs, tiny_cnn

TASK = Classification()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "one_cycle"])
def test_schedules_warm_up_and_run_to_the_end(schedule):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    cfg = TrainingConfig(epochs=1, lr=0.1, schedule=schedule, warmup_fraction=0.2)
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


def test_training_learns_and_is_seeded():
    data = _blobs(256, 0)
    cfg = TrainingConfig(epochs=3, batch_size=32, lr=3e-3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = tiny_cnn()
        train(model, data, TASK, cfg, seed=5)
        runs.append(model)
    a, b = (list(m.parameters()) for m in runs)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert (runs[0](data.x).argmax(1) == data.y).float().mean() > 0.8


def test_a_dataloader_is_rebatched_at_the_asked_batch_size():
    data = _blobs(96, 0)
    dataset = torch.utils.data.TensorDataset(data.x, data.y)
    split = Batches(torch.utils.data.DataLoader(dataset, batch_size=7))
    sizes = [len(b[0]) for b in split.batches(32, seed=0)]
    assert sizes == [32, 32, 32] and split.num_batches(32) == 3
    steps = []
    model = tiny_cnn()
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=3e-3)
    train(model, split, TASK, cfg, on_epoch=lambda e, loss: steps.append(e))
    assert steps == [1, 2]


def test_non_finite_loss_fails_the_trial():
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight.fill_(math.inf)
    with pytest.raises(TrialFailure, match="loss became"):
        train(model, _blobs(64, 0), TASK, TrainingConfig(epochs=1, batch_size=32))


def test_teacher_outputs_are_cached_and_the_soft_loss_is_the_tempered_kl():
    torch.manual_seed(0)
    teacher = tiny_cnn().eval()
    data = _blobs(64, 0)
    outputs = TeacherOutputs(teacher, data)
    assert outputs.cached is not None and outputs.cached.shape == (64, 4)
    live = TeacherOutputs(teacher, data, budget_bytes=10)  # over budget: computed per batch
    assert live.cached is None
    idx = torch.tensor([3, 5])
    assert torch.allclose(live.for_batch((data.x[idx], data.y[idx]), None), outputs.cached[idx])
    student = tiny_cnn()
    logits = student(data.x[:8])
    t = outputs.cached[:8]
    soft = TASK.distillation_loss(logits, t, (data.x[:8], data.y[:8]), 2.0)
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(logits / 2, 1))).sum(1).mean()
    assert soft.item() == pytest.approx(4 * kl.item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        train(student, data, TASK, TrainingConfig(epochs=1), distill=Distill())
    train(student, data, TASK, TrainingConfig(epochs=1), distill=Distill(2.0, 0.5), teacher=outputs)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_one_cycle_survives_very_short_runs(steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_scheduler(opt, TrainingConfig(epochs=1, schedule="one_cycle"), total_steps=steps)
    for _ in range(steps):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] <= 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": float("nan")}, "rate"),
     ({"optimizer": "lion"}, "optimizer"), ({"schedule": "warm"}, "schedule")],
)  # fmt: skip
def test_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**kwargs)


def test_loss_uses_the_task():
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    batch = (torch.zeros(2, 1), torch.tensor([0, 1]))
    assert TASK.loss(out, batch).item() == pytest.approx(F.cross_entropy(out, batch[1]).item())


def _contrary_teacher() -> torch.nn.Module:
    """A teacher that answers (class + 1) mod 4 on the blobs: it reads the lit quadrant of
    class c - 1 into logit c. Its answers are known without running it."""
    linear = torch.nn.Linear(64, 4)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        for c in range(4):
            r, col = divmod((c - 1) % 4, 2)
            mask = torch.zeros(8, 8)
            mask[r * 4 : r * 4 + 4, col * 4 : col * 4 + 4] = 1.0
            linear.weight[c] = 2.0 * mask.reshape(-1)
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()


def test_distillation_teaches_what_the_teacher_says_not_the_labels():
    data, held_out = _blobs(256, 0), _blobs(128, 1)
    teacher = _contrary_teacher()
    assert torch.equal(teacher(held_out.x).argmax(1), (held_out.y + 1) % 4)
    config = TrainingConfig(epochs=4, batch_size=32, lr=0.01)
    agree = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        student = tiny_cnn()
        train(student, data, TASK, config, distill=Distill(1.0, alpha),
              teacher=TeacherOutputs(teacher, data))  # fmt: skip
        with torch.no_grad():
            said = student(held_out.x).argmax(1)
        agree[alpha] = float((said == (held_out.y + 1) % 4).float().mean())
    # alpha 0 learns the labels (never the teacher's answer); alpha 1 learns the teacher's
    assert agree[0.0] < 0.2 and agree[1.0] > 0.8, agree
