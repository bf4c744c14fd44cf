"""MLP-width pruning: remove the hidden neurons of each transformer block's feed-forward part.

Every block's MLP loses the same share of its hidden neurons (rounded down), the least
important: by ``magnitude``, those whose weights have the lowest L2 norm (the neuron's row of
the widening layer and its column of the narrowing layer together); by ``activation``, those
whose mean absolute activation (the narrowing layer's input) on calibration data is lowest
(Minitron, Muralidharan et al. 2024), which sees what a pretrained model really uses. Both
layers are sliced, so the model really gets smaller and faster; the residual width stays.
Recognised: BERT (``intermediate.dense`` / ``output.dense``), GPT-2 (``mlp.c_fc`` /
``mlp.c_proj``), ``nn.TransformerEncoderLayer`` (``linear1`` / ``linear2``) and ``mlp.fc1`` /
``mlp.fc2`` or ``mlp.0`` / ``mlp.2`` blocks (ViTs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from autocompress.methods._base import Context, Method, Param, fraction
from autocompress.methods._transformer import (
    calibration_batches,
    columns,
    in_width,
    is_linear,
    keep_inputs,
    keep_outputs,
    out_width,
    parts_of,
    rows,
    run_batches,
    share,
)
from autocompress.transformer_parts import Mlp

# Configuration fields of Hugging Face models that hold the MLP width (BERT, GPT-2), updated
# when every block ends up equally wide so that save_pretrained / from_pretrained still work.
_CONFIG_WIDTH = ("intermediate_size", "n_inner")
IMPORTANCE = ("magnitude", "activation")


@dataclass(frozen=True)
class MlpPruning(Method):
    """Remove the lowest-L2-norm hidden neurons of every transformer MLP.

    Attributes:
        amount: Share of each MLP's hidden neurons removed (rounded down; one always stays).
        importance: ``magnitude`` (weights) or ``activation`` (mean absolute activation on
            calibration data).
    """

    amount: float = 0.25
    importance: str = "magnitude"

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "amount": Param(float, {"low": 0.1, "high": 0.9},
                        "share of each transformer MLP's hidden neurons removed",
                        bounds=(0.0, 0.9)),
        "importance": Param(str, "magnitude",
                            "how neurons are ranked: weight norm, or mean |activation| on "
                            "training data", choices=IMPORTANCE),
    }  # fmt: skip

    def __post_init__(self) -> None:
        fraction(self.amount, "MLP pruning amount", high=0.9)
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

    def describe(self) -> str:
        suffix = " by activation" if self.importance == "activation" else ""
        return f"MLP width -{self.amount:.0%}{suffix}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        parts = parts_of(model)
        if parts is None or not parts.mlps:
            raise ValueError("MLP pruning found no transformer MLP in this model")
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
            plan = {}
            eligible = [m for up, m in mlps.items() if up not in whole]
            by_activation = {}
            if self.importance == "activation":
                batches = calibration_batches(ctx, "MLP pruning by activation")
                by_activation = activation_scores(model, eligible, batches)
            for mlp in eligible:
                up = mlp.up
                scores = by_activation.get(up)
                if scores is None:
                    scores = neuron_scores(modules[mlp.up], modules[mlp.down])
                count = min(share(self.amount, len(scores)), len(scores) - 1)
                order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
                plan[up] = sorted(order[:count])
        for up, removed in plan.items():
            if removed:
                keep = torch.tensor(
                    [i for i in range(out_width(modules[up])) if i not in set(removed)]
                )
                keep_outputs(modules[up], keep)
                keep_inputs(modules[mlps[up].down], keep)
        _update_configs(model, {out_width(modules[m.up]) for m in parts.mlps})
        ctx.records["mlp"] = plan
        if whole:
            listed = "; ".join(f"{n} ({r})" for n, r in whole.items())
            ctx.notes.append(f"MLP pruning left {len(whole)} MLPs whole: {listed}")


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
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, c in counts.items() if c == 0]
    if missing:
        raise ValueError(f"calibration never ran the MLP of {missing[0]!r}")
    return {n: (sums[n] / counts[n]).float() for n in sums}


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
