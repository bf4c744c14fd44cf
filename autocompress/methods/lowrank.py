"""Low-rank factorization: each linear layer ``W`` (``out x in``) becomes two, ``B @ A``.

A truncated SVD keeps the ``r`` largest singular directions, ``W ~ U_r S_r V_r^T``; the layer
is replaced by an ``nn.Sequential`` of ``A = S_r^1/2 V_r^T`` (``in -> r``, no bias) and
``B = U_r S_r^1/2`` (``r -> out``, the layer's bias), split evenly so that both factors have
similar ranges for a later weight quantization. ``r`` is ``rank_ratio`` of the layer's full
rank; a layer whose factors would not be smaller (``r * (in + out) >= in * out``) is left
whole, and the notes say so. With ``activation_aware`` (ASVD, Yuan et al. 2023) the columns
are first scaled by the root of their inputs' mean magnitude on calibration data, so that the
directions the data uses most are the ones kept.

Fewer parameters and multiply-accumulates, so the model really gets smaller and, for layers
large enough, faster on dense kernels. Attention projections are left whole (head pruning
slices them; ``nn.MultiheadAttention`` reads its weights directly). A layer already sparse or
on a quantization grid is left whole with a note: its factors would be dense float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.architecture import LINEARS, bias_of, weight_of
from autocompress.methods._base import Context, Method, Param, fraction
from autocompress.methods._transformer import calibration_batches, parts_of, rows, run_batches
from autocompress.transformer_parts import HF_CONV1D

SPARSE = 0.05  # a layer with this share of exact zeros is treated as pruned


@dataclass(frozen=True)
class LowRank(Method):
    """Replace linear layers by two low-rank factors (truncated SVD).

    Attributes:
        rank_ratio: Rank kept, as a share of each layer's full rank ``min(in, out)``
            (rounded, at least 1).
        activation_aware: Scale input columns by their mean magnitude on calibration data
            before the SVD (ASVD).
    """

    rank_ratio: float = 0.5
    activation_aware: bool = False

    stage: ClassVar[str] = "prune"
    SEARCH: ClassVar[dict[str, Param]] = {
        "rank_ratio": Param(float, {"low": 0.1, "high": 0.5},
                            "rank kept, as a share of each linear layer's full rank",
                            bounds=(0.01, 0.95)),
        "activation_aware": Param(bool, False,
                                  "weigh input columns by their magnitude on training data"),
    }  # fmt: skip
    LAYER_COLUMN: ClassVar[str | None] = "rank"

    def __post_init__(self) -> None:
        fraction(self.rank_ratio, "low-rank rank_ratio")
        if self.rank_ratio <= 0:
            raise ValueError(f"low-rank rank_ratio must be above 0, got {self.rank_ratio!r}")
        if not isinstance(self.activation_aware, bool):
            raise ValueError(
                f"activation_aware must be true or false, got {self.activation_aware!r}"
            )

    @classmethod
    def unavailable(cls, facts: Any) -> str | None:
        if not any(isinstance(m, LINEARS) for m in facts.model.modules()):
            return "no linear layer to factorize"
        return None

    def describe(self) -> str:
        return f"low-rank {self.rank_ratio:.0%}" + (" ASVD" if self.activation_aware else "")

    def rank(self, out_features: int, in_features: int) -> int:
        """The rank this method keeps of an ``out x in`` layer."""
        full = min(out_features, in_features)
        return max(1, min(full, int(round(self.rank_ratio * full))))

    def apply(self, model: nn.Module, ctx: Context) -> None:
        replay = ctx.replay.get("lowrank")
        candidates, whole = _candidates(model, ctx)
        if replay is not None:
            ranks = {str(n): int(r) for n, r in replay["ranks"].items()}
            by_baseline = {ctx.origin(n).baseline: n for n in candidates}
            unknown = sorted(set(ranks) - set(by_baseline))
            if unknown:
                raise ValueError(f"the recorded ranks name layers this model has not: {unknown}")
            chosen = {by_baseline[b]: r for b, r in ranks.items()}
        else:
            chosen, small = {}, []
            for name, layer in candidates.items():
                out, inp = rows(layer).shape
                r = self.rank(out, inp)
                if r * (out + inp) >= out * inp:
                    small.append(name)
                else:
                    chosen[name] = r
            if small:
                whole["factors would not be smaller than the layer"] = small
        scales: dict[str, torch.Tensor] = {}
        if self.activation_aware and chosen:
            if ctx.train is None and replay is not None:
                pass  # rebuilding shapes only: the stored factors are loaded over them
            else:
                batches = calibration_batches(ctx, "activation-aware low-rank factorization")
                scales = input_magnitudes(model, {n: candidates[n] for n in chosen}, batches)
        before = after = 0
        for name, r in chosen.items():
            layer = candidates[name]
            before += weight_of(layer).numel()
            factors = factorize(layer, r, scales.get(name))
            after += sum(weight_of(f).numel() for f in factors)
            model.set_submodule(name, factors)
            ctx.split(name, 2)
        ctx.records["lowrank"] = {"ranks": {ctx.origin(n).baseline: r for n, r in chosen.items()}}
        if chosen:
            ctx.notes.append(
                f"low-rank factorization split {len(chosen)} linear layers in two at "
                f"{self.rank_ratio:.0%} of their rank: {before:,} weights -> {after:,}"
            )
        for reason, names in whole.items():
            ctx.notes.append(
                f"low-rank factorization left {len(names)} layers whole ({reason}): "
                + ", ".join(names[:8])
                + (" ..." if len(names) > 8 else "")
            )

    @classmethod
    def layer_cells(cls, record: Any, widths: Any) -> dict[str, str]:
        return {str(n): f"{r} (2 factors)" for n, r in ((record or {}).get("ranks") or {}).items()}


def _candidates(
    model: nn.Module, ctx: Context
) -> tuple[dict[str, nn.Module], dict[str, list[Any]]]:
    """Linear layers this method may factorize, and the others by why they stay whole."""
    modules = dict(model.named_modules())
    parts = parts_of(model)
    attention = parts.attention_layer_names() if parts is not None else set()
    candidates: dict[str, nn.Module] = {}
    whole: dict[str, list[str]] = {}
    for name, layer in modules.items():
        if not isinstance(layer, LINEARS) or not name:
            continue
        parent = modules[name.rpartition(".")[0]]
        origin = ctx.origin(name)
        reason = None
        if name in attention or isinstance(parent, nn.MultiheadAttention):
            reason = "attention projections"
        elif origin.how == "split":
            reason = "already factors of a split layer"
        elif parametrize.is_parametrized(layer):
            reason = "masked or rounded by an earlier method"
        elif f"{name}.weight" in ctx.scales:
            reason = "already on a quantization grid; factors would be float32"
        elif float((weight_of(layer) == 0).float().mean()) >= SPARSE:
            reason = "sparse after unstructured pruning; factors would lose its zeros"
        if reason is None:
            candidates[name] = layer
        else:
            whole.setdefault(reason, []).append(name)
    return candidates, whole


def input_magnitudes(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[Any]
) -> dict[str, torch.Tensor]:
    """Mean absolute value of each input feature of ``layers`` over ``batches``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, layer in layers.items():

        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in sums}


def factorize(layer: nn.Module, rank: int, scale: torch.Tensor | None = None) -> nn.Sequential:
    """Two linear layers whose product keeps the ``rank`` largest singular directions of
    ``layer``'s weight (of ``W diag(s)`` with ``s = sqrt(scale)`` when ``scale`` is given).

    Args:
        layer: An ``nn.Linear`` or transformers' ``Conv1D``.
        rank: How many singular directions to keep.
        scale: Mean input magnitude per input feature (activation-aware), or ``None``.
    """
    weight = weight_of(layer).detach()
    matrix = (weight.t() if HF_CONV1D and isinstance(layer, HF_CONV1D) else weight).double()
    out, inp = matrix.shape
    if scale is not None:
        s = scale.double().clamp_min(1e-8).sqrt()
        s = s / s.mean()
        matrix = matrix * s
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = sigma[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    if scale is not None:
        first = first / s
    second = u[:, :rank] * root
    bias = bias_of(layer)
    a = nn.Linear(inp, rank, bias=False, device=weight.device, dtype=weight.dtype)
    b = nn.Linear(rank, out, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        a.weight.copy_(first.to(weight.dtype))
        b.weight.copy_(second.to(weight.dtype))
        if bias is not None:
            b.bias.copy_(bias.detach())
    return nn.Sequential(a, b)
