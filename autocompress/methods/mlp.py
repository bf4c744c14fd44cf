"""MLP-width pruning: remove the hidden neurons of each transformer block's feed-forward part.

Every block's MLP loses the same share of its hidden neurons (rounded down), or, with
``per_layer``, its own share: allocated from the study's sensitivity profile (the MLPs whose
neurons cost least lose most, within one global share) or sampled as a multiplier of the global
share. The least important go: by ``magnitude``, those whose weights have the lowest L2 norm
(the neuron's row of the widening layer and its column of the narrowing layer together); by
``activation``, those whose mean absolute activation (the narrowing layer's input) on
calibration data is lowest (Minitron, Muralidharan et al. 2024), which sees what a pretrained
model really uses. Both layers are sliced, so the model really gets smaller and faster; the
residual width stays. Recognised: BERT (``intermediate.dense`` / ``output.dense``), GPT-2
(``mlp.c_fc`` / ``mlp.c_proj``), ``nn.TransformerEncoderLayer`` (``linear1`` / ``linear2``) and
``mlp.fc1`` / ``mlp.fc2`` or ``mlp.0`` / ``mlp.2`` blocks (ViTs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import nn

from autocompress.allocation import profile_key
from autocompress.methods._base import Context, Method, Param, Suggester
from autocompress.methods._layer_amounts import (
    check_layer_amounts,
    layer_amount_params,
    suggest_layer_amounts,
)
from autocompress.methods._transformer import (
    calibration_batches,
    columns,
    count_of,
    hooked_means,
    in_width,
    is_linear,
    keep_inputs,
    keep_outputs,
    least_important,
    out_width,
    parts_of,
    rows,
)
from autocompress.transformer_parts import Mlp

# Configuration fields of Hugging Face models that hold the MLP width (BERT, GPT-2), updated
# when every block ends up equally wide so that save_pretrained / from_pretrained still work.
_CONFIG_WIDTH = ("intermediate_size", "n_inner")
IMPORTANCE = ("magnitude", "activation")
MOST = 0.9  # the largest share of an MLP's neurons removed
_AMOUNTS = layer_amount_params(
    "share of each transformer MLP's hidden neurons removed", high=MOST, default=(0.1, MOST)
)


@dataclass(frozen=True)
class MlpPruning(Method):
    """Remove the lowest-L2-norm hidden neurons of every transformer MLP.

    Attributes:
        amount: Share of each MLP's hidden neurons removed (rounded down; one always stays).
        importance: ``magnitude`` (weights) or ``activation`` (mean absolute activation on
            calibration data).
        layer_amounts: Per-MLP shares by the baseline's name of its widening layer, overriding
            ``amount``.
        allocated: Whether ``layer_amounts`` were allocated from the study's sensitivity
            profile so that ``amount`` of the MLPs' weights (weighted by MLP size) go (a
            record: what applies is ``layer_amounts``).
    """

    amount: float = 0.25
    importance: str = "magnitude"
    layer_amounts: dict[str, float] = field(default_factory=dict)
    allocated: bool = False

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "amount": _AMOUNTS["amount"],
        "importance": Param(str, "magnitude",
                            "how neurons are ranked: weight norm, or mean |activation| on "
                            "training data", choices=IMPORTANCE),
        **{k: p for k, p in _AMOUNTS.items() if k != "amount"},
    }  # fmt: skip

    def __post_init__(self) -> None:
        check_layer_amounts(
            "MLP pruning", self.amount, self.layer_amounts, self.allocated, high=MOST
        )
        if self.importance not in IMPORTANCE:
            raise ValueError(
                f"MLP importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}"
            )

    @classmethod
    def unavailable(cls, facts: Any) -> str | None:
        parts = facts.transformer
        if parts is None:
            return "no transformer blocks found"
        modules = dict(facts.model.named_modules())
        if not any(_whole_reason(modules, m) is None for m in parts.mlps):
            return "no transformer MLP found (a widening and a narrowing linear layer per block)"
        return None

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        importance = s("importance")
        names = [m.up for m in prunable(s.facts.model)]
        layer_amounts, allocated = suggest_layer_amounts(
            s, names, profile_key("mlp", importance), "mlp", high=MOST
        )
        return cls(s("amount"), importance, layer_amounts, allocated)

    def describe(self) -> str:
        suffix = " by activation" if self.importance == "activation" else ""
        if not self.layer_amounts:
            return f"MLP width -{self.amount:.0%}{suffix}"
        lo, hi = min(self.layer_amounts.values()), max(self.layer_amounts.values())
        span = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
        how = " by sensitivity" if self.allocated else ""
        return f"MLP width -{self.amount:.0%}{how}, {span} per block{suffix}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        parts = parts_of(model)
        if parts is None or not parts.mlps:
            raise ValueError("MLP pruning found no transformer MLP in this model")
        baseline = ctx.facts.transformer
        known = {m.up for m in baseline.mlps} if baseline is not None else set()
        unknown = set(self.layer_amounts) - known
        if unknown:
            raise ValueError(f"per-block MLP pruning names unknown MLPs: {sorted(unknown)}")
        modules = dict(model.named_modules())
        mlps = {m.up: m for m in parts.mlps}
        whole = {m.up: r for m in parts.mlps if (r := _whole_reason(modules, m))}
        replay = ctx.replay.get("mlp")
        if replay is not None:
            plan = {str(n): sorted(int(i) for i in removed) for n, removed in replay.items()}
            for name, removed in plan.items():
                if name not in mlps or name in whole:
                    raise ValueError(f"the recorded MLP names a layer this model has not: {name!r}")
                width = out_width(modules[name])
                if removed and (removed[0] < 0 or removed[-1] >= width or len(removed) >= width):
                    raise ValueError(f"cannot remove neurons {removed} of {name!r} ({width})")
        else:
            eligible = [m for up, m in mlps.items() if up not in whole]
            batches = (
                calibration_batches(ctx, "MLP pruning by activation")
                if self.importance == "activation"
                else []
            )
            scores = neuron_importance(model, eligible, self.importance, batches)
            plan = {}
            for m in eligible:
                amount = self.layer_amounts.get(ctx.origin(m.up).baseline, self.amount)
                plan[m.up] = least_important(scores[m.up], count_of(amount, len(scores[m.up])))
        prune_neurons(model, plan)
        ctx.records["mlp"] = plan
        if whole:
            listed = "; ".join(f"{n} ({r})" for n, r in whole.items())
            ctx.notes.append(f"MLP pruning left {len(whole)} MLPs whole: {listed}")


def prunable(model: nn.Module) -> list[Mlp]:
    """The MLPs of ``model`` whose neurons can be removed, in block order."""
    parts = parts_of(model)
    if parts is None:
        return []
    modules = dict(model.named_modules())
    return [m for m in parts.mlps if _whole_reason(modules, m) is None]


def neuron_importance(
    model: nn.Module, mlps: list[Mlp], importance: str, batches: list[Any]
) -> dict[str, torch.Tensor]:
    """Each hidden neuron's importance (higher: kept longer) in each of ``mlps``, by the
    name of its widening layer.

    Args:
        model: The model the MLPs are in.
        mlps: The MLPs to score.
        importance: ``magnitude`` or ``activation`` (reads ``batches``).
        batches: Calibration inputs (for ``activation``).
    """
    if importance == "activation":
        return activation_scores(model, mlps, batches)
    if importance != "magnitude":
        raise ValueError(f"MLP importance must be one of {', '.join(IMPORTANCE)}")
    modules = dict(model.named_modules())
    return {m.up: neuron_scores(modules[m.up], modules[m.down]) for m in mlps}


def prune_neurons(model: nn.Module, plan: Mapping[str, list[int]]) -> None:
    """Remove the hidden neurons ``plan`` names (by the MLP's widening layer) from ``model``,
    in place; Hugging Face configurations say the new width when every MLP has it."""
    parts = parts_of(model)
    mlps = {m.up: m for m in parts.mlps} if parts is not None else {}
    modules = dict(model.named_modules())
    for up, removed in plan.items():
        if removed:
            keep = torch.tensor([i for i in range(out_width(modules[up])) if i not in set(removed)])
            keep_outputs(modules[up], keep)
            keep_inputs(modules[mlps[up].down], keep)
    _update_configs(model, {out_width(modules[m.up]) for m in mlps.values()})


def _whole_reason(modules: dict[str, nn.Module], mlp: Mlp) -> str | None:
    up, down = modules.get(mlp.up), modules.get(mlp.down)
    if not (is_linear(up) and is_linear(down)):
        return "not a pair of linear layers"
    if out_width(up) != in_width(down):  # type: ignore[arg-type]
        return "widths do not match"
    if out_width(up) < 2:  # type: ignore[arg-type]
        return "a single neuron"
    return None


def neuron_scores(up: nn.Module, down: nn.Module) -> torch.Tensor:
    """L2 norm of each hidden neuron's weights: its row of ``up`` and its column of ``down``."""
    with torch.no_grad():
        return cast(torch.Tensor, torch.cat([rows(up), columns(down)], dim=1).norm(dim=1))


def activation_scores(
    model: nn.Module, mlps: list[Mlp], batches: list[Any]
) -> dict[str, torch.Tensor]:
    """Mean absolute activation of each hidden neuron (the narrowing layer's input) over
    every position of ``batches``, by the MLP's widening layer's name."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys((m.up for m in mlps), 0)

    def hook(up: str) -> Any:
        def add(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().flatten(0, -2).abs().double()
            sums[up] = sums.get(up, 0) + x.sum(dim=0)
            counts[up] += x.shape[0]

        return add

    handles = [modules[m.down].register_forward_pre_hook(hook(m.up)) for m in mlps]
    return hooked_means(model, batches, handles, sums, counts, "the MLP of")


def _update_configs(model: nn.Module, widths: set[int]) -> None:
    if len(widths) != 1:
        return
    width = widths.pop()
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        for attr in _CONFIG_WIDTH:
            if hasattr(config, attr):
                setattr(config, attr, width)
