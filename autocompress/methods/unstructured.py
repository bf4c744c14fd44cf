"""Unstructured pruning: zero the smallest weights (global magnitude, or per layer).

The zeros are kept through fine-tuning by a mask (:mod:`autocompress.reparam`). The packed
artifact stores them sparsely, so it gets smaller; dense kernels run just as long, and the
trial's notes say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from autocompress.allocation import allocate_ratios
from autocompress.methods._base import (
    Context,
    Method,
    Param,
    Suggester,
    allocation_param,
    fraction,
    profile_part,
)
from autocompress.reparam import add_mask
from autocompress.sensitivity import profile_sizes

ROLES = ("weight", "attention")  # conv/linear weights and fused attention projections


@dataclass(frozen=True)
class UnstructuredPruning(Method):
    """Zero the smallest-magnitude weights of conv, linear and attention projections.

    Attributes:
        amount: Share of those weights set to zero (over all of them, by magnitude).
        layer_amounts: Per-layer shares by weight name, overriding ``amount``; each layer is
            then pruned by its own magnitudes.
        allocated: Whether ``layer_amounts`` were allocated from the study's sensitivity
            profile so that ``amount`` of the parameters (weighted by layer size) are pruned
            (a record: what applies is ``layer_amounts``).
    """

    amount: float = 0.5
    layer_amounts: dict[str, float] = field(default_factory=dict)
    allocated: bool = False

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "amount": Param(float, {"low": 0.1, "high": 0.9}, "share of weights set to zero",
                        bounds=(0.0, 0.95)),
        "per_layer": Param(bool, False, "one amount per layer"),
        "allocation": allocation_param("amounts pruning `amount` of the parameters"),
        "layer_scale": Param(float, {"low": 0.5, "high": 1.5},
                             "sampled: range of the per-layer multipliers of the amount",
                             bounds=(0.0, 4.0)),
    }  # fmt: skip

    def __post_init__(self) -> None:
        fraction(self.amount, "unstructured pruning amount")
        for name, value in self.layer_amounts.items():
            fraction(value, f"unstructured pruning amount of {name!r}")
        if not isinstance(self.allocated, bool):
            raise ValueError(f"allocated must be true or false, got {self.allocated!r}")

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        amount = s("amount")
        layer_amounts = {}
        if s("per_layer") and s("allocation") == "sensitivity":
            curves = profile_part(s, "prune", "unstructured")
            names = [n for n in [p.name for p in s.facts.iter_params(ROLES)] if n in curves]
            sizes = profile_sizes(s.profile or {}, s.facts)
            found = allocate_ratios({n: curves[n] for n in names}, sizes, amount)
            return cls(amount=amount, layer_amounts=dict(found.choice), allocated=True)
        if s("per_layer"):
            for p in s.facts.iter_params(ROLES):
                factor = s.per_layer("layer_scale", p.name)
                layer_amounts[p.name] = round(min(0.95, amount * factor), 4)
        return cls(amount=amount, layer_amounts=layer_amounts)

    def describe(self) -> str:
        if self.layer_amounts:
            lo, hi = min(self.layer_amounts.values()), max(self.layer_amounts.values())
            span = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
            if self.allocated:
                return f"unstructured {self.amount:.0%} by sensitivity, {span} per layer"
            return f"unstructured {span} per layer"
        return f"unstructured {self.amount:.0%}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        params = dict(model.named_parameters())
        baseline = [p.name for p in ctx.facts.iter_params(ROLES)]
        unknown = set(self.layer_amounts) - set(baseline)
        if unknown:
            raise ValueError(f"per-layer pruning names unknown weights: {sorted(unknown)}")
        # Settings are by baseline name; depth pruning may have renamed or removed weights.
        now = {n: c for n in baseline if (c := ctx.current_name(n)) in params}
        names = list(now.values())
        masks: dict[str, torch.Tensor] = {}
        if self.layer_amounts:
            for name, current in now.items():
                amount = self.layer_amounts.get(name, self.amount)
                masks[current] = keep_largest(params[current], amount)
        elif self.amount > 0:
            magnitudes = torch.cat([params[n].detach().abs().reshape(-1) for n in names])
            drop = torch.zeros(len(magnitudes), dtype=torch.bool)
            k = int(round(self.amount * len(magnitudes)))
            if k:
                drop[torch.topk(magnitudes, k, largest=False, sorted=False).indices] = True
            offset = 0
            for n in names:
                count = params[n].numel()
                masks[n] = ~drop[offset : offset + count].reshape(params[n].shape)
                offset += count
        for name, mask in masks.items():
            if not bool(mask.all()):
                add_mask(model, name, mask)
        if masks:
            ctx.notes.append(
                "unstructured sparsity: smaller artifact, no speed-up on dense kernels"
            )


def keep_largest(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """The mask that zeroes the smallest-magnitude ``amount`` of ``weight`` (rounded)."""
    flat = weight.detach().abs().reshape(-1)
    keep = torch.ones(len(flat), dtype=torch.bool)
    k = int(round(amount * len(flat)))
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return keep.reshape(weight.shape)
