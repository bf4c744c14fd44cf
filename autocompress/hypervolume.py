"""The hypervolume a set of points dominates, computed here rather than through a private API.

Minimisation form: the volume of the region between ``reference`` and the points, counting
each part once (Optuna's own implementation is private, ``optuna._hypervolume``). Exact, by
slicing along the last objective (Hypervolume by Slicing Objectives); fast enough for the few
hundred trials of a study in three objectives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _nondominated(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    kept: list[tuple[float, ...]] = []
    for p in sorted(set(points)):
        if not any(all(q[i] <= p[i] for i in range(len(p))) for q in kept):
            kept.append(p)
    return kept


def _volume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in points)
    ordered = sorted(points, key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(ordered):
        upper = ordered[i + 1][-1] if i + 1 < len(ordered) else reference[-1]
        if upper > p[-1]:
            base = _nondominated([q[:-1] for q in ordered[: i + 1]])
            total += _volume(base, reference[:-1]) * (upper - p[-1])
    return total


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]], reference: np.ndarray | Sequence[float]
) -> float:
    """The volume dominated by ``points`` (rows, minimised) and bounded by ``reference``.

    Points not strictly better than the reference in every objective add nothing.

    Example:
        >>> hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0])
        3.0
    """
    ref = tuple(float(r) for r in reference)
    inside = [
        tuple(float(v) for v in p)
        for p in np.asarray(points, dtype=float).reshape(-1, len(ref))
        if all(v < r for v, r in zip(p, ref, strict=True))
    ]
    return _volume(_nondominated(inside), ref)
