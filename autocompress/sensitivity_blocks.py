"""The sensitivity profile's transformer parts: what each block's heads, MLP neurons and the
block itself cost when only they are removed.

Part of :mod:`autocompress.sensitivity` (which calls :func:`measure_blocks` when a space asks
for per-block allocation of heads or MLP width). Every number is the loss increase of a copy of
the baseline with one block's parts removed by the pruning method's own code: its importance
(:func:`autocompress.methods.heads.head_scores`,
:func:`autocompress.methods.mlp.neuron_importance`), its choice of the least important
(:func:`autocompress.methods._transformer.least_important`) and its removal
(:func:`~autocompress.methods.heads.prune_heads`,
:func:`~autocompress.methods.mlp.prune_neurons`), so the profile measures the very heads and
neurons a trial removes. Per importance the space offers (``heads.magnitude``,
``heads.activation``, ``mlp.magnitude``, ``mlp.activation``), as each removes others:

* heads: each attention module at the counts of heads the request's ratios up to 75% remove
  (rounded down as head pruning does, one always kept, each count once), keyed by the share
  that removes exactly that count (:func:`~autocompress.methods._transformer.exact_share`:
  ``"0.25"``, ``"0.3334"``), so that an allocated share removes a measured count;
* MLP: each block's MLP at each ratio of the request that MLP pruning allows (up to 0.9);
* depth: each block skipped (its output replaced by its input, as depth pruning's ``output``
  importance does), keyed ``"skipped"``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from autocompress.allocation import profile_key
from autocompress.methods import depth, heads, mlp
from autocompress.methods._transformer import count_of, exact_share, least_important, parts_of

if TYPE_CHECKING:
    from autocompress.sensitivity import ProfileRequest

SKIPPED = "skipped"  # the one setting of a block's depth entry

Curves = dict[str, dict[str, float]]


def measure_blocks(
    work: nn.Module,
    request: ProfileRequest,
    inputs: list[Any],
    increase: Callable[[nn.Module], float],
) -> dict[str, Curves]:
    """The transformer parts of the profile ``request`` asks for.

    Args:
        work: The baseline's copy being measured (left as it is).
        request: What to measure (``heads``, ``mlp`` importances; ``depth``).
        inputs: Calibration inputs (the activation importances read them).
        increase: The loss increase of a model over the baseline.

    Returns:
        Curves by profile key (``heads.magnitude``, ``mlp.activation``, ``depth``), each by
        attention module, MLP widening layer or block name; empty for a model without
        transformer blocks.
    """
    parts = parts_of(work)
    if parts is None:
        return {}
    out: dict[str, Curves] = {}
    head_ratios = tuple(r for r in request.ratios if r <= heads.MOST)
    for importance in request.heads:
        out[profile_key("heads", importance)] = head_curves(
            work, importance, head_ratios, inputs, increase
        )
    mlp_ratios = tuple(r for r in request.ratios if r <= mlp.MOST)
    for importance in request.mlp:
        out[profile_key("mlp", importance)] = mlp_curves(
            work, importance, mlp_ratios, inputs, increase
        )
    if request.depth:
        modules = dict(work.named_modules())
        curves: Curves = {}
        for block in parts.blocks:
            with depth.skipping(modules[block]):
                curves[block] = {SKIPPED: increase(work)}
        out["depth"] = curves
    return out


def head_curves(
    work: nn.Module,
    importance: str,
    ratios: tuple[float, ...],
    inputs: list[Any],
    increase: Callable[[nn.Module], float],
) -> Curves:
    """For each attention module whose heads can go: the loss increase with only its
    ``k`` least important heads removed, for each count ``k`` a ratio removes."""
    attention = heads.removable(work)
    scores = heads.head_scores(work, attention, importance, inputs)
    curves: Curves = {}
    for a in attention:
        curves[a.name] = {}
        counts = sorted({count_of(r, a.num_heads) for r in ratios} - {0})
        for count in counts:
            pruned = copy.deepcopy(work)
            heads.prune_heads(pruned, {a.name: least_important(scores[a.name], count)})
            curves[a.name][str(exact_share(count, a.num_heads))] = increase(pruned)
    return curves


def mlp_curves(
    work: nn.Module,
    importance: str,
    ratios: tuple[float, ...],
    inputs: list[Any],
    increase: Callable[[nn.Module], float],
) -> Curves:
    """For each prunable MLP: the loss increase with only its least important share
    ``ratio`` of hidden neurons removed, by ratio."""
    mlps = mlp.prunable(work)
    scores = mlp.neuron_importance(work, mlps, importance, inputs)
    curves: Curves = {}
    for m in mlps:
        curves[m.up] = {}
        for ratio in ratios:
            pruned = copy.deepcopy(work)
            removed = least_important(scores[m.up], count_of(ratio, len(scores[m.up])))
            mlp.prune_neurons(pruned, {m.up: removed})
            curves[m.up][str(ratio)] = increase(pruned)
    return curves


__all__ = ["SKIPPED", "head_curves", "measure_blocks", "mlp_curves"]
