"""How noisy a metric is: per-item values, their bootstrap standard error, and the budget rule.

A split's metric is an aggregate over items (images, rows, sequences, queries). Redrawing the
items with replacement and recomputing the metric many times gives its standard error (SE):
how much the figure would move on another split of the same size. A budget below two SE
cannot tell a compressed model's loss from the luck of the draw, so ``study run`` says so and
how many validation items would make the budget measurable (SE shrinks as 1/sqrt(n)).

Kept light (torch is imported where a bootstrap runs): the CLI's read-only verbs use the
budget rule and the formatting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RESAMPLES = 1000
SEED = 0
_CHUNK = 100  # resamples drawn at a time, to bound memory on large splits


@dataclass(frozen=True)
class ItemValues:
    """A split's metric as ``transform(sum(values) / sum(weights))`` over its items.

    Attributes:
        values: Each item's contribution ``[n]`` (1.0 for a correct image; a sequence's
            summed negative log-likelihood).
        weights: What each item counts for ``[n]`` (1.0; the sequence's token count).
        transform: Applied to the weighted mean (``math.exp`` for perplexity), or ``None``.
    """

    values: torch.Tensor
    weights: torch.Tensor
    transform: Callable[[float], float] | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 1 or self.values.shape != self.weights.shape:
            raise ValueError(
                f"item values {tuple(self.values.shape)} and weights "
                f"{tuple(self.weights.shape)} must be two vectors of one length"
            )

    @classmethod
    def mean_of(cls, values: torch.Tensor) -> ItemValues:
        """A metric that is the plain mean of per-item values."""
        import torch

        values = values.detach().reshape(-1).double()
        return cls(values, torch.ones_like(values))

    def __len__(self) -> int:
        return len(self.values)

    def value(self) -> float:
        """The metric over all items (nan without any weight)."""
        total = float(self.weights.double().sum())
        if total == 0:
            return math.nan
        return self._apply(float(self.values.double().sum()) / total)

    def _apply(self, mean: float) -> float:
        if self.transform is None:
            return mean
        try:
            return float(self.transform(mean))
        except OverflowError:
            return math.inf


def bootstrap_se(items: ItemValues, resamples: int = RESAMPLES, seed: int = SEED) -> float | None:
    """The standard error of ``items.value()``: the spread over ``resamples`` redraws.

    Items are drawn with replacement, as many as there are, from a generator seeded with
    ``seed``, so the figure is the same on every run.

    Returns:
        The sample standard deviation of the redrawn metrics, or ``None`` when it cannot be
        known: fewer than two items, or a redraw whose metric is not finite.
    """
    import torch

    n = len(items)
    if n < 2 or resamples < 2:
        return None
    values, weights = items.values.double(), items.weights.double()
    generator = torch.Generator().manual_seed(seed)
    drawn: list[float] = []
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        idx = torch.randint(n, (rows, n), generator=generator)
        means = values[idx].sum(dim=1) / weights[idx].sum(dim=1)
        drawn.extend(items._apply(float(m)) for m in means)
    out = torch.tensor(drawn, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        return None
    return float(out.std())


def items_needed(n: int, se: float, budget: float) -> int | None:
    """How many items would bring two standard errors down to ``budget``.

    SE scales as 1/sqrt(n), so ``n * (2 * se / budget) ** 2``, rounded up; ``None`` for a
    budget of zero or less (no split is large enough).
    """
    if budget <= 0:
        return None
    # rounded first: 500 * (1.6 / 1.0) ** 2 comes out as 1280.0000000000002
    return math.ceil(round(n * (2.0 * se / budget) ** 2, 6))


def budget_below_noise(budget: float, se: float | None, n: int | None) -> str | None:
    """The one rule: a warning when ``budget`` is below two standard errors, else ``None``.

    Args:
        budget: The worsening allowed, in the metric's units.
        se: The baseline's validation standard error (``None``: unknown, no warning).
        n: The validation items it was measured on.
    """
    if se is None or not math.isfinite(se) or budget >= 2.0 * se:
        return None
    words = (
        f"the budget ({budget:.4g}) is below twice the metric's standard error on validation "
        f"(2 x {se:.4g} = {2.0 * se:.4g}): a trial's loss within it may be noise"
    )
    needed = items_needed(n, se, budget) if n else None
    if needed is not None:
        words += (
            f"; about {needed:,} validation items (now {n:,}) would bring two standard errors "
            "under it, or widen the budget"
        )
    return words


def with_se(
    value: float | None,
    se: float | None,
    items: int | None = None,
    digits: int = 4,
    tag: bool = True,
) -> str:
    """``0.6512 ± 0.0103 (SE)``, or ``(SE, 2,009 items)`` with ``items``, or without the tag
    ``0.6512 ± 0.0103``; the bare value when the SE is not known, ``n/a`` without a value."""
    if value is None:
        return "n/a"
    if se is None or not math.isfinite(se):
        return f"{value:.{digits}f}"
    shown = f"{value:.{digits}f} ± {se:.{digits}f}"
    if not tag:
        return shown
    of = f", {items:,} items" if items else ""
    return f"{shown} (SE{of})"
