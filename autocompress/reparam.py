"""Pruning masks and quantization-aware rounding as parametrizations of a parameter.

``torch.nn.utils.parametrize`` recomputes a parametrized tensor each time it is read, whoever
reads it. So a mask or a rounding holds even where a weight is used without calling its module
(``nn.MultiheadAttention`` reads ``out_proj.weight`` and ``in_proj_weight`` directly), which
forward pre-hooks (``torch.nn.utils.prune``) miss.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialFailure
from autocompress.grid import QuantSpec, fake_quantize


class Mask(nn.Module):
    """Multiplies the parameter by a fixed 0/1 mask: pruned weights stay zero in training."""

    mask: torch.Tensor  # a buffer

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


class RoundToGrid(nn.Module):
    """The parameter as its k-bit grid value in the forward pass; gradients pass straight
    through the rounding to the float parameter (the straight-through estimator)."""

    def __init__(self, spec: QuantSpec, name: str) -> None:
        super().__init__()
        self.spec = spec
        self.name = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        try:
            rounded = fake_quantize(weight.detach(), self.spec)
        except ValueError:
            raise TrialFailure(
                f"weights of {self.name!r} became non-finite during quantization-aware "
                "fine-tuning (try a lower learning rate)"
            ) from None
        rounded = rounded.to(device=weight.device, dtype=weight.dtype)
        return weight + (rounded - weight).detach()


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``name`` and the parameter's attribute name."""
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def add_mask(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Keep parameter ``name`` multiplied by ``mask`` until :func:`bake` is called."""
    module, attr = owner(model, name)
    parametrize.register_parametrization(module, attr, Mask(mask), unsafe=True)


def add_rounding(model: nn.Module, name: str, spec: QuantSpec) -> None:
    """Let the forward pass see parameter ``name`` rounded to ``spec`` until :func:`bake`."""
    module, attr = owner(model, name)
    parametrize.register_parametrization(module, attr, RoundToGrid(spec, name), unsafe=True)


def bake(model: nn.Module) -> None:
    """Remove every parametrization: masks are applied for good, roundings dropped (the float
    parameter is kept; the quantize step rounds it to exactly what the last forward saw)."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        # A parametrized module holds a ParametrizationList per parametrized attribute.
        chains = cast(nn.ModuleDict, module.parametrizations)
        for attr in list(chains.keys()):
            chain = cast(parametrize.ParametrizationList, chains[attr])
            masks = [p for p in chain if isinstance(p, Mask)]
            original = chain.original.detach()
            for mask in masks:
                original = original * mask.mask.to(original.dtype)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, attr).copy_(original)
