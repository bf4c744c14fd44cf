"""Head pruning: remove whole attention heads, the least important first.

Every attention module loses the same share of its heads (rounded down, never all of them),
or, with ``per_layer``, its own share: allocated from the study's sensitivity profile (the
blocks whose heads cost least lose most, within one global share of heads) or sampled as a
multiplier of the global share. A head's importance is the L2 norm of its query, key and value
rows and its output-projection columns (``magnitude``), or its mean absolute output on
calibration data (``activation``).
The projections are sliced, so the model really gets smaller and faster. Recognised: Hugging
Face BERT-style (separate ``query``/``key``/``value``) and GPT-2-style (fused ``c_attn``)
attention, and ``nn.MultiheadAttention``, which ties its head count to its width and is
therefore turned into a :class:`~autocompress.attention.SlicedMultiheadAttention` (same
parameter names, same results, fewer heads).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import nn

from autocompress.allocation import profile_key
from autocompress.architecture import weight_of
from autocompress.attention import SlicedMultiheadAttention, head_outputs, unsupported
from autocompress.methods._base import Context, Method, Param, Suggester
from autocompress.methods._layer_amounts import (
    check_layer_amounts,
    layer_amount_params,
    suggest_layer_amounts,
)
from autocompress.methods._transformer import (
    calibration_batches,
    count_of,
    hooked_means,
    keep_inputs,
    keep_outputs,
    least_important,
    out_width,
    parts_of,
    rows,
    set_sizes,
)
from autocompress.transformer_parts import Attention

IMPORTANCE = ("magnitude", "activation")
MOST = 0.75  # the largest share of an attention module's heads removed
_MHA_CALL = inspect.signature(nn.MultiheadAttention.forward)


_AMOUNTS = layer_amount_params(
    "share of each attention module's heads removed", high=MOST, default=(0.1, MOST)
)


@dataclass(frozen=True)
class HeadPruning(Method):
    """Remove the least important heads of every attention module.

    Attributes:
        amount: Share of each attention module's heads removed (rounded down; one head always
            stays).
        importance: ``magnitude`` (weights) or ``activation`` (mean absolute output on
            calibration data).
        layer_amounts: Per-module shares by the baseline's attention module name, overriding
            ``amount``.
        allocated: Whether ``layer_amounts`` were allocated from the study's sensitivity
            profile so that ``amount`` of the heads' weights (weighted by module size) go (a
            record: what applies is ``layer_amounts``).
    """

    amount: float = 0.25
    importance: str = "magnitude"
    layer_amounts: dict[str, float] = field(default_factory=dict)
    allocated: bool = False

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "amount": _AMOUNTS["amount"],
        "importance": Param(str, list(IMPORTANCE),
                            "how heads are ranked: weight norm, or mean |output| on training data",
                            choices=IMPORTANCE),
        **{k: p for k, p in _AMOUNTS.items() if k != "amount"},
    }  # fmt: skip

    def __post_init__(self) -> None:
        check_layer_amounts(
            "head pruning", self.amount, self.layer_amounts, self.allocated, high=MOST
        )
        if self.importance not in IMPORTANCE:
            raise ValueError(
                f"head importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}"
            )

    @classmethod
    def unavailable(cls, facts: Any) -> str | None:
        parts = facts.transformer
        if parts is None or not parts.attention:
            return "no attention heads found"
        modules = dict(facts.model.named_modules())
        reasons = [_whole_reason(modules, a) for a in parts.attention]
        if all(reasons):
            return f"no attention module whose heads can be removed ({reasons[0]})"
        return None

    @classmethod
    def suggest(cls, s: Suggester) -> Method:
        importance = s("importance")
        attention = removable(s.facts.model)
        layer_amounts, allocated = suggest_layer_amounts(
            s, [a.name for a in attention], profile_key("heads", importance), "heads",
            step=None, high=MOST,
        )  # fmt: skip
        return cls(s("amount"), importance, layer_amounts, allocated)

    def describe(self) -> str:
        suffix = " by activation" if self.importance == "activation" else ""
        if not self.layer_amounts:
            return f"heads -{self.amount:.0%}{suffix}"
        lo, hi = min(self.layer_amounts.values()), max(self.layer_amounts.values())
        span = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
        how = " by sensitivity" if self.allocated else ""
        return f"heads -{self.amount:.0%}{how}, {span} per module{suffix}"

    def apply(self, model: nn.Module, ctx: Context) -> None:
        parts = parts_of(model)
        if parts is None:
            raise ValueError("head pruning found no attention heads in this model")
        baseline = ctx.facts.transformer
        known = {a.name for a in baseline.attention} if baseline is not None else set()
        unknown = set(self.layer_amounts) - known
        if unknown:
            raise ValueError(f"per-module head pruning names unknown attention: {sorted(unknown)}")
        modules = dict(model.named_modules())
        attention = {a.name: a for a in parts.attention}
        whole = {a.name: r for a in parts.attention if (r := _whole_reason(modules, a))}
        replay = ctx.replay.get("heads")
        if replay is not None:
            plan = {str(n): sorted(int(h) for h in heads) for n, heads in replay.items()}
            _check_plan(plan, attention, whole)
        else:
            eligible = [a for a in parts.attention if a.name not in whole]
            batches = (
                calibration_batches(ctx, "head pruning by activation")
                if self.importance == "activation"
                else []
            )
            scores = head_scores(model, eligible, self.importance, batches)
            plan = {}
            for a in eligible:
                amount = self.layer_amounts.get(ctx.origin(a.name).baseline, self.amount)
                plan[a.name] = least_important(scores[a.name], count_of(amount, a.num_heads))
        prune_heads(model, plan)
        ctx.records["heads"] = plan
        if whole:
            listed = "; ".join(f"{n} ({r})" for n, r in whole.items())
            ctx.notes.append(f"head pruning left {len(whole)} attention modules whole: {listed}")
        if not any(plan.values()):
            ctx.notes.append(f"head pruning of {self.amount:.0%} removed no head (rounded down)")
        elif any(attention[n].kind == "mha" for n, h in plan.items() if h):
            ctx.notes.append(
                "nn.MultiheadAttention with heads removed runs PyTorch's unfused attention path"
            )


def removable(model: nn.Module) -> list[Attention]:
    """The attention modules of ``model`` whose heads can be removed, in block order."""
    parts = parts_of(model)
    if parts is None:
        return []
    modules = dict(model.named_modules())
    return [a for a in parts.attention if _whole_reason(modules, a) is None]


def head_scores(
    model: nn.Module, attention: list[Attention], importance: str, batches: list[Any]
) -> dict[str, torch.Tensor]:
    """Each head's importance (higher: kept longer) in each of ``attention``, by name.

    Args:
        model: The model the modules are in.
        attention: The modules to score.
        importance: ``magnitude`` or ``activation`` (reads ``batches``).
        batches: Calibration inputs (for ``activation``).
    """
    if importance == "activation":
        return activation_scores(model, attention, batches)
    if importance != "magnitude":
        raise ValueError(f"head importance must be one of {', '.join(IMPORTANCE)}")
    modules = dict(model.named_modules())
    return {a.name: magnitude_scores(modules, a) for a in attention}


def prune_heads(model: nn.Module, plan: Mapping[str, list[int]]) -> None:
    """Remove the heads ``plan`` names (by attention module name) from ``model``, in place."""
    parts = parts_of(model)
    attention = {a.name: a for a in parts.attention} if parts is not None else {}
    modules = dict(model.named_modules())
    for name, heads in plan.items():
        if heads:
            remove_heads(modules, attention[name], heads)
    _unfuse_encoders(model)


def _whole_reason(modules: dict[str, nn.Module], a: Attention) -> str | None:
    """Why the heads of ``a`` cannot be removed, or ``None``."""
    if a.num_heads < 2:
        return "a single head"
    module = modules[a.name]
    if a.kind == "bert":
        if len(a.projections) != 4:
            return "no output projection found"
        return None
    if a.kind == "gpt2":
        if getattr(module, "is_cross_attention", False):
            return "cross-attention"
        if out_width(module.get_submodule("c_attn")) != 3 * a.num_heads * a.head_dim:
            return "unexpected projection width"
        return None
    reason = unsupported(_mha(modules, a))
    return f"nn.MultiheadAttention with {reason}" if reason else None


def _check_plan(
    plan: dict[str, list[int]], attention: dict[str, Attention], whole: dict[str, Any]
) -> None:
    for name, heads in plan.items():
        a = attention.get(name)
        if a is None or (heads and name in whole):
            raise ValueError(f"the recorded heads name attention this model has not: {name!r}")
        if heads and (heads[0] < 0 or heads[-1] >= a.num_heads or len(heads) >= a.num_heads):
            raise ValueError(f"cannot remove heads {heads} of {name!r} ({a.num_heads} heads)")


def _mha(modules: dict[str, nn.Module], a: Attention) -> nn.MultiheadAttention:
    """The ``nn.MultiheadAttention`` of ``a`` (of kind ``mha``).

    Raises:
        TypeError: The module is not one.
    """
    module = modules[a.name]
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"{a.name} is {type(module).__name__}, not nn.MultiheadAttention")
    return module


def _in_out(modules: dict[str, nn.Module], a: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights read by each head, ``[3, heads * head_dim, in]`` (q, k, v), and written,
    ``[heads * head_dim, out]`` (the output projection's columns)."""
    if a.kind == "bert":
        q, k, v, o = (modules[p] for p in a.projections)
        return torch.stack([weight_of(q), weight_of(k), weight_of(v)]), weight_of(o).t()
    if a.kind == "gpt2":
        module = modules[a.name]
        qkv = rows(module.get_submodule("c_attn"))
        return qkv.unflatten(0, (3, -1)), weight_of(module.get_submodule("c_proj"))
    mha = _mha(modules, a)
    return mha.in_proj_weight.unflatten(0, (3, -1)), mha.out_proj.weight.t()


def magnitude_scores(modules: dict[str, nn.Module], a: Attention) -> torch.Tensor:
    """L2 norm of each head's query, key and value rows and output-projection columns."""
    with torch.no_grad():
        qkv, out = _in_out(modules, a)
        per_head = torch.cat(
            [qkv.unflatten(1, (a.num_heads, -1)).transpose(0, 1).flatten(1),
             out.unflatten(0, (a.num_heads, -1)).flatten(1)], dim=1,
        )  # fmt: skip
        return cast(torch.Tensor, per_head.norm(dim=1))


def activation_scores(
    model: nn.Module, attention: list[Attention], batches: list[Any]
) -> dict[str, torch.Tensor]:
    """Mean absolute output of each head (before the output projection) over ``batches``."""
    modules = dict(model.named_modules())
    sums = {a.name: torch.zeros(a.num_heads, dtype=torch.float64) for a in attention}
    counts = dict.fromkeys(sums, 0)

    def add(a: Attention, context: torch.Tensor) -> None:
        per_head = context.detach().reshape(-1, a.num_heads, a.head_dim).abs()
        sums[a.name] += per_head.sum(dim=(0, 2)).double()
        counts[a.name] += per_head.shape[0] * a.head_dim

    handles = []
    for a in attention:
        if a.kind == "mha":

            def mha_hook(
                m: nn.MultiheadAttention,
                args: tuple[Any, ...],
                kwargs: dict[str, Any],
                a: Attention = a,
            ) -> None:
                call = _MHA_CALL.bind(m, *args, **kwargs)
                call.apply_defaults()
                p = call.arguments
                context, _ = head_outputs(
                    m, p["query"], p["key"], p["value"], p["key_padding_mask"],
                    p["attn_mask"], p["is_causal"],
                )  # fmt: skip
                add(a, context)

            handles.append(_mha(modules, a).register_forward_pre_hook(mha_hook, with_kwargs=True))
        else:
            # The output projection's input is the heads' outputs side by side.
            out = modules[a.projections[-1]]

            def proj_hook(_m: nn.Module, args: tuple[Any, ...], a: Attention = a) -> None:
                add(a, args[0])

            handles.append(out.register_forward_pre_hook(proj_hook))
    return hooked_means(model, batches, handles, sums, counts, "attention")


def remove_heads(modules: dict[str, nn.Module], a: Attention, heads: list[int]) -> None:
    """Remove the heads ``heads`` of ``a`` from the model whose modules are ``modules``."""
    keep = [h for h in range(a.num_heads) if h not in set(heads)]
    d = a.head_dim
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    module = modules[a.name]
    if a.kind == "bert":
        q, k, v, o = (modules[p] for p in a.projections)
        for layer in (q, k, v):
            keep_outputs(layer, index)
        keep_inputs(o, index)
        # attention_head_size and the cached scaling stay: each kept head is unchanged.
        set_sizes(module, num_attention_heads=len(keep), all_head_size=len(keep) * d)
    elif a.kind == "gpt2":
        width = _int_attr(module, "split_size")
        c_attn, c_proj = module.get_submodule("c_attn"), module.get_submodule("c_proj")
        keep_outputs(c_attn, torch.cat([index, index + width, index + 2 * width]))
        keep_inputs(c_proj, index)
        set_sizes(module, num_heads=len(keep), split_size=len(keep) * d)
    else:
        SlicedMultiheadAttention.convert(_mha(modules, a), keep)


def _int_attr(module: nn.Module, name: str) -> int:
    """An integer attribute of a module (a width, a head count).

    Raises:
        TypeError: It is not an integer.
    """
    value = getattr(module, name)
    if not isinstance(value, int):
        raise TypeError(f"{type(module).__name__}.{name} is not an integer")
    return value


def _unfuse_encoders(model: nn.Module) -> None:
    """Keep ``nn.TransformerEncoder`` from packing inputs into nested tensors for its fused
    kernel, which a sliced attention does not take."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
            isinstance(m, SlicedMultiheadAttention) for m in module.modules()
        ):
            module.use_nested_tensor = False
