import pytest
import torch

from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.steps.finetune import DistillConfig, FinetuneConfig
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig

CONFIGS = {
    "structured-4bit": CompressionConfig(
        prune=PruneConfig("structured", 0.5),
        finetune=FinetuneConfig(epochs=1),
        quantize=QuantizeConfig(weight_bits=4),
    ),
    "unstructured-kd-8bit-int8": CompressionConfig(
        prune=PruneConfig("unstructured", 0.6),
        finetune=FinetuneConfig(epochs=1),
        distill=DistillConfig(temperature=3.0, alpha=0.7),
        quantize=QuantizeConfig(weight_bits=8, int8_activations=True),
    ),
    "fp16": CompressionConfig(quantize=QuantizeConfig(weight_bits=16)),
    "unstructured-3bit-qat": CompressionConfig(
        prune=PruneConfig("unstructured", 0.7),
        finetune=FinetuneConfig(epochs=2, quant_aware=True),
        quantize=QuantizeConfig(weight_bits=3, keep_edges_8bit=False),
    ),
    "per-layer": CompressionConfig(
        prune=PruneConfig("structured", 0.4, layer_amounts={"0": 0.2}),
        quantize=QuantizeConfig(weight_bits=4, layer_bits={"3": 2, "9": 8}),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_artifact_reloads_to_the_same_outputs(tiny, tmp_path, name):
    c = compress(tiny, CONFIGS[name], tmp_path / "m.acpk")
    loaded, meta = load_compressed(tmp_path / "m.acpk", tiny.model, tiny.example_input)
    assert CompressionConfig.from_dict(meta["config"]) == CONFIGS[name]
    x = tiny.val.x[:32]
    assert torch.equal(loaded(x), c.deployable(x))


def test_baseline_is_not_modified(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    compress(tiny, CONFIGS["structured-4bit"], tmp_path / "m.acpk")
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_structured_pruning_is_smaller_and_recorded(tiny, tmp_path):
    c = compress(tiny, CONFIGS["structured-4bit"], tmp_path / "m.acpk")
    assert c.report["params"] < c.report["params_baseline"] / 2
    assert c.report["macs"] > 0
    assert c.report["effective_bits"] < 8


def test_unstructured_says_it_gives_no_speed(tiny, tmp_path):
    c = compress(tiny, CONFIGS["unstructured-kd-8bit-int8"], tmp_path / "m.acpk")
    assert any("no speed-up" in n for n in c.report["notes"])
    assert c.report["sparsity"] > 0.5


def test_config_round_trip_and_description():
    for cfg in CONFIGS.values():
        assert CompressionConfig.from_dict(cfg.to_dict()) == cfg
    assert "KD" in CONFIGS["unstructured-kd-8bit-int8"].describe()


def test_not_an_artifact_is_refused(tiny, tmp_path):
    bad = tmp_path / "bad.acpk"
    bad.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="bad.acpk"):
        load_compressed(bad, tiny.model, tiny.example_input)


def test_quant_aware_config_is_described_and_leaves_a_plain_model(tiny, tmp_path):
    config = CONFIGS["unstructured-3bit-qat"]
    assert "3-bit per-channel all layers" in config.describe() and "QAT" in config.describe()
    c = compress(tiny, config, tmp_path / "m.acpk")
    assert c.report["sparsity"] >= 0.69  # masks held through quantization-aware fine-tuning
    assert all(not hasattr(m, "weight_orig") for m in c.model.modules())
