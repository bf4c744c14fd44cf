"""Low-rank factorization: which singular directions it keeps, on weights built to know them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.data import TensorData
from autocompress.methods.lowrank import LowRank
from autocompress.pipeline import CompressionConfig
from tests.conftest import tiny_cnn
from tests.methods.helpers import apply


def _orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def _layer(weight: torch.Tensor, bias: bool = True) -> nn.Sequential:
    out, inp = weight.shape
    layer = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(torch.arange(out, dtype=torch.float32))
    return nn.Sequential(layer)


def _product(model: nn.Module) -> torch.Tensor:
    split = model.get_submodule("0")
    assert isinstance(split, nn.Sequential)
    a, b = split
    assert isinstance(a, nn.Linear) and isinstance(b, nn.Linear)
    return (b.weight @ a.weight).detach()


def test_a_weight_of_rank_r_is_reproduced_exactly_at_rank_r():
    u, v = _orthonormal(24, 0)[:, :3], _orthonormal(16, 1)[:, :3]
    weight = u @ torch.diag(torch.tensor([4.0, 2.0, 1.0])) @ v.T  # rank 3, 24 x 16
    model = _layer(weight)
    x = torch.randn(5, 16)
    expected = model(x).detach()
    ctx = apply("lowrank", LowRank(rank_ratio=3 / 16), model, x)
    a, b = model[0]
    assert (a.in_features, a.out_features, b.out_features) == (16, 3, 24)
    assert a.bias is None and torch.equal(b.bias.detach(), torch.arange(24.0))
    assert torch.allclose(_product(model), weight, atol=1e-5)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert ctx.records["lowrank"] == {"ranks": {"0": 3}}
    assert sum(p.numel() for p in model.parameters()) == 3 * (16 + 24) + 24 < 24 * 16 + 24


def test_the_largest_singular_directions_are_kept():
    u, v = _orthonormal(20, 2), _orthonormal(20, 3)
    sigma = torch.tensor([1.0, 5.0, 0.5, 3.0] + [0.0] * 16)  # largest: directions 1 and 3
    weight = u @ torch.diag(sigma) @ v.T
    model = _layer(weight)
    apply("lowrank", LowRank(rank_ratio=0.1), model, torch.randn(2, 20))
    top = 5.0 * torch.outer(u[:, 1], v[:, 1]) + 3.0 * torch.outer(u[:, 3], v[:, 3])
    assert torch.allclose(_product(model), top, atol=1e-5)
    # the factors share the singular values evenly: both have the same norm
    a, b = model[0]
    assert torch.allclose(a.weight.norm(), b.weight.norm(), rtol=1e-4)


def test_activation_aware_keeps_the_direction_the_inputs_use():
    # two directions along input features 0 and 1 (output rows rotated), plus a little noise
    # (no exact zeros: a sparse layer would be left whole)
    g = torch.Generator().manual_seed(5)
    u = _orthonormal(16, 6)
    weight = 3.0 * torch.outer(u[:, 0], torch.eye(16)[0]) + 2.0 * torch.outer(
        u[:, 1], torch.eye(16)[1]
    )
    weight += 1e-4 * torch.randn(16, 16, generator=g)
    scale = torch.full((16,), 0.01)
    scale[1] = 10.0  # the data uses input feature 1, barely feature 0
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(4)) * scale
    train = TensorData(x, torch.zeros(128, dtype=torch.long))
    plain, aware = _layer(weight), _layer(weight)
    apply("lowrank", LowRank(rank_ratio=1 / 16), plain, x[:2])
    apply("lowrank", LowRank(rank_ratio=1 / 16, activation_aware=True), aware, x[:2],
          train=train)  # fmt: skip
    plain_only = 3.0 * torch.outer(u[:, 0], torch.eye(16)[0])
    aware_only = 2.0 * torch.outer(u[:, 1], torch.eye(16)[1])
    assert torch.allclose(_product(plain), plain_only, atol=1e-3)  # the largest: feature 0
    assert torch.allclose(_product(aware), aware_only, atol=1e-3)  # the one the data uses


def test_layers_whose_factors_would_not_be_smaller_stay_whole_with_a_note():
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    ctx = apply("lowrank", LowRank(rank_ratio=0.95), model, torch.randn(2, 8))
    # rank 8 of 64 x 8: 8 * 72 >= 512; rank 4 of 4 x 64: 4 * 68 >= 256
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], nn.Linear)
    assert ctx.records["lowrank"] == {"ranks": {}}
    assert any("factors would not be smaller" in n and "0, 2" in n for n in ctx.notes)


def test_a_model_without_linear_layers_is_refused_and_the_setting_checked():
    from autocompress.architecture import model_facts

    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert "no linear layer" in LowRank.unavailable(model_facts(model, torch.randn(1, 3, 8, 8)))
    assert LowRank.unavailable(model_facts(tiny_cnn(), torch.randn(1, 1, 8, 8))) is None
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(ValueError, match="rank_ratio"):
            LowRank(rank_ratio=bad)
    config = CompressionConfig.of(lowrank=LowRank(0.3, activation_aware=True))
    assert CompressionConfig.from_dict(config.to_dict()) == config
    assert config.describe() == "low-rank 30% ASVD"
