import pytest
import torch
from torch import nn

from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.models import digits_cnn
from tests.methods.helpers import FixedSuggester, apply, zero_share


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_reaches_the_amount_over_all_weights():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    ctx = apply("unstructured", UnstructuredPruning(0.7), model, torch.randn(1, 1, 8, 8))
    weights = _weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.7, abs=0.005)
    assert any("no speed-up" in n for n in ctx.notes)
    assert all(isinstance(w, nn.Parameter) for w in _weights(model))  # masks baked in


def test_per_layer_amounts_set_each_layers_share_of_zeros():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    apply("unstructured", UnstructuredPruning(0.1, {"3.weight": 0.9}), model,
          torch.randn(1, 1, 8, 8))  # fmt: skip
    assert zero_share(model[3].weight) == pytest.approx(0.9, abs=0.01)
    assert zero_share(model[0].weight) == pytest.approx(0.1, abs=0.05)


def test_masks_hold_where_attention_reads_weights_directly():
    """nn.MultiheadAttention reads in_proj_weight and out_proj.weight without calling a
    module: the mask is a parametrization, so it holds through training."""
    torch.manual_seed(0)
    from autocompress.architecture import model_facts
    from autocompress.methods import Context
    from autocompress.pipeline import CompressionConfig
    from autocompress.reparam import bake
    from autocompress.tasks import Classification
    from tests.model_families import TinyViT, _images

    model = TinyViT().eval()
    data = _images(32, 0)
    method = UnstructuredPruning(0.6)
    ctx = Context(Classification(), data.x[:1], data, model_facts(model, data.x[:1]),
                  CompressionConfig.of(unstructured=method))  # fmt: skip
    method.apply(model, ctx)
    mha = model.blocks[0].attn
    masks = {
        n: (p != 0).clone() for n, p in (("in", mha.in_proj_weight), ("out", mha.out_proj.weight))
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(data.x), data.y)
        opt.zero_grad()
        loss.backward()  # no "backward through the graph a second time"
        opt.step()
    bake(model)
    assert bool((mha.in_proj_weight[~masks["in"]] == 0).all())
    assert bool((mha.out_proj.weight[~masks["out"]] == 0).all())
    assert zero_share(mha.in_proj_weight) > 0.3


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 0.95\]"):
        UnstructuredPruning(1.0)


def test_the_smallest_magnitudes_are_zeroed_whatever_their_sign():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -5.0, 3.0, -0.2], [-4.0, 0.3, 0.05, 6.0]]))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(2, 2))
    apply("unstructured", UnstructuredPruning(0.5, {"0.weight": 0.5}), model, torch.randn(1, 4))
    # the four smallest |w| of layer 0 are 0.05, 0.1, 0.2, 0.3: written out, not computed
    expected = torch.tensor([[0.0, -5.0, 3.0, 0.0], [-4.0, 0.0, 0.0, 6.0]])
    assert torch.equal(model[0].weight, expected)


def test_per_layer_amounts_follow_the_sensitivity_profile():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    fragile = {"0.25": 1.0, "0.5": 2.0, "0.75": 4.0, "0.9": 8.0}
    robust = {"0.25": 0.001, "0.5": 0.002, "0.75": 0.004, "0.9": 0.008}
    profile = {"prune": {"0.weight": robust, "2.weight": fragile, "4.weight": robust}}
    values = {"amount": 0.5, "per_layer": True, "allocation": "sensitivity"}
    s = FixedSuggester(model, torch.randn(1, 8), values, profile)
    method = UnstructuredPruning.suggest(s)
    amounts = method.layer_amounts
    assert method.allocated and set(amounts) == {"0.weight", "2.weight", "4.weight"}
    # the fragile middle layer is pruned least, the robust ones carry the amount
    assert amounts["2.weight"] < 0.5 < min(amounts["0.weight"], amounts["4.weight"])
    # swapping which layer is fragile swaps the answer
    profile = {"prune": {"0.weight": fragile, "2.weight": robust, "4.weight": robust}}
    s.profile = profile
    amounts = UnstructuredPruning.suggest(s).layer_amounts
    assert amounts["0.weight"] < 0.5 < amounts["2.weight"]
