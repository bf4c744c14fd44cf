import copy

import pytest
import torch
from torch import nn

from autocompress.architecture import model_facts
from autocompress.attention import SlicedMultiheadAttention
from autocompress.deploy import deploy
from autocompress.methods.heads import HeadPruning
from autocompress.models import digits_cnn
from autocompress.pipeline import CompressionConfig
from autocompress.transformer_parts import find_transformer_parts
from tests.methods.helpers import apply
from tests.methods.tiny_transformers import (
    FAMILIES,
    bert,
    check_compress_reload_deploy,
    one_thread,  # noqa: F401 - the fixture
    output,
    same_state,
)

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["bert", "gpt2", "vit", "encoder"]


def _scale_head(model, a, head, qk=1.0, v=1.0, out=1.0):
    """Multiply one head's query/key rows, value rows (and biases) and output columns."""
    modules = dict(model.named_modules())
    d, inner = a.head_dim, a.num_heads * a.head_dim
    r = torch.arange(head * d, (head + 1) * d)
    with torch.no_grad():
        if a.kind == "bert":
            q, k, value, o = (modules[p] for p in a.projections)
            for layer, f in ((q, qk), (k, qk), (value, v)):
                layer.weight[r] *= f
                layer.bias[r] *= f
            o.weight[:, r] *= out
        elif a.kind == "gpt2":
            attn = modules[a.name]
            for offset, f in ((0, qk), (inner, qk), (2 * inner, v)):
                attn.c_attn.weight[:, r + offset] *= f
                attn.c_attn.bias[r + offset] *= f
            attn.c_proj.weight[r] *= out
        else:
            mha = modules[a.name]
            for offset, f in ((0, qk), (inner, qk), (2 * inner, v)):
                mha.in_proj_weight[r + offset] *= f
                mha.in_proj_bias[r + offset] *= f
            mha.out_proj.weight[:, r] *= out


def _family(kind):
    factory, example, _, train = FAMILIES[kind]
    return factory(), example(), train()


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"key_padding_mask": True},
        {"attn_mask": (7, 7)},
        {"attn_mask": (12, 7, 7), "key_padding_mask": True},
        {"need_weights": True, "key_padding_mask": True},
        {"need_weights": True, "average_attn_weights": False},
    ],
    ids=["plain", "padding", "mask", "per-head-mask", "weights", "per-head-weights"],
)
def test_sliced_attention_with_every_head_is_multihead_attention(batch_first, call):
    torch.manual_seed(0)
    mha = random_mha(batch_first)
    sliced = SlicedMultiheadAttention.convert(copy.deepcopy(mha))
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    kwargs = {"need_weights": False, **call}
    if kwargs.get("key_padding_mask"):
        padding = torch.zeros(3, 7, dtype=torch.bool)
        padding[0, 5:] = True
        kwargs["key_padding_mask"] = padding
    if "attn_mask" in kwargs:
        kwargs["attn_mask"] = torch.randn(*kwargs["attn_mask"])
        if "key_padding_mask" in kwargs:  # both additive: mixed kinds are deprecated in torch
            kwargs["key_padding_mask"] = torch.zeros(3, 7).masked_fill(padding, float("-inf"))
    want, want_weights = mha(x, x, x, **kwargs)
    got, got_weights = sliced(x, x, x, **kwargs)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if want_weights is not None:
        torch.testing.assert_close(got_weights, want_weights, atol=1e-6, rtol=0)


def random_mha(batch_first=True):
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha


def test_sliced_attention_is_the_whole_one_without_the_removed_heads():
    torch.manual_seed(0)
    mha = random_mha()
    zeroed = copy.deepcopy(mha)
    with torch.no_grad():
        zeroed.out_proj.weight[:, 8:16] = 0
        zeroed.out_proj.weight[:, 24:32] = 0
    sliced = SlicedMultiheadAttention.convert(copy.deepcopy(mha), [0, 2])
    assert sliced.num_heads == 2 and sliced.in_proj_weight.shape == (48, 32)
    x, per_head = torch.randn(3, 7, 32), torch.randn(12, 7, 7)
    for kwargs in ({}, {"attn_mask": per_head}):
        want = zeroed(x, x, x, need_weights=False, **kwargs)[0]
        torch.testing.assert_close(sliced(x, x, x, need_weights=False, **kwargs)[0], want)
    memory = torch.randn(3, 5, 32)  # cross-attention
    want = zeroed(x, memory, memory, need_weights=False)[0]
    torch.testing.assert_close(sliced(x, memory, memory, need_weights=False)[0], want)
    again = SlicedMultiheadAttention.convert(sliced, [1])
    assert again.kept_heads == (2,) and again.original_heads == 4


@pytest.mark.parametrize("amount, removed", [(0.1, 0), (0.25, 1), (0.3, 1), (0.5, 2), (0.75, 3)])
def test_amounts_remove_whole_heads_rounded_down(amount, removed):
    model, x, _ = _family("bert")
    ctx = apply("heads", HeadPruning(amount), model, x)
    parts = find_transformer_parts(model)
    assert all(a.num_heads == 4 - removed for a in parts.attention)
    assert all(len(h) == removed for h in ctx.records["heads"].values())
    assert model.bert.encoder.layer[0].attention.self.query.out_features == (4 - removed) * 16
    assert output(model, x).shape == (2, 2)
    if removed == 0:
        assert any("removed no head" in n for n in ctx.notes)


@pytest.mark.parametrize("kind", KINDS)
def test_magnitude_removes_the_smallest_heads_exactly(kind):
    model, x, _ = _family(kind)
    parts = find_transformer_parts(model)
    factors = ([3.0, 0.1, 2.0, 0.2], [0.1, 2.0, 0.2, 3.0])
    for a, fs in zip(parts.attention, factors, strict=True):
        for h, f in enumerate(fs):
            _scale_head(model, a, h, qk=f, v=f, out=f)
    zeroed = copy.deepcopy(model)
    for a, heads in zip(parts.attention, ([1, 3], [0, 2]), strict=True):
        for h in heads:
            _scale_head(zeroed, a, h, out=0.0)
    ctx = apply("heads", HeadPruning(0.5), model, x)
    assert list(ctx.records["heads"].values()) == [[1, 3], [0, 2]]
    torch.testing.assert_close(output(model, x), output(zeroed, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_ranks_heads_by_output_not_weights(kind):
    model, x, train = _family(kind)
    for a in find_transformer_parts(model).attention:
        for h in (0, 2):  # quiet heads with loud weights
            _scale_head(model, a, h, v=0.01, out=100.0)
    by_weights = apply("heads", HeadPruning(0.5), copy.deepcopy(model), x)
    by_output = apply("heads", HeadPruning(0.5, "activation"), model, x, train=train)
    assert all(h == [0, 2] for h in by_output.records["heads"].values())
    assert all(h != [0, 2] for h in by_weights.records["heads"].values())


@pytest.mark.parametrize("kind", KINDS)
def test_replay_removes_exactly_the_recorded_heads(kind):
    model, x, train = _family(kind)
    fresh = copy.deepcopy(model)
    ctx = apply("heads", HeadPruning(0.5, "activation"), model, x, train=train)
    apply("heads", HeadPruning(0.5), fresh, x, replay=ctx.records)  # no data needed
    assert same_state(fresh, model)
    assert torch.equal(output(fresh, x), output(model, x))


def test_replay_of_a_record_that_does_not_fit_fails():
    model, x, _ = _family("bert")
    name = "bert.encoder.layer.0.attention.self"
    with pytest.raises(ValueError, match="cannot remove heads"):
        apply("heads", HeadPruning(0.5), model, x, replay={"heads": {name: [0, 1, 2, 3]}})
    with pytest.raises(ValueError, match="has not"):
        apply("heads", HeadPruning(0.5), model, x, replay={"heads": {"nowhere": [0]}})


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_model_reloads_exactly_and_deploys(kind, tmp_path):
    config = CompressionConfig.of(heads=HeadPruning(0.5, "activation"))
    report = check_compress_reload_deploy(kind, config, tmp_path)
    assert report["params"] < report["params_baseline"]


def test_half_the_heads_of_tiny_bert():
    model, x, _ = _family("bert")
    before = sum(p.numel() for p in model.parameters())
    apply("heads", HeadPruning(0.5), model, x)
    # 2 layers x 2 heads x 16 dims x (q, k, v rows of 64 + 1 bias, output columns of 64)
    assert before - sum(p.numel() for p in model.parameters()) == 2 * 2 * 16 * (3 * 65 + 64)


class _TokenEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))


def test_pruned_attention_exports_without_a_fixed_sequence_length(tmp_path):
    torch.manual_seed(0)
    model = _TokenEncoder().eval()
    x = torch.randint(0, 64, (2, 16))
    apply("heads", HeadPruning(0.5), model, x)
    assert all(
        isinstance(layer.self_attn, SlicedMultiheadAttention) for layer in model.encoder.layers
    )
    deployed = deploy(model, tmp_path / "m", example_input=x, runtime="onnxruntime")
    for shape in ((2, 16), (3, 9), (1, 1)):
        ids = torch.randint(0, 64, shape)
        torch.testing.assert_close(deployed.run(ids), output(model, ids), atol=1e-4, rtol=0)


def test_unavailable_without_heads_to_remove():
    x = torch.randn(1, 1, 8, 8)
    assert HeadPruning.unavailable(model_facts(digits_cnn(), x)) == "no attention heads found"

    class OneHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.MultiheadAttention(8, 1, batch_first=True)] * 2)

        def forward(self, x):
            for b in self.blocks:
                x = b(x, x, x)[0]
            return x

    reason = HeadPruning.unavailable(model_facts(OneHead(), torch.randn(1, 3, 8)))
    assert reason is not None and "single head" in reason
    assert HeadPruning.unavailable(model_facts(bert(), FAMILIES["bert"][1]())) is None


def test_modules_that_cannot_lose_heads_are_left_whole_with_a_note():
    class BiasKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(
                [
                    nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=i == 0)
                    for i in range(2)
                ]
            )

        def forward(self, x):
            for b in self.blocks:
                x = x + b(x, x, x, need_weights=False)[0]
            return x

    model = BiasKV().eval()
    ctx = apply("heads", HeadPruning(0.5), model, torch.randn(1, 3, 8))
    assert list(ctx.records["heads"]) == ["blocks.1"] and len(ctx.records["heads"]["blocks.1"]) == 1
    assert type(model.blocks[0]) is nn.MultiheadAttention
    assert any("blocks.0 (nn.MultiheadAttention with add_bias_kv" in n for n in ctx.notes)


def test_activation_needs_calibration_data():
    model, x, _ = _family("bert")
    with pytest.raises(ValueError, match="calibration data"):
        apply("heads", HeadPruning(0.5, "activation"), model, x)


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 0.75\]"):
        HeadPruning(0.8)
    with pytest.raises(ValueError, match="magnitude, activation"):
        HeadPruning(0.5, "random")
    assert HeadPruning(0.5, "activation").describe() == "heads -50% by activation"
