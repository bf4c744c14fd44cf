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

from autocompress.architecture import tensor_of
from autocompress.methods._base import (
    Context,
    Method,
    Param,
    Suggester,
)
from autocompress.methods._layer_amounts import (
    check_layer_amounts,
    describe_amounts,
    layer_amount_params,
    suggest_layer_amounts,
)
from autocompress.reparam import add_mask

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

    WARM_START_REQUIRED_OFF: ClassVar[bool] = True
    stage: ClassVar[str] = "prune"
    CHANGES_DEPLOYED: ClassVar[str] = "never"
    SEARCH: ClassVar[dict[str, Param]] = layer_amount_params("share of weights set to zero")

    def __post_init__(self) -> None:
        check_layer_amounts("unstructured pruning", self.amount, self.layer_amounts, self.allocated)

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        names = [p.name for p in s.facts.iter_params(ROLES)]
        layer_amounts, allocated = suggest_layer_amounts(s, names, "prune", "unstructured")
        return cls(amount=s("amount"), layer_amounts=layer_amounts, allocated=allocated)

    def describe(self) -> str:
        return describe_amounts("unstructured", self.amount, self.layer_amounts, self.allocated)

    def apply(self, model: nn.Module, ctx: Context) -> None:
        baseline = [p.name for p in ctx.facts.iter_params(ROLES)]
        unknown = set(self.layer_amounts) - set(baseline)
        if unknown:
            raise ValueError(f"per-layer pruning names unknown weights: {sorted(unknown)}")
        # The weights the model has now (a split layer's parts too); per-layer amounts are by
        # baseline name, so a split layer's parts each get the amount of the layer they replace.
        now = ctx.params(model, ROLES)
        params = {n: tensor_of(model, n) for n in now}
        names = list(now)
        masks: dict[str, torch.Tensor] = {}
        if self.layer_amounts:
            for current, origin in now.items():
                amount = self.layer_amounts.get(origin.baseline, self.amount)
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
