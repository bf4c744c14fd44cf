"""Structured pruning: remove whole output channels of conv and linear layers (torch-pruning).

The model really gets smaller and faster on dense kernels. torch-pruning's dependency graph
keeps coupled layers consistent (batch norms, residual additions, grouped and depthwise
convolutions). The layers that make the model's output keep their width. In transformers,
attention projections and the layers writing back to the residual stream are left whole
(heads and MLP width have their own methods), and the notes say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch_pruning as tp
from torch import nn

from autocompress.architecture import out_features
from autocompress.data import as_output, call_model
from autocompress.errors import reason
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


def _forward(model: nn.Module, inputs: Any) -> Any:
    return call_model(model, inputs)


def layer_widths(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Output channels of the named layers."""
    modules = dict(model.named_modules())
    return {n: out_features(modules[n]) for n in names if n in modules}


@dataclass(frozen=True)
class StructuredPruning(Method):
    """Remove the lowest-L2-norm output channels of each conv and linear layer.

    Attributes:
        amount: Share of each layer's channels removed.
        layer_amounts: Per-layer shares by layer name, overriding ``amount``.
        allocated: Whether ``layer_amounts`` were allocated from the study's sensitivity
            profile so that ``amount`` of the parameters (weighted by layer size) are pruned
            (a record: what applies is ``layer_amounts``).
    """

    amount: float = 0.5
    layer_amounts: dict[str, float] = field(default_factory=dict)
    allocated: bool = False

    WARM_START_REQUIRED_OFF: ClassVar[bool] = True
    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = layer_amount_params(
        "share of each layer's channels removed"
    )

    def __post_init__(self) -> None:
        check_layer_amounts("structured pruning", self.amount, self.layer_amounts, self.allocated)

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        names = pruned_layers(s.facts)
        layer_amounts, allocated = suggest_layer_amounts(s, names, "channels", "structured")
        return cls(amount=s("amount"), layer_amounts=layer_amounts, allocated=allocated)

    def describe(self) -> str:
        return describe_amounts("structured", self.amount, self.layer_amounts, self.allocated)

    def apply(self, model: nn.Module, ctx: Context) -> None:
        roots = pruned_layers(ctx.facts)
        modules = dict(model.named_modules())
        unknown = set(self.layer_amounts) - set(roots)
        if unknown:
            raise ValueError(f"per-layer pruning names layers it cannot prune: {sorted(unknown)}")
        # The model's layers as they are now, each traced to the baseline layer it comes from
        # (depth pruning renames, low-rank factorization splits). A split layer's last part
        # makes the baseline layer's outputs and is pruned as it would be; its other parts
        # (a low-rank bottleneck) keep their width.
        now = ctx.layers(model)
        pruned = set(roots)
        inner = [n for n, o in now.items() if o.baseline in pruned and not o.last]
        replay = ctx.replay.get("structured")
        if replay is not None:
            history = replay["history"]
            replay_history(model, history, ctx.example_input)
        else:
            ignored = [modules[n] for n, o in now.items() if o.baseline not in pruned or not o.last]
            # Attention stays whole wherever it sits: torch-pruning would cut an
            # nn.MultiheadAttention's width with the residual stream, to widths its heads do not
            # divide (45 of 64 with 4 heads), when the blocks are not recognised as a transformer.
            ignored += [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
            ratios = {
                modules[n]: self.layer_amounts[o.baseline]
                for n, o in now.items()
                if o.last and o.baseline in self.layer_amounts
            }
            pruner = tp.pruner.MagnitudePruner(
                model,
                example_inputs=ctx.example_input,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=self.amount,
                pruning_ratio_dict=ratios or None,
                ignored_layers=ignored,
                global_pruning=False,
                forward_fn=_forward,
                output_transform=as_output,
            )
            pruner.step()
            history = [
                [str(name), bool(is_out), [int(i) for i in idx]]
                for name, is_out, idx in pruner.pruning_history()
            ]
        widths = layer_widths(model, list(now))
        ctx.records["structured"] = {
            "history": history,
            "channels": {o.baseline: widths[n] for n, o in now.items() if o.last and n in widths},
        }
        if inner:
            ctx.notes.append(
                f"structured pruning kept the width of {len(inner)} inner parts of split layers "
                f"(low-rank bottlenecks): {', '.join(inner)}"
            )
        baselines = {o.baseline for o in now.values()}
        whole = [n for n in ctx.facts.layers if n not in roots and n in baselines]
        if (ctx.facts.transformer is not None or ctx.facts.attention_layers) and whole:
            ctx.notes.append(
                f"structured pruning left {len(whole)} attention, residual and output layers "
                "whole (heads, MLP width and depth have their own methods)"
            )

    @classmethod
    def check_replay(cls, recorded: Any, got: Any) -> str | None:
        channels = (recorded or {}).get("channels")
        have = (got or {}).get("channels") or {}
        if not channels or have == channels:
            return None  # recipes of earlier versions recorded no channels
        diff = [f"{k}: {have.get(k)} != {v}" for k, v in channels.items() if have.get(k) != v]
        return f"replayed layer shapes differ from the recipe's: {'; '.join(diff[:5])}"

    LAYER_COLUMN: ClassVar[str | None] = "channels kept"

    @classmethod
    def layer_cells(cls, record: Any, widths: Mapping[str, int]) -> dict[str, str]:
        channels = (record or {}).get("channels") or {}
        cells = {}
        for name in dict.fromkeys([*widths, *channels]):
            total = widths.get(name)
            kept = channels.get(name, total)
            if kept is None:
                cells[name] = "-"
            else:
                cells[name] = f"{kept} / {total} ({kept / total:.0%})" if total else str(kept)
        return cells


def pruned_layers(facts: Any) -> list[str]:
    """Layers whose output channels this method removes."""
    roots = facts.prunable_layers()
    parts = facts.transformer
    if parts is not None:
        downs = {m.down for m in parts.mlps}
        roots = [n for n in roots if n not in downs]
    return list(roots)


def replay_history(model: nn.Module, history: list[list[Any]], example_input: Any) -> None:
    """Remove exactly the channels in torch-pruning's ``history`` from ``model``, in place.

    Raises:
        ValueError: The history names layers or channels this model does not have.
    """
    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, forward_fn=_forward, output_transform=as_output
        )
        graph.load_pruning_history(
            [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in history]
        )
    except (AttributeError, IndexError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"the recorded pruning history does not fit this model: {reason(e)}"
        ) from None
