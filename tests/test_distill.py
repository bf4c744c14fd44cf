import copy

import pytest
import torch

from autocompress.corpus import CorpusTeacher, DistillData
from autocompress.data import Batches
from autocompress.distill import block_pairs, distill_on_data, hidden_loss, hidden_states
from autocompress.methods.depth import DepthPruning
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.mlp import MlpPruning
from autocompress.pipeline import CompressionConfig, compress
from autocompress.tasks import LanguageModeling
from autocompress.training import TrainingConfig
from tests.methods.tiny_transformers import gpt2, one_thread, same_state, tokens  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
LM = LanguageModeling()


def test_kept_blocks_pair_with_the_blocks_they_were():
    teacher, student = gpt2(4), gpt2(4)
    del student.transformer.h[1]
    assert block_pairs(student, teacher, [1]) == [
        ("transformer.h.0", "transformer.h.0"),
        ("transformer.h.1", "transformer.h.2"),
        ("transformer.h.2", "transformer.h.3"),
    ]
    with pytest.raises(ValueError, match="3 blocks, the teacher 4 less 0 removed"):
        block_pairs(student, teacher, [])


def test_hidden_loss_is_the_relative_squared_error_over_kept_positions():
    t = torch.ones(2, 3, 4)
    s = t.clone()
    s[:, :2] = 2.0  # error 1 where kept
    s[:, 2] = 100.0  # padding: not counted
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert float(hidden_loss([s], [t], mask)) == pytest.approx(1.0)
    assert float(hidden_loss([t, s], [t, t], mask)) == pytest.approx(0.5)  # mean over pairs
    assert float(hidden_loss([s * 0 + 3], [t])) == pytest.approx(4.0)  # no mask: all
    with pytest.raises(ValueError):
        hidden_loss([s], [t, t])


def _sharp():
    """A tiny GPT-2 whose next-token distributions are far from uniform (random weights give
    near-uniform ones, which every student matches)."""
    teacher = gpt2(2)
    with torch.no_grad():
        teacher.transformer.ln_f.weight.mul_(20.0)
    return teacher


def _perturbed(teacher):
    """A pruned copy whose kept weights are also off by noise: far from the teacher."""
    student = _pruned(teacher)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".h." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return student


def _pruned(teacher):
    compressed = compress(
        teacher, CompressionConfig.of(mlp=MlpPruning(0.75)), "/dev/null", task=LM, train=None,
        example_input=tokens(2, 16),
    )  # fmt: skip
    return compressed.model


def _gap(student, teacher, data, pairs=()):
    """KL of the student's tokens to the teacher's and the hidden-state loss, on all rows."""
    x = data.inputs
    with (
        torch.no_grad(),
        hidden_states(student, [s for s, _ in pairs]) as hs,
        hidden_states(teacher, [t for _, t in pairs]) as ht,
    ):
        out, target = student(x).logits, teacher(x).logits
        kl = float(LM.distillation_loss(out, target, x, 1.0))
        hid = float(hidden_loss(hs.collect(), ht.collect())) if pairs else 0.0
    return kl, hid


def _data():
    g = torch.Generator().manual_seed(5)
    return DistillData(torch.randint(0, 64, (64, 16), generator=g))


@pytest.mark.parametrize("hidden", [0.0, 1.0])
def test_distillation_on_unlabeled_data_moves_the_student_towards_the_teacher(hidden):
    teacher = _sharp()
    student = _perturbed(teacher)
    data = _data()
    pairs = block_pairs(student, teacher)
    kl0, hid0 = _gap(student, teacher, data, pairs)
    losses = distill_on_data(
        student, CorpusTeacher(teacher, data), data, LM,
        TrainingConfig(epochs=1, batch_size=16, optimizer="adamw", lr=1e-3), steps=40,
        hidden=hidden, pairs=pairs,
    )  # fmt: skip
    kl1, hid1 = _gap(student, teacher, data, pairs)
    assert len(losses) == 40
    assert kl1 < (0.8 if hidden else 0.7) * kl0
    if hidden:
        assert hid1 < 0.8 * hid0


def test_without_steps_nothing_changes():
    teacher = gpt2(2)
    student = _pruned(teacher)
    before = copy.deepcopy(student)
    data = _data()
    assert distill_on_data(student, CorpusTeacher(teacher, data), data, LM,
                           TrainingConfig(epochs=1), steps=0) == []  # fmt: skip
    assert same_state(student, before)


def _finetuned(distillation, depth=None):
    teacher = gpt2(4)
    train = Batches([tokens(8, 16, seed)["input_ids"] for seed in range(4)], "train")
    methods = {"mlp": MlpPruning(0.5), "finetune": Finetune(epochs=1, batch_size=8, lr=1e-3)}
    if depth is not None:
        methods["depth"] = depth
    if distillation is not None:
        methods["distillation"] = distillation
    c = compress(teacher, CompressionConfig(methods), "/dev/null", task=LM, train=train,
                 example_input=tokens(2, 16)["input_ids"])  # fmt: skip
    return c


def test_a_weight_of_zero_changes_nothing_and_a_hidden_weight_changes_training():
    plain = _finetuned(None).model
    zero = _finetuned(Distillation(alpha=0.0, hidden=0.0)).model
    assert same_state(plain, zero)
    hidden = _finetuned(Distillation(alpha=0.0, hidden=1.0)).model
    assert not same_state(plain, hidden)


def test_hidden_states_follow_depth_pruning():
    # With blocks removed, the hidden-state term pairs kept blocks with their originals; it
    # trains (no shape or name error) and the recorded depth is the one paired.
    c = _finetuned(Distillation(alpha=0.5, hidden=1.0, steps=5, batch_size=4),
                   depth=DepthPruning(0.25))  # fmt: skip
    assert len(c.report["records"]["depth"]["removed"]) == 1
    assert c.report["records"]["distillation"]["steps"] == 5
    assert any("training split's inputs" in n for n in c.report["notes"])


def test_distillation_settings_are_validated_and_suggest_needs_something_to_train():
    with pytest.raises(ValueError, match="hidden"):
        Distillation(hidden=-1.0)
    with pytest.raises(ValueError, match="steps"):
        Distillation(steps=-3)
    with pytest.raises(ValueError, match="schedule"):
        Distillation(schedule="sometimes")
    assert "hidden=0.5" in Distillation(hidden=0.5, steps=10).describe()
