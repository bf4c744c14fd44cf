import pytest
import torch

from autocompress.artifact import save_packed
from autocompress.models import digits_cnn
from autocompress.pipeline import CompressionConfig, compress, load_compressed
from autocompress.steps.quantize import QuantizeConfig, int8_supported, weight_bit_plan


def test_edges_stay_8bit_below_8_bits():
    plan = weight_bit_plan(digits_cnn(), QuantizeConfig(weight_bits=3))
    bits = list(plan.values())
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {3}
    plan = weight_bit_plan(digits_cnn(), QuantizeConfig(weight_bits=3, keep_edges_8bit=False))
    assert set(plan.values()) == {3}


def test_int8_activations_need_at_most_8_bits():
    with pytest.raises(ValueError, match="int8 activations need"):
        QuantizeConfig(weight_bits=16, int8_activations=True)


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_k_bit_artifact_is_about_k_over_32(digits, tmp_path, bits):
    raw_base = save_packed(
        tmp_path / "base.acpk", digits.model.state_dict(), weight_bits={}, entropy_coding=False
    )
    cfg = CompressionConfig(quantize=QuantizeConfig(weight_bits=bits, keep_edges_8bit=False))
    c = compress(digits, cfg, tmp_path / "q.acpk")
    assert c.size_bytes == (tmp_path / "q.acpk").stat().st_size
    weights = sum(p.numel() for n, p in digits.model.named_parameters() if n.endswith("weight"))
    others_fp32 = raw_base - weights * 4  # biases, BN statistics, header
    ideal = weights * bits / 8 + others_fp32
    # k bits per weight at most; entropy coding (and, at 2 bits, sparsity) only shrink it
    assert ideal * 0.4 < c.size_bytes <= ideal * 1.02
    assert c.size_bytes < raw_base * (bits / 32 + 0.1)
    plain = save_packed(
        tmp_path / "plain.acpk",
        c.model.state_dict(),
        weight_bits=weight_bit_plan(c.model, cfg.quantize),
        entropy_coding=False,
    )
    scales = sum(p.shape[0] * 4 for n, p in c.model.named_parameters() if n.endswith("weight"))
    if bits >= 4:  # without entropy coding: k/32 of fp32 plus scales and the rest
        assert plain == pytest.approx(ideal + (scales if bits <= 8 else 0), rel=0.02)


@pytest.mark.skipif(not int8_supported(), reason="no x86 int8 kernels in this torch build")
def test_int8_model_is_quantized_and_reloads_identically(digits, tmp_path):
    cfg = CompressionConfig(quantize=QuantizeConfig(weight_bits=8, int8_activations=True))
    c = compress(digits, cfg, tmp_path / "q.acpk")
    assert any(".quantized." in type(m).__module__ for m in c.deployable.modules())
    loaded, meta = load_compressed(tmp_path / "q.acpk", digits.model, digits.example_input)
    x = digits.val.x[:64]
    assert torch.equal(loaded(x), c.deployable(x))
    assert abs(digits.evaluate(c.deployable) - digits.evaluate(digits.model)) < 0.02
