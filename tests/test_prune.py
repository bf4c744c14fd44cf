import pytest
import torch
from torch import nn

from autocompress.errors import TrialFailure
from autocompress.models import digits_cnn, lenet5
from autocompress.steps.prune import PruneConfig, finalize_pruning, prune_model, sparsity


def conv_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("factory, shape", [(digits_cnn, (1, 1, 8, 8)), (lenet5, (1, 1, 28, 28))])
def test_structured_half_cuts_conv_params_3_to_4x_and_keeps_output(factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    before = conv_params(model)
    report = prune_model(model, PruneConfig("structured", 0.5), x)
    after = conv_params(model)
    assert 3.0 <= before / after <= 4.2
    assert model(x).shape == (1, 10)
    assert report["params_after"] < report["params_before"]
    assert report["history"], "torch-pruning's history is kept to replay the pruning"


def test_unstructured_reaches_the_amount_and_stays_after_finalize():
    torch.manual_seed(0)
    model = digits_cnn()
    prune_model(model, PruneConfig("unstructured", 0.7), torch.randn(1, 1, 8, 8))
    finalize_pruning(model)
    assert sparsity(model) == pytest.approx(0.7, abs=0.01)
    assert not any(n.endswith("weight_orig") for n, _ in model.named_parameters())


def test_structured_failure_is_a_trial_failure():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.flatten(1)[:, :10] if y.shape[1] == 4 else None  # shape-dependent graph

    with pytest.raises(TrialFailure, match="structured pruning failed"):
        prune_model(Weird(), PruneConfig("structured", 0.5), torch.randn(1, 1, 8, 8))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown pruning method"):
        PruneConfig("random", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 0.95\]"):
        PruneConfig("structured", 0.99)


def test_per_layer_amounts_are_applied():
    torch.manual_seed(0)
    model = digits_cnn()
    cfg = PruneConfig("structured", 0.5, layer_amounts={"0": 0.25, "3": 0.75})
    report = prune_model(model, cfg, torch.randn(1, 1, 8, 8))
    assert report["channels"]["0"] == 24 and report["channels"]["3"] == 16
    assert report["channels"]["7"] == 32  # the global amount elsewhere
    model = digits_cnn()
    prune_model(model, PruneConfig("unstructured", 0.1, layer_amounts={"3": 0.9}), None)
    finalize_pruning(model)
    assert (model[3].weight == 0).float().mean() == pytest.approx(0.9, abs=0.01)
    assert (model[0].weight == 0).float().mean() == pytest.approx(0.1, abs=0.05)
