"""Tests for quantization-aware fine-tuning (rounding hooks with a straight-through gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from autocompress.data import TensorData
from autocompress.errors import TrialFailure
from autocompress.steps.finetune import FinetuneConfig, finetune
from autocompress.steps.prune import PruneConfig, finalize_pruning, prune_model
from autocompress.steps.qat import fake_quantized_weights
from autocompress.steps.quantize import QuantizeConfig, quantize_weights_, weight_bit_plan
from tests.conftest import _blobs, tiny_cnn

PLAN_CONFIG = QuantizeConfig(weight_bits=2, keep_edges_8bit=False)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().eval()


def test_forward_inside_the_block_sees_rounded_weights():
    model = _model()
    plan = weight_bit_plan(model, PLAN_CONFIG)
    rounded = copy.deepcopy(model)
    quantize_weights_(rounded, plan, "per_channel")
    x = _blobs(16, 0).x
    with torch.no_grad():
        float_out = model(x)
        with fake_quantized_weights(model, plan, "per_channel"):
            qat_out = model(x)
        after = model(x)
    assert torch.allclose(qat_out, rounded(x), atol=1e-5)
    assert not torch.allclose(qat_out, float_out, atol=1e-3)  # 2 bits really round
    assert torch.equal(after, float_out)  # leaving the block restores the float model


def test_gradients_pass_straight_through_and_the_model_is_restored():
    model = _model()
    plan = weight_bit_plan(model, PLAN_CONFIG)
    data = _blobs(32, 0)
    with fake_quantized_weights(model, plan, "per_channel"):
        first = model[0]
        assert isinstance(first.weight_orig, nn.Parameter)
        F.cross_entropy(model(data.x), data.y).backward()
        assert first.weight_orig.grad is not None and first.weight_orig.grad.abs().sum() > 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert not torch_prune.is_pruned(module), name
            assert isinstance(module.weight, nn.Parameter), name
            assert not module._forward_pre_hooks, name


def test_unstructured_masks_survive_and_zeros_stay_zero():
    model = _model()
    example = _blobs(2, 0).x
    prune_model(model, PruneConfig("unstructured", 0.6), example)
    masks = {
        n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")
    }
    plan = weight_bit_plan(model, PLAN_CONFIG)
    with fake_quantized_weights(model, plan, "per_channel"):
        finetune(model, _blobs(128, 0), FinetuneConfig(epochs=2, batch_size=32, lr=1e-2))
    for name, module in model.named_modules():
        if name in masks:
            assert torch.equal(module.weight_mask, masks[name])  # still masked, same mask
    finalize_pruning(model)
    for name, module in model.named_modules():
        if name in masks:
            assert bool((module.weight[masks[name] == 0] == 0).all())


def _noisy(n: int, seed: int) -> TensorData:
    data = _blobs(n, seed)
    noise = torch.randn(data.x.shape, generator=torch.Generator().manual_seed(seed + 100))
    return TensorData(data.x + 1.5 * noise, data.y)  # hard enough that 2-bit rounding hurts


def test_qat_beats_rounding_after_training_at_two_bits():
    """Fine-tuning that sees the 2-bit grid ends with a lower held-out loss on that grid."""
    train, val, losses = _noisy(512, 0), _noisy(256, 50), {}
    config = FinetuneConfig(epochs=6, batch_size=32, lr=3e-3)
    for quant_aware in (False, True):
        model = _model()
        plan = weight_bit_plan(model, PLAN_CONFIG)
        if quant_aware:
            with fake_quantized_weights(model, plan, "per_channel"):
                finetune(model, train, config)
        else:
            finetune(model, train, config)
        quantize_weights_(model, plan, "per_channel")
        with torch.no_grad():
            losses[quant_aware] = F.cross_entropy(model(val.x), val.y).item()
    assert losses[True] < 0.9 * losses[False]


def test_non_finite_weights_fail_the_trial():
    model = _model()
    plan = weight_bit_plan(model, PLAN_CONFIG)
    with fake_quantized_weights(model, plan, "per_channel"):
        with torch.no_grad():
            model[0].weight_orig[0, 0, 0, 0] = float("nan")
        with pytest.raises(TrialFailure, match="non-finite"):
            model(_blobs(2, 0).x)
