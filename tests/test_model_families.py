"""The models users bring, each family tiny and built in tests/model_families.py: every method
alone either works (and its packed artifact reloads to the same model) or fails the trial with
a reason naming it; every deploy path takes the model; a short study completes."""

from __future__ import annotations

import pytest
import torch

from autocompress.data import as_output, call_model, gather_inputs, input_batches
from autocompress.deploy import deploy
from autocompress.errors import TrialFailure
from autocompress.methods import METHODS
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.int8 import Int8
from autocompress.methods.lowrank import LowRank
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.workload import load_workload
from tests.conftest import BASELINE_CACHE
from tests.model_families import FAMILIES

pytest.importorskip("transformers")

MATRIX = {
    "structured": CompressionConfig.of(structured=StructuredPruning(0.5)),
    "lowrank": CompressionConfig.of(lowrank=LowRank(0.25)),
    "unstructured": CompressionConfig.of(unstructured=UnstructuredPruning(0.6)),
    "4-bit": CompressionConfig.of(weights=WeightQuantization(4, keep_edges_8bit=False)),
    "4-bit-group32": CompressionConfig.of(weights=WeightQuantization(4, "group32")),
    "distillation": CompressionConfig.of(
        finetune=Finetune(epochs=1, batch_size=32), distillation=Distillation(2.0, 0.5)
    ),  # fmt: skip
    "qat": CompressionConfig.of(
        finetune=Finetune(epochs=1, batch_size=32, quant_aware=True), weights=WeightQuantization(3)
    ),  # fmt: skip
}
# Every method of METHODS runs in the matrix or is named here with where it is tested.
ELSEWHERE = {
    "depth": "transformers only: tests/methods/test_depth.py on each transformer family",
    "heads": "transformers only: tests/methods/test_heads.py on each transformer family",
    "mlp": "transformers only: tests/methods/test_mlp.py on each transformer family",
    "int8": "a deploy-stage method: test_every_deploy_path_takes_the_model below",
    "runtime": "the runtime's settings: tests/test_runtimes.py",
}


def test_the_matrix_covers_every_method():
    covered = {name for config in MATRIX.values() for name in config.methods}
    assert covered | set(ELSEWHERE) == set(METHODS), set(METHODS) - covered - set(ELSEWHERE)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    torch.manual_seed(0)
    return request.param, load_workload(FAMILIES[request.param], cache_dir=BASELINE_CACHE)


def _outputs(model, inputs):
    with torch.inference_mode():
        return as_output(call_model(model, inputs))


FAST_METHODS = ("structured", "4-bit")  # the rest of the matrix runs with -m slow


@pytest.mark.parametrize(
    "method", [m if m in FAST_METHODS else pytest.param(m, marks=pytest.mark.slow) for m in MATRIX]
)
def test_each_method_alone_works_and_reloads_exactly(family, method, tmp_path):
    name, wl = family
    config = MATRIX[method]
    try:
        c = compress(wl.model, config, tmp_path / "m.acpk", task=wl.task, train=wl.train,
                     example_input=wl.example_input)  # fmt: skip
    except TrialFailure as e:  # refused: the reason names the method
        assert str(e).startswith(next(iter(config.methods))), str(e)
        pytest.skip(f"{name}: {method} refused: {e}")
    x = gather_inputs(wl.val, 4)
    loaded, _ = load_compressed(tmp_path / "m.acpk", wl.model, wl.example_input, wl.task)
    assert torch.equal(_outputs(loaded, x), _outputs(c.model, x))
    value = wl.evaluate(c.model)
    assert value == value  # finite metric (not NaN)
    if method == "structured":
        assert c.report["params"] < c.report["params_baseline"] or c.report["notes"]


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("mode", [None, pytest.param("static", marks=pytest.mark.slow), "dynamic"])
def test_every_deploy_path_takes_the_model(family, runtime, mode, tmp_path):
    name, wl = family
    int8 = Int8(mode=mode) if mode else None
    try:
        d = deploy(wl.model, tmp_path / "m", example_input=wl.example_input, runtime=runtime,
                   int8=int8, calibration=input_batches(wl.train, 32))  # fmt: skip
    except TrialFailure as e:
        assert str(e).startswith("int8 failed:"), str(e)
        assert mode is not None, "float deployment must always work"
        pytest.skip(f"{name}: {e}")
    other = gather_inputs(wl.val, 3)  # another batch size than the example's
    expected = _outputs(wl.model, other)
    got = d.run(other)
    assert got.shape == expected.shape
    if mode is None:
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (name, runtime)
    else:
        assert "int8" in d.kind
        # int8 costs accuracy (static int8 on attention most: the search measures it); a
        # broken graph would give unrelated outputs
        close = torch.nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1)).mean()
        assert close > 0.5, (name, runtime, mode, float(close))
