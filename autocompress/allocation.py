"""Per-layer settings from a sensitivity profile and one global budget (pure functions).

The problem is a multiple-choice knapsack: each layer takes one option (a bit-width, a pruning
ratio), each option costs ``size x cost per parameter`` (bits per weight, share of weights
kept) and adds a measured loss increase; the summed loss increase is minimised subject to an
average cost per parameter at most the budget.

Two solvers run and the allocation of lower summed loss is kept (the greedy one on ties):

* a greedy on each layer's lower convex hull (the LP relaxation's greedy for the
  multiple-choice knapsack, Sinha and Zoltners 1979): every layer starts at its most expensive
  option; while the average cost is over the budget, the move with the least loss increase per
  unit of cost saved, over all layers, is taken; then the slack the last move left is spent on
  the upgrades that buy back the most loss per unit of cost and still fit;
* a dynamic program over the budget cut into :data:`DP_UNITS` units, each option's cost
  rounded to the nearest unit (kept when its real cost fits) and rounded up (always fits),
  exact up to that rounding: the greedy alone can be far off when layers differ a lot in
  size.

Both are monotone: of two layers of equal size, the one whose loss grows more between any two
options never ends with the cheaper option (the greedy moves the less sensitive one first; an
optimum that did otherwise would improve by swapping them). Measured losses are first made
monotone (a cheaper option never loses less) and non-negative, so measurement noise cannot
reward fewer bits. Cost: ``O(layers x options x DP_UNITS)`` vector operations, milliseconds.

Example:
    >>> curves = {"a": {8: 0.0, 4: 0.01, 2: 0.5}, "b": {8: 0.0, 4: 0.2, 2: 2.0}}
    >>> allocate(curves, {"a": 100, "b": 100}, budget=6.0).choice
    {'a': 4, 'b': 8}
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from autocompress.architecture import ModelFacts
    from autocompress.transformer_parts import TransformerParts

PRUNE_STEP = 0.05  # granularity of per-layer pruning ratios between measured points
DP_UNITS = 2048  # the dynamic program's budget resolution


@dataclass(frozen=True)
class Allocation:
    """The option chosen for each layer and what it costs.

    Attributes:
        choice: The option of each layer (its cost per parameter, e.g. bits), by layer.
        cost: The achieved average cost per parameter (weighted by layer size).
        loss: The summed predicted loss increase of the choice.
        met: Whether ``cost`` is within the budget (``False``: even the cheapest option of
            every layer is over it, and every layer has its cheapest option).
    """

    choice: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    loss: float = 0.0
    met: bool = True

    def __post_init__(self) -> None:
        if self.cost < 0 or self.loss < 0:
            raise ValueError(f"cost and loss must be >= 0, got {self.cost!r}, {self.loss!r}")


def _clean(curve: Mapping[Any, float]) -> list[tuple[float, float]]:
    """``(cost, loss)`` points, most expensive first, with loss non-negative and never lower
    for a cheaper option."""
    points: list[tuple[float, float]] = []
    worst = 0.0
    for cost in sorted((float(c) for c in curve), reverse=True):
        worst = max(worst, float(curve[_key(curve, cost)]))
        points.append((cost, worst))
    return points


def _key(curve: Mapping[Any, float], cost: float) -> Any:
    # Options may be ints (bits) or floats; find the key that equals ``cost``.
    for k in curve:
        if float(k) == cost:
            return k
    raise KeyError(cost)


def _hull(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the lower convex hull from the most expensive point downwards: from each
    point, the next is the one of least loss added per cost saved (the nearest on ties)."""
    hull, i = [0], 0
    while i < len(points) - 1:
        cost, loss = points[i]
        best = min(
            range(i + 1, len(points)),
            key=lambda j: ((points[j][1] - loss) / (cost - points[j][0]), j),
        )
        hull.append(best)
        i = best
    return hull


def allocate(
    curves: Mapping[str, Mapping[Any, float]], sizes: Mapping[str, int], budget: float
) -> Allocation:
    """Choose one option per layer, minimising the summed loss within the budget.

    Args:
        curves: For each layer, its loss increase by option, the option being its cost per
            parameter (e.g. ``{8: 0.0, 4: 0.02, 2: 0.4}`` for bits).
        sizes: Parameters of each layer (the weight of its cost).
        budget: The most average cost per parameter allowed.

    Returns:
        The allocation; when the budget cannot be met, every layer at its cheapest option.

    Raises:
        ValueError: A layer without options or without a positive size.
    """
    names = list(curves)
    for name in names:
        if not curves[name]:
            raise ValueError(f"layer {name!r} has no options")
        if sizes.get(name, 0) <= 0:
            raise ValueError(f"layer {name!r} needs a positive size, got {sizes.get(name)!r}")
    if not names:
        return Allocation()
    points = {n: _clean(curves[n]) for n in names}
    hulls = {n: _hull(points[n]) for n in names}
    at = dict.fromkeys(names, 0)  # position on the hull
    total = sum(sizes[n] for n in names)
    spent = sum(sizes[n] * points[n][0][0] for n in names)
    limit = budget * total

    def move(n: int, name: str) -> tuple[float, int, str] | None:
        k = at[name]
        if k + 1 >= len(hulls[name]):
            return None
        here, there = points[name][hulls[name][k]], points[name][hulls[name][k + 1]]
        saved = sizes[name] * (here[0] - there[0])
        return ((there[1] - here[1]) / saved, n, name)

    heap = [m for i, name in enumerate(names) if (m := move(i, name)) is not None]
    heapq.heapify(heap)
    eps = 1e-9 * max(1.0, abs(limit))
    while spent > limit + eps and heap:
        _, i, name = heapq.heappop(heap)
        k = at[name]
        here, there = points[name][hulls[name][k]], points[name][hulls[name][k + 1]]
        spent -= sizes[name] * (here[0] - there[0])
        at[name] = k + 1
        nxt = move(i, name)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    index = {n: hulls[n][at[n]] for n in names}
    if spent <= limit + eps:
        _fill(points, sizes, index, limit - spent, names)

        def loss_of(pick: Mapping[str, int]) -> float:
            return sum(points[n][pick[n]][1] for n in names)

        for rounding in (round, math.ceil):
            exact = _program(points, sizes, names, limit, rounding)
            fits = exact is not None and (
                sum(sizes[n] * points[n][exact[n]][0] for n in names) <= limit + eps
            )
            if fits and loss_of(exact) < loss_of(index) - 1e-12:  # type: ignore[arg-type]
                index = exact  # type: ignore[assignment]
    choice = {n: _key(curves[n], points[n][index[n]][0]) for n in names}
    loss = sum(points[n][index[n]][1] for n in names)
    cost = sum(sizes[n] * points[n][index[n]][0] for n in names)
    return Allocation(choice, cost / total, loss, cost <= limit + eps)


def _fill(
    points: Mapping[str, list[tuple[float, float]]],
    sizes: Mapping[str, int],
    index: dict[str, int],
    slack: float,
    names: list[str],
) -> None:
    """Spend ``slack`` on the upgrades that remove the most loss per unit of cost; in place."""
    while True:
        best: tuple[float, int, str, int] | None = None
        for i, name in enumerate(names):
            cost, loss = points[name][index[name]]
            for j in range(index[name]):  # more expensive options
                added = sizes[name] * (points[name][j][0] - cost)
                gain = loss - points[name][j][1]
                if gain <= 0 or added > slack + 1e-9 * max(1.0, slack):
                    continue
                key = (-gain / added, i, name, j)
                if best is None or key < best:
                    best = key
        if best is None:
            break
        _, _, name, j = best
        slack -= sizes[name] * (points[name][j][0] - points[name][index[name]][0])
        index[name] = j


def _program(
    points: Mapping[str, list[tuple[float, float]]],
    sizes: Mapping[str, int],
    names: list[str],
    limit: float,
    rounding: Callable[[float], int] = math.ceil,
) -> dict[str, int] | None:
    """The option of least summed loss per layer with costs rounded (``math.ceil``: up, so
    that the answer always fits) to units of ``limit / DP_UNITS`` (``None`` when nothing
    fits once rounded)."""
    if limit <= 0:
        return None
    unit = limit / DP_UNITS
    best = np.zeros(DP_UNITS + 1)  # least loss of the layers so far within u units
    picks = []
    for name in names:
        weights = [int(rounding(sizes[name] * c / unit - 1e-9)) for c, _ in points[name]]
        options = np.full((len(weights), DP_UNITS + 1), np.inf)
        for k, (w, (_, loss)) in enumerate(zip(weights, points[name], strict=True)):
            if w <= DP_UNITS:
                options[k, w:] = best[: DP_UNITS + 1 - w] + loss
        pick = np.argmin(options, axis=0)  # ties: the first, i.e. the more expensive option
        best = options[pick, np.arange(DP_UNITS + 1)]
        picks.append((pick, weights))
    if not np.isfinite(best[DP_UNITS]):
        return None
    index, u = {}, DP_UNITS
    for name, (pick, weights) in zip(reversed(names), reversed(picks), strict=True):
        k = int(pick[u])
        index[name] = k
        u -= weights[k]
    return index


def allocate_bits(
    profile: Mapping[str, Mapping[int | str, float]], sizes: Mapping[str, int], budget_bits: float
) -> Allocation:
    """Bits per weight from each weight's loss increase by bit-width, within an average of
    ``budget_bits`` code bits per weight (scales are not counted).

    Args:
        profile: For each weight, its loss increase by bit-width (keys may be strings, as
            stored in JSON).
        sizes: Elements of each weight.
        budget_bits: The most average bits per weight.
    """
    curves = {n: {int(b): float(v) for b, v in c.items()} for n, c in profile.items()}
    found = allocate(curves, sizes, budget_bits)
    return Allocation({n: int(b) for n, b in found.choice.items()}, found.cost, found.loss,
                      found.met)  # fmt: skip


def ratio_curve(
    curve: Mapping[float | str, float], step: float | None = PRUNE_STEP
) -> dict[float, float]:
    """A pruning profile (loss increase by ratio) on a grid of ``step``, linear between the
    measured ratios and zero at ratio 0, keyed by the share of weights kept. With ``step``
    ``None``, the measured ratios only (and 0): where only those can be applied (a share of
    an attention module's heads)."""
    measured = sorted((float(r), float(v)) for r, v in curve.items())
    if not measured:
        return {1.0: 0.0}
    known = [(0.0, 0.0), *[(r, v) for r, v in measured if r > 0]]
    top = known[-1][0]
    out: dict[float, float] = {}
    count = 0 if step is None else int(round(top / step))
    grid = sorted({round(k * (step or 0.0), 6) for k in range(count + 1)} | {r for r, _ in known})
    for r in grid:
        if r > top + 1e-12:
            continue
        for (r0, v0), (r1, v1) in zip(known, known[1:], strict=False):
            if r0 <= r <= r1:
                v = v0 if r1 == r0 else v0 + (v1 - v0) * (r - r0) / (r1 - r0)
                break
        else:
            v = 0.0
        out[round(1.0 - r, 6)] = v
    return out


def allocate_ratios(
    profile: Mapping[str, Mapping[float | str, float]],
    sizes: Mapping[str, int],
    amount: float,
    step: float | None = PRUNE_STEP,
) -> Allocation:
    """Pruning ratio per layer from each layer's loss increase by ratio, so that at least
    ``amount`` of all their parameters (weighted by size) are pruned.

    Ratios are on a grid of ``step`` up to the largest ratio measured (losses interpolated
    linearly), or the measured ratios only (``step`` ``None``); ``Allocation.choice`` holds
    ratios and ``cost`` the share kept.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"a pruning amount is in [0, 1], got {amount!r}")
    curves = {n: ratio_curve(c, step) for n, c in profile.items()}
    found = allocate(curves, sizes, 1.0 - amount)
    ratios = {n: round(1.0 - float(keep), 4) for n, keep in found.choice.items()}
    return Allocation(ratios, found.cost, found.loss, found.met)


def profile_key(method: str, importance: str) -> str:
    """The profile's part for a transformer pruning method ranking by ``importance``
    (``heads.magnitude``): each importance removes other heads or neurons, so each has its
    own measurements."""
    return f"{method}.{importance}"


STRUCTURAL = ("heads", "mlp", "depth")  # the methods of the profile's transformer parts


def section_method(key: str) -> str:
    """The method a part of the profile serves, by its key (``heads.magnitude``: heads)."""
    return key.partition(".")[0]


def profile_sizes(profile: Mapping[str, Any], facts: ModelFacts) -> dict[str, int]:
    """Elements of every parameter the profile names (layers by their weight; an attention
    module by its projections' weights, an MLP by its widening layer's weight, which its
    narrowing layer matches, and a block by all its parameters)."""
    numel = {p.name: p.numel for p in facts.params}
    names = [*profile.get("bits", {}), *profile.get("prune", {})]
    sizes = {n: numel[n] for n in names if n in numel}
    for layer in profile.get("channels", {}):
        if f"{layer}.weight" in numel:
            sizes[layer] = numel[f"{layer}.weight"]
    structural = {n for k, part in profile.items() if section_method(k) in STRUCTURAL
                  for n in part}  # fmt: skip
    parts = facts.transformer if structural else None
    if parts is not None:
        for name, size in _part_sizes(parts, numel).items():
            if name in structural:
                sizes[name] = size
    return sizes


def _part_sizes(parts: TransformerParts, numel: Mapping[str, int]) -> dict[str, int]:
    """Elements of each attention module, MLP (its widening layer) and block, by name."""
    sizes = {}
    for a in parts.attention:
        weights = [f"{p}.weight" for p in a.projections] + [f"{a.name}.in_proj_weight"]
        sizes[a.name] = sum(numel.get(w, 0) for w in weights)
    for m in parts.mlps:
        sizes[m.up] = numel.get(f"{m.up}.weight", 0)
    for block in parts.blocks:
        sizes[block] = sum(n for name, n in numel.items() if name.startswith(f"{block}."))
    return sizes


__all__ = [
    "STRUCTURAL",
    "Allocation",
    "allocate",
    "allocate_bits",
    "allocate_ratios",
    "profile_key",
    "profile_sizes",
    "section_method",
    "ratio_curve",
]
