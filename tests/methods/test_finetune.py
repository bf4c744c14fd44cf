"""Fine-tuning as a method: quantization-aware training through the weight grid, masks kept."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import TensorData
from autocompress.errors import TrialFailure
from autocompress.grid import QuantSpec, fake_quantize
from autocompress.methods.finetune import Finetune
from autocompress.methods.unstructured import UnstructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.reparam import add_rounding, bake
from autocompress.tasks import Classification
from tests.conftest import _blobs, tiny_cnn

TWO_BITS = WeightQuantization(2, keep_edges_8bit=False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().eval()


def _noisy(n: int, seed: int) -> TensorData:
    data = _blobs(n, seed)
    noise = torch.randn(data.x.shape, generator=torch.Generator().manual_seed(seed + 100))
    return TensorData(data.x + 1.5 * noise, data.y)  # hard enough that 2-bit rounding hurts


def test_forward_under_rounding_sees_grid_weights_and_gradients_pass_through():
    model = _model()
    spec = QuantSpec(2)
    original = model[0].weight.detach().clone()
    add_rounding(model, "0.weight", spec)
    assert torch.equal(model[0].weight, fake_quantize(original, spec))
    data = _blobs(16, 0)
    F.cross_entropy(model(data.x), data.y).backward()
    grad = model[0].parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0
    bake(model)
    assert isinstance(model[0].weight, nn.Parameter)
    assert torch.equal(model[0].weight, original)  # the float weight is kept; quantize rounds it


def test_qat_beats_rounding_after_training_at_two_bits(tmp_path):
    """Fine-tuning that sees the 2-bit grid ends with a lower held-out loss on that grid."""
    train, val, losses = _noisy(512, 0), _noisy(256, 50), {}
    for quant_aware in (False, True):
        config = CompressionConfig.of(
            finetune=Finetune(epochs=6, batch_size=32, lr=3e-3, quant_aware=quant_aware),
            weights=TWO_BITS,
        )
        c = compress(_model(), config, tmp_path / f"{quant_aware}.acpk", task=Classification(),
                     train=train, example_input=train.x[:1])  # fmt: skip
        with torch.no_grad():
            losses[quant_aware] = F.cross_entropy(c.model(val.x), val.y).item()
    assert losses[True] < 0.9 * losses[False]


def test_masks_survive_quantization_aware_training(tmp_path):
    config = CompressionConfig.of(
        unstructured=UnstructuredPruning(0.6),
        finetune=Finetune(epochs=2, batch_size=32, lr=1e-2, quant_aware=True),
        weights=TWO_BITS,
    )
    data = _blobs(128, 0)
    c = compress(_model(), config, tmp_path / "m.acpk", task=Classification(), train=data,
                 example_input=data.x[:1])  # fmt: skip
    assert c.report["sparsity"] >= 0.6


def test_non_finite_weights_fail_the_trial():
    model = _model()
    add_rounding(model, "0.weight", QuantSpec(2))
    with torch.no_grad():
        model[0].parametrizations.weight.original[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrialFailure, match="non-finite"):
        model(_blobs(2, 0).x)


def test_quant_aware_is_offered_only_below_16_bits():
    class S:
        facts, chosen = None, {"weights": WeightQuantization(16)}

        def __call__(self, p):
            return {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 1e-3,
                    "schedule": "constant", "warmup_fraction": 0.0, "weight_decay": 0.0,
                    "quant_aware": True}[p]  # fmt: skip

    assert Finetune.suggest(S()).quant_aware is False
    S.chosen = {"weights": WeightQuantization(4)}
    assert Finetune.suggest(S()).quant_aware is True
