"""The pipeline: methods applied stage by stage, a packed artifact that reloads exactly."""

import pytest
import torch

from autocompress.data import call_model
from autocompress.methods.distillation import Distillation
from autocompress.methods.finetune import Finetune
from autocompress.methods.int8 import Int8
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress, load_compressed

CONFIGS = {
    "structured-4bit": CompressionConfig.of(
        structured=StructuredPruning(0.5),
        finetune=Finetune(epochs=1),
        weights=WeightQuantization(4),
    ),
    "unstructured-kd-int8": CompressionConfig.of(
        unstructured=UnstructuredPruning(0.6),
        finetune=Finetune(epochs=1),
        distillation=Distillation(temperature=3.0, alpha=0.7),
        int8=Int8(),
    ),
    "fp16": CompressionConfig.of(weights=WeightQuantization(16)),
    "unstructured-3bit-qat": CompressionConfig.of(
        unstructured=UnstructuredPruning(0.7),
        finetune=Finetune(epochs=2, quant_aware=True),
        weights=WeightQuantization(3, keep_edges_8bit=False),
    ),
    "per-layer-group": CompressionConfig.of(
        structured=StructuredPruning(0.4, layer_amounts={"0": 0.2, "3": 0.4, "7": 0.3}),
        weights=WeightQuantization(
            4, granularity="group32", layer_bits={"3.weight": 2, "7.weight": 4}
        ),
    ),
}


def _compress(wl, config, path, **kw):
    return compress(
        wl.model, config, path, task=wl.task, train=wl.train, example_input=wl.example_input, **kw
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_artifact_reloads_to_the_same_outputs(tiny, tmp_path, name):
    c = _compress(tiny, CONFIGS[name], tmp_path / "m.acpk")
    loaded, config = load_compressed(tmp_path / "m.acpk", tiny.model, tiny.example_input, tiny.task)
    assert config == CONFIGS[name]
    x = tiny.val.x[:32]
    with torch.no_grad():
        assert torch.equal(loaded(x), c.model(x))


def test_baseline_is_not_modified(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    _compress(tiny, CONFIGS["structured-4bit"], tmp_path / "m.acpk")
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_structured_pruning_is_smaller_and_recorded(tiny, tmp_path):
    c = _compress(tiny, CONFIGS["structured-4bit"], tmp_path / "m.acpk")
    assert c.report["params"] < c.report["params_baseline"] / 2
    assert c.report["macs"] > 0
    assert 4 < c.report["effective_bits"] < 8  # 4-bit weights, 8-bit edges, fp32 biases
    assert c.report["records"]["structured"]["history"]
    assert c.report["float32_bytes"]["bias"] > 0


def test_unstructured_says_it_gives_no_speed(tiny, tmp_path):
    c = _compress(tiny, CONFIGS["unstructured-kd-int8"], tmp_path / "m.acpk")
    assert any("no speed-up" in n for n in c.report["notes"])
    assert c.report["sparsity"] == pytest.approx(0.6, abs=0.02)


def test_int8_without_weights_implies_8_bit_weights():
    config = CONFIGS["unstructured-kd-int8"]
    assert config.get("weights") == WeightQuantization(8, embeddings=False)
    with pytest.raises(ValueError, match="8 bits or fewer"):
        CompressionConfig.of(weights=WeightQuantization(16), int8=Int8())


def test_config_round_trip_order_and_description():
    for config in CONFIGS.values():
        assert CompressionConfig.from_dict(config.to_dict()) == config
    described = CONFIGS["unstructured-kd-int8"].describe()
    assert described.index("unstructured") < described.index("ft") < described.index("KD")
    assert described.index("KD") < described.index("8-bit") < described.index("int8")
    assert CompressionConfig().describe() == "uncompressed"
    per_layer = CONFIGS["per-layer-group"].describe()
    assert "20%-40% per layer" in per_layer and "2-4-bit per layer" in per_layer
    assert "3-bit per-channel all layers" in CONFIGS["unstructured-3bit-qat"].describe()
    assert "QAT" in CONFIGS["unstructured-3bit-qat"].describe()


def test_unknown_methods_and_settings_are_refused():
    with pytest.raises(ValueError, match="unknown method 'sparsify'"):
        CompressionConfig.from_dict({"format": 2, "methods": {"sparsify": {}}})
    with pytest.raises(ValueError, match="unknown setting 'amout'"):
        CompressionConfig.from_dict({"format": 2, "methods": {"structured": {"amout": 0.5}}})
    with pytest.raises(ValueError, match=r"\[0, 0.95\]"):
        CompressionConfig.from_dict({"format": 2, "methods": {"structured": {"amount": 2}}})


def test_a_configuration_of_another_format_is_refused():
    with pytest.raises(ValueError, match="format 1"):
        CompressionConfig.from_dict({"format": 1, "methods": {}})
    with pytest.raises(ValueError, match="format None"):
        CompressionConfig.from_dict({"prune": {}, "quantize": {}})


def test_not_an_artifact_is_refused(tiny, tmp_path):
    bad = tmp_path / "bad.acpk"
    bad.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="bad.acpk"):
        load_compressed(bad, tiny.model, tiny.example_input, tiny.task)


def test_a_failing_method_fails_the_trial_with_its_name(tiny, tmp_path):
    from autocompress.errors import TrialFailure

    config = CompressionConfig.of(structured=StructuredPruning(0.5, layer_amounts={"nope": 0.5}))
    with pytest.raises(TrialFailure, match="structured failed: ValueError") as err:
        _compress(tiny, config, tmp_path / "m.acpk")
    assert err.value.method == "structured"


def test_quant_aware_leaves_a_plain_model(tiny, tmp_path):
    c = _compress(tiny, CONFIGS["unstructured-3bit-qat"], tmp_path / "m.acpk")
    assert c.report["sparsity"] >= 0.69  # masks held through quantization-aware fine-tuning
    assert not any(hasattr(m, "parametrizations") for m in c.model.modules())
    with torch.no_grad():
        call_model(c.model, tiny.example_input)
