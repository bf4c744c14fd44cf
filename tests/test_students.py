import pytest
import torch

import autocompress.methods.finetune as finetune_module
from autocompress.data import Batches
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.heads import HeadPruning
from autocompress.methods.mlp import MlpPruning
from autocompress.methods.runtime import RuntimeSettings
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.students import StudentCache, recovery_part
from autocompress.tasks import LanguageModeling
from tests.methods.tiny_transformers import gpt2, one_thread, same_state, tokens  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = Batches([tokens(8, 16, seed)["input_ids"] for seed in range(3)], "train")


def _config(seed=0, **extra):
    methods = {
        "mlp": MlpPruning(0.5),
        "finetune": Finetune(epochs=1, batch_size=8, lr=1e-3),
        "distillation": Distillation(alpha=0.5, hidden=1.0),
        **extra,
    }
    return CompressionConfig(methods, seed)


def _run(teacher, config, students, path):
    return compress(teacher, config, path, task=LanguageModeling(), train=TRAIN,
                    example_input=tokens(2, 16)["input_ids"], students=students)  # fmt: skip


def test_a_trial_that_differs_only_in_deployment_reuses_the_recovered_student(
    tmp_path, monkeypatch
):
    teacher = gpt2(2)
    students = StudentCache(tmp_path / "students", {"baseline": "b"})
    first = _run(teacher, _config(), students, tmp_path / "a.acpk")
    assert not first.report["student_reused"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(finetune_module, "train", no_training)
    other_runtime = _config(runtime=RuntimeSettings("onnxruntime", {"graph": "fused"}))
    second = _run(teacher, other_runtime, students, tmp_path / "b.acpk")
    assert second.report["student_reused"]
    assert same_state(first.model, second.model)
    assert second.report["records"]["mlp"] == first.report["records"]["mlp"]
    # Another weight quantization starts from the same student, then rounds it.
    third = _run(teacher, _config(weights=WeightQuantization(bits=8)), students,
                 tmp_path / "c.acpk")  # fmt: skip
    assert third.report["student_reused"]
    assert not same_state(first.model, third.model)
    w1 = first.model.transformer.h[0].mlp.c_fc.weight
    w3 = third.model.transformer.h[0].mlp.c_fc.weight
    assert (
        float((w1 - w3).detach().abs().max()) < float(w1.detach().abs().max()) / 100
    )  # rounded, not retrained


def test_another_structure_recovery_or_baseline_trains_again(tmp_path):
    students = StudentCache(tmp_path, {"baseline": "b"})
    base = _config()
    students.save(base, _fake())
    assert students.load(base) is not None
    assert students.load(_config(mlp=MlpPruning(0.25))) is None
    assert students.load(_config(heads=HeadPruning(0.5))) is None
    assert students.load(_config(distillation=Distillation(alpha=0.5, hidden=2.0))) is None
    assert students.load(_config(seed=1)) is None
    assert StudentCache(tmp_path, {"baseline": "other"}).load(base) is None


def _fake():
    from autocompress.students import Student

    return Student({"w": torch.ones(2)}, {"mlp": {}}, ["note"])


def test_seed_follows_a_stored_student_and_nothing_to_recover_is_not_kept(tmp_path):
    students = StudentCache(tmp_path, {"baseline": "b"})
    students.save(_config(seed=3), _fake())
    assert students.seed_for(_config(seed=8)).seed == 3
    assert students.seed_for(_config(seed=8, mlp=MlpPruning(0.25))).seed == 8
    no_training = CompressionConfig.of(mlp=MlpPruning(0.5))
    assert recovery_part(no_training) is None and students.path(no_training) is None
    qat = _config(weights=WeightQuantization(bits=4),
                  finetune=Finetune(epochs=1, quant_aware=True))  # fmt: skip
    assert "weights" in recovery_part(qat)  # trained through its grid: part of the student
    assert "weights" not in recovery_part(_config(weights=WeightQuantization(bits=4)))
