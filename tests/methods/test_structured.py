import pytest
import torch
from torch import nn

from autocompress.methods.structured import StructuredPruning, replay_history
from autocompress.models import digits_cnn, lenet5
from tests.methods.helpers import FixedSuggester, apply, conv_params


@pytest.mark.parametrize("factory, shape", [(digits_cnn, (1, 1, 8, 8)), (lenet5, (1, 1, 28, 28))])
def test_half_cuts_conv_params_3_to_4x_and_keeps_output(factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    before = conv_params(model)
    ctx = apply("structured", StructuredPruning(0.5), model, x)
    assert 3.0 <= before / conv_params(model) <= 4.2
    assert model(x).shape == (1, 10)
    assert ctx.records["structured"]["history"], "torch-pruning's history replays the pruning"


def test_history_replays_to_the_same_model():
    torch.manual_seed(0)
    model, copy = digits_cnn().eval(), digits_cnn().eval()
    copy.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 8, 8)
    ctx = apply("structured", StructuredPruning(0.6), model, x)
    replay_history(copy, ctx.records["structured"]["history"], x)
    assert copy.state_dict().keys() == model.state_dict().keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(copy.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_untraceable_model_raises():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            if torch.is_grad_enabled() and self.fc1._forward_hooks:  # torch-pruning is tracing
                raise TypeError("dynamic control flow this tracer cannot follow")
            return self.fc2(torch.relu(self.fc1(x)))

    with pytest.raises(TypeError, match="cannot follow"):
        apply("structured", StructuredPruning(0.5), Untraceable().eval(), torch.randn(1, 8))


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 0.95\]"):
        StructuredPruning(0.99)
    with pytest.raises(ValueError, match=r"of 'x'"):
        StructuredPruning(0.5, {"x": -0.1})


def test_per_layer_amounts_are_applied():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    ctx = apply("structured", StructuredPruning(0.5, {"0": 0.25, "3": 0.75}), model,
                torch.randn(1, 1, 8, 8))  # fmt: skip
    channels = ctx.records["structured"]["channels"]
    assert channels["0"] == 24 and channels["3"] == 16
    assert channels["7"] == 32  # the global amount elsewhere
    assert channels["14"] == 10  # the output layer, found by tracing, keeps its classes


def test_the_output_layer_is_found_by_tracing_not_definition_order():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(32, 10)  # defined first, runs last
            self.body = nn.Linear(16, 32)
            self.mid = nn.Linear(32, 32)

        def forward(self, x):
            return self.head(torch.relu(self.mid(torch.relu(self.body(x)))))

    model = HeadFirst().eval()
    x = torch.randn(2, 16)
    ctx = apply("structured", StructuredPruning(0.5), model, x)
    assert model(x).shape == (2, 10)
    assert ctx.records["structured"]["channels"]["head"] == 10
    assert ctx.records["structured"]["channels"]["body"] == 16


def test_depthwise_residual_cnn_stays_consistent_and_reloads():
    from autocompress.architecture import model_facts
    from autocompress.pipeline import CompressionConfig, compress, load_compressed
    from autocompress.tasks import Classification
    from tests.model_families import depthwise_cnn

    torch.manual_seed(0)
    model = depthwise_cnn().eval()
    x = torch.randn(4, 3, 16, 16)
    config = CompressionConfig.of(structured=StructuredPruning(0.5))
    c = compress(model, config, "m.acpk", task=Classification(), train=None, example_input=x[:1],
                 facts=model_facts(model, x[:1]))  # fmt: skip
    depthwise = [m for m in c.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    loaded, _ = load_compressed("m.acpk", model, x[:1], Classification())
    with torch.no_grad():
        assert torch.equal(loaded(x), c.model(x))


@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_attention_stays_whole_in_a_head_first_vit_and_the_weakest_channels_go(amount):
    """Head defined before the blocks, blocks in nn.Sequential (not recognised as transformer
    parts): torch-pruning used to cut the residual stream and nn.MultiheadAttention with it to
    widths its 4 heads do not divide (11 of 16 at 0.3). The attention and the residual stream
    stay whole, as the README promises; the MLP's lowest-norm neurons go."""
    from tests.tiny_workloads import HeadFirstViT

    torch.manual_seed(0)
    model = HeadFirstViT().eval()
    up, down = model.blocks[0].mlp[0], model.blocks[0].mlp[2]
    g = torch.Generator().manual_seed(1)
    scale = torch.randperm(up.out_features, generator=g).float() + 1.0
    with torch.no_grad():
        up.weight.copy_(torch.randn(up.in_features, generator=g) * scale[:, None])
        up.bias.zero_()
        down.weight.copy_(torch.randn(down.out_features, 1, generator=g).expand_as(down.weight))
    rows = up.weight.detach().clone()
    x = torch.randn(4, 8)
    ctx = apply("structured", StructuredPruning(amount), model, x)
    assert model(x).shape == (4, 3)
    for block in model.blocks:
        assert (block.attn.embed_dim, block.attn.num_heads, block.attn.head_dim) == (16, 4, 4)
    assert model.embed.out_features == 16 and model.head.out_features == 3
    n_kept = int(up.in_features * 2 * (1 - amount))  # torch-pruning keeps the floor
    kept = sorted(scale.argsort(descending=True)[:n_kept].tolist())  # the largest rows stay
    assert up.out_features == n_kept
    assert torch.equal(up.weight, rows[kept])
    assert any("attention" in note for note in ctx.notes)


def test_the_lowest_norm_channels_are_removed():
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))
    norms = torch.tensor([1.0, 12, 2, 11, 3, 10, 4, 9, 5, 8, 6, 7])
    with torch.no_grad():
        rows = torch.ones(12, 4) * norms.unsqueeze(1)
        rows[::2] *= -1  # the sign does not matter, the norm does
        model[0].weight.copy_(rows)
        model[0].bias.zero_()
        model[2].weight.fill_(0.5)  # every channel read alike: only layer 0 tells them apart
    original = model[0].weight.detach().clone()
    ctx = apply("structured", StructuredPruning(0.5), model, torch.randn(1, 4))
    assert ctx.records["structured"]["channels"]["0"] == 6
    # the odd channels hold norms 12, 11, 10, 9, 8, 7: they stay, in order (1 in 924 by chance)
    assert torch.equal(model[0].weight, original[[1, 3, 5, 7, 9, 11]])


def test_per_layer_amounts_follow_the_sensitivity_profile():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    fragile = {"0.25": 1.0, "0.5": 2.0, "0.75": 4.0, "0.9": 8.0}
    robust = {"0.25": 0.001, "0.5": 0.002, "0.75": 0.004, "0.9": 0.008}
    s = FixedSuggester(model, torch.randn(1, 8),
                       {"amount": 0.5, "per_layer": True, "allocation": "sensitivity"},
                       {"channels": {"0": fragile, "2": robust}})  # fmt: skip
    method = StructuredPruning.suggest(s)
    assert method.allocated and set(method.layer_amounts) == {"0", "2"}  # not the output layer
    assert method.layer_amounts["0"] < 0.5 < method.layer_amounts["2"]
    s.profile = {"channels": {"0": robust, "2": fragile}}
    amounts = StructuredPruning.suggest(s).layer_amounts
    assert amounts["2"] < 0.5 < amounts["0"]
