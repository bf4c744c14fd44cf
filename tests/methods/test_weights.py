import pytest
import torch
from torch import nn

from autocompress.artifact import save_packed
from autocompress.grid import QuantSpec, fake_quantize
from autocompress.methods.weights import WeightQuantization
from autocompress.models import digits_cnn
from autocompress.pipeline import CompressionConfig, compress
from tests.methods.helpers import FixedSuggester, apply


def _plan(method, model, example):
    ctx = apply("weights", method, model, example)
    return {n: QuantSpec.from_list(s) for n, s in ctx.records["weights"]["plan"].items()}, ctx


def test_edges_stay_8bit_below_8_bits_unless_asked():
    x = torch.randn(1, 1, 8, 8)
    plan, _ = _plan(WeightQuantization(3), digits_cnn().eval(), x)
    bits = [s.bits for s in plan.values()]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {3}
    plan, _ = _plan(WeightQuantization(3, keep_edges_8bit=False), digits_cnn().eval(), x)
    assert {s.bits for s in plan.values()} == {3}


def test_weights_are_on_their_grid_and_scales_are_recorded():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan, ctx = _plan(
        WeightQuantization(4, "group32", keep_edges_8bit=False), model, torch.randn(1, 1, 8, 8)
    )
    params = dict(model.named_parameters())
    for name, spec in plan.items():
        assert torch.equal(params[name], fake_quantize(original[name], spec)), name
        assert name in ctx.scales
    assert torch.equal(params["0.bias"], original["0.bias"])  # biases stay float32


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_k_bit_artifact_is_about_k_over_32(digits, tmp_path, bits):
    raw_base = save_packed(
        tmp_path / "base.acpk", digits.model.state_dict(), plan={}, entropy_coding=False
    )
    config = CompressionConfig.of(weights=WeightQuantization(bits, keep_edges_8bit=False))
    c = compress(
        digits.model,
        config,
        tmp_path / "q.acpk",
        task=digits.task,
        train=digits.train,
        example_input=digits.example_input,
    )
    assert c.size_bytes == (tmp_path / "q.acpk").stat().st_size
    weights = sum(
        p.numel()
        for n, p in digits.model.named_parameters()
        if n.endswith("weight") and p.dim() > 1
    )
    others_fp32 = raw_base - weights * 4  # biases, BN statistics, header
    ideal = weights * bits / 8 + others_fp32
    # k bits per weight at most; entropy coding (and, at 2 bits, sparsity) only shrink it
    assert ideal * 0.4 < c.size_bytes <= ideal * 1.02
    assert c.report["effective_bits"] == pytest.approx(
        (
            weights * bits
            + (sum(s.numel() for s in []) if bits > 8 else 0)
            + 32 * (sum(p.numel() for p in digits.model.parameters()) - weights)
            + 32
            * sum(p.shape[0] for n, p in digits.model.named_parameters() if p.dim() > 1)
            * (bits <= 8)
        )
        / sum(p.numel() for p in digits.model.parameters()),
        rel=1e-6,
    )


class _Embedder(nn.Module):
    """Embedding table, positional parameter, attention and a head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.pos = nn.Parameter(torch.randn(1, 6, 16))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos
        return self.head(self.attn(h, h, h, need_weights=False)[0])


def test_every_parameter_is_accounted_for():
    torch.manual_seed(0)
    model = _Embedder().eval()
    ids = torch.randint(0, 50, (2, 6))
    plan, _ = _plan(WeightQuantization(4, keep_edges_8bit=False), model, ids)
    assert set(plan) == {"embed.weight", "pos", "attn.in_proj_weight", "attn.out_proj.weight"}
    plan, _ = _plan(WeightQuantization(4, embeddings=False), _Embedder().eval(), ids)
    assert "embed.weight" not in plan and "attn.in_proj_weight" in plan


def test_effective_bits_count_every_parameter_and_tied_weights_once(tmp_path):
    from autocompress.tasks import Classification

    torch.manual_seed(0)
    model = _Embedder().eval()
    ids = torch.randint(0, 50, (2, 6))
    config = CompressionConfig.of(
        weights=WeightQuantization(4, "per_tensor", keep_edges_8bit=False)
    )
    c = compress(
        model, config, tmp_path / "e.acpk", task=Classification(), train=None, example_input=ids
    )
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    biases = model.attn.in_proj_bias.numel() + model.attn.out_proj.bias.numel()
    expected = (4 * (total - biases) + 32 * 4 + 32 * biases) / total  # 4 tensors, one scale each
    assert c.report["effective_bits"] == pytest.approx(expected)
    assert c.report["float32_bytes"] == {"bias": 4 * biases}


def test_hf_conv1d_is_quantized_per_output_column():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = Conv1D(12, 8)  # weight [in=8, out=12]
            self.out = nn.Linear(12, 3)

        def forward(self, x):
            return self.out(self.fc(x))

    del transformers
    plan, _ = _plan(WeightQuantization(4, keep_edges_8bit=False), Net().eval(), torch.randn(1, 8))
    assert plan["fc.weight"].channel_axis == 1 and plan["out.weight"].channel_axis == 0


def test_settings_are_validated():
    with pytest.raises(ValueError, match="weight bits"):
        WeightQuantization(32)
    with pytest.raises(ValueError, match="granularity"):
        WeightQuantization(4, "per_row")
    with pytest.raises(ValueError, match="of 'x'"):
        WeightQuantization(4, layer_bits={"x": 1})


def test_gptq_beats_round_to_nearest_on_correlated_inputs_and_stores_exactly(tmp_path):
    from autocompress.data import TensorData
    from autocompress.pipeline import load_compressed
    from autocompress.tasks import Regression

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(512, 8) @ torch.randn(8, 64) + 0.1 * torch.randn(512, 64)
    data = TensorData(x, torch.zeros(512, 4))
    with torch.no_grad():
        reference = model[0](x)
    errors = {}
    for algorithm in ("rtn", "gptq"):
        config = CompressionConfig.of(
            weights=WeightQuantization(3, "group32", algorithm, keep_edges_8bit=False)
        )
        c = compress(
            model,
            config,
            tmp_path / f"{algorithm}.acpk",
            task=Regression(),
            train=data,
            example_input=x[:1],
        )
        with torch.no_grad():
            errors[algorithm] = float(((c.model[0](x) - reference) ** 2).mean())
        loaded, _ = load_compressed(tmp_path / f"{algorithm}.acpk", model, x[:1], Regression())
        assert torch.equal(loaded[0].weight, c.model[0].weight)
    assert errors["gptq"] < 0.5 * errors["rtn"]


def test_per_layer_bits_follow_the_sensitivity_profile():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    fragile = {"8": 0.0, "4": 1.0, "2": 10.0}
    robust = {"8": 0.0, "4": 0.001, "2": 0.002}
    values = {"per_layer": True, "allocation": "sensitivity", "granularity": "per_channel",
              "algorithm": "rtn", "embeddings": False, "budget_bits": 5.0}  # fmt: skip
    profile = {"bits": {"0.weight": robust, "2.weight": fragile, "4.weight": robust}}
    s = FixedSuggester(model, torch.randn(1, 8), values, profile, {"bits": (8, 4, 2)})
    bits = WeightQuantization.suggest(s).layer_bits
    # 160 weights at 5 bits on average: the fragile layer's 64 keep 8 bits (512), the other
    # 96 share 288 bits, so they go below 8
    assert bits["2.weight"] == 8 and max(bits["0.weight"], bits["4.weight"]) < 8
    sizes = {"0.weight": 64, "2.weight": 64, "4.weight": 32}
    assert sum(bits[n] * sizes[n] for n in sizes) <= 5.0 * 160
    s.profile = {"bits": {"0.weight": fragile, "2.weight": robust, "4.weight": robust}}
    bits = WeightQuantization.suggest(s).layer_bits
    assert bits["0.weight"] == 8 and max(bits["2.weight"], bits["4.weight"]) < 8
